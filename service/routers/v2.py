"""Open Inference Protocol (KServe V2) for raw tensors, over every ONNX graph served.

Naming: a single-graph model version is the V2 model ``<model>`` (``landmark``); a version
with several graphs (config.json ``graphs``) exposes each graph as its own V2 model
``<model>.<graph>`` (``attention.features``, ``attention.perception``), and ``<model>`` is
its first graph there, the one that takes the image (``attention`` = ``attention.features``):
every name ``/models`` lists is a V2 model too. V2 names are looked up in the registry only:
nothing here touches the filesystem, so a name cannot reach a path.

Tensors travel as JSON (``data``, flat row-major or nested) or with Triton's binary tensor
data extension: the body is ``Inference-Header-Content-Length`` bytes of JSON followed by
each binary input's raw little-endian bytes in input order (``parameters.binary_data_size``).
Outputs come back binary when the request asks (``binary_data`` per output, or
``binary_data_output`` for all), JSON otherwise. Request bodies may be gzip or deflate
encoded (``Content-Encoding``), as tritonclient sends them on request.

Every error on a ``/v2`` path is problem+json (RFC 9457), like the rest of the service, with
the detail also in an ``error`` member, where the protocol's clients read it (tritonclient:
``json.loads(body)["error"]``; ``service.errors.protocol_members``). The statuses are the
protocol's: 400 for anything malformed (no FastAPI 422), 401 key, 404 unknown model, 413
too large (also once inflated), 503 for a model not ready or a full server. The same
shape comes from the routes and from what answers before them: a path that matches no
route (404), a wrong method (405), the body-size middleware (413) and the upload gate
(401, 503, 408).
"""

from __future__ import annotations

import logging
import math
import re
import zlib
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from service.dependencies import RegistryDep, require_api_key
from service.errors import (
    DEFAULT_RETRY_AFTER_S,
    V2_PATH_PREFIX,
    ServiceError,
    echo,
    problem_response,
    service_error_response,
    status_phrase,
)
from service.limits import reserve_at_least
from service.runtime import (
    DEFAULT_GRAPH,
    NUMPY_TYPES,
    GraphConfig,
    LoadedModel,
    ModelRegistry,
    OnnxSession,
    TensorSpec,
)
from service.schemas import ORIGIN_REFUSAL, PROBLEM_MEDIA_TYPE, V2Problem

logger = logging.getLogger(__name__)

# The server's name in V2 server metadata (GET /v2): any string; clients only display it.
SERVER_NAME = "vision-service"
# The binary tensor extension under Triton's name, which tritonclient looks for.
EXTENSIONS = ["binary_tensor_data"]
# A model's platform in V2 model metadata, in Triton's vocabulary (what tritonclient and
# KServe tooling expect for an ONNX Runtime model).
PLATFORM = "onnxruntime_onnx"
# The binary extension's header: the length of the JSON part, binary tensors follow it.
HEADER_LENGTH = "Inference-Header-Content-Length"
# The media type of a request or answer with binary tensors after the JSON part.
BINARY_MEDIA_TYPE = "application/octet-stream"
# Joins a model and one of its graphs into a V2 model name.
GRAPH_SEPARATOR = "."

V2_NAME = Annotated[str, Path(description="V2 model name: `<model>` or `<model>.<graph>`")]
V2_VERSION = Annotated[str, Path(description="model version; only the served one is known")]


class V2Error(Exception):
    """An error a V2 route answers: ``status`` and the message for ``detail`` and ``error``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """``message`` as a problem document on a V2 path (an ``error`` member included)."""
    return problem_response(
        status,
        title=status_phrase(status),
        detail=message,
        headers=headers,
        path=V2_PATH_PREFIX,
    )


class V2Route(APIRoute):
    """Answers every error of a V2 route, the app's own included, in the protocol's statuses
    (a validation error is 400, not FastAPI's 422) as problem+json with ``error``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except V2Error as exc:
                return error_response(exc.status, exc.message, exc.headers)
            except RequestValidationError as exc:
                detail = "; ".join(str(error.get("msg", "invalid")) for error in exc.errors())
                return error_response(400, detail or "invalid request")
            except ServiceError as exc:  # 401 from the API key check, 503s
                return service_error_response(exc, V2_PATH_PREFIX)

        return route


router = APIRouter(
    prefix=V2_PATH_PREFIX, tags=["open inference protocol (v2)"], route_class=V2Route
)
protected = [Depends(require_api_key)]


# --- protocol documents (request parsing and the OpenAPI schema) ----------------------------


class MetadataTensor(BaseModel):
    name: str
    datatype: str = Field(examples=["FP32"])
    shape: list[int] = Field(examples=[[-1, 3, 160, 160]])


class ServerMetadata(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"name": "vision-service", "version": "0.1.0", "extensions": ["binary_tensor_data"]}
            ]
        }
    )

    name: str
    version: str
    extensions: list[str]


class ModelMetadata(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "landmark",
                    "versions": ["1"],
                    "platform": PLATFORM,
                    "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 160, 160]}],
                    "outputs": [{"name": "confidence", "datatype": "FP32", "shape": [-1, 400, 2]}],
                }
            ]
        }
    )

    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class LiveStatus(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"live": True}]})

    live: bool


class ReadyStatus(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"ready": True}]})

    ready: bool


class ModelReadyStatus(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"name": "attention.features", "ready": True}]}
    )

    name: str
    ready: bool


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = Field(
        default=None,
        description="row-major values, flat or nested; absent with parameters.binary_data_size",
    )


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    parameters: dict[str, Any] = Field(
        default_factory=dict, description='{"binary_data": true} returns it as raw bytes'
    )


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | None = None
    parameters: dict[str, Any] = Field(
        default_factory=dict, description='{"binary_data_output": true}: every output binary'
    )
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = Field(default=None, description="default: all")


class ResponseOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


INFER_EXAMPLE = {
    "id": "42",
    "inputs": [
        {"name": "image", "datatype": "FP32", "shape": [1, 3, 2, 2], "data": [0.0] * 12},
    ],
    "outputs": [{"name": "confidence", "parameters": {"binary_data": False}}],
}
INFER_RESPONSE_EXAMPLE = {
    "model_name": "landmark",
    "model_version": "1",
    "id": "42",
    "outputs": [{"name": "confidence", "datatype": "FP32", "shape": [1, 2], "data": [0.1, 0.05]}],
}


Responses = dict[int | str, dict[str, Any]]


def _error(description: str) -> dict[str, Any]:
    return {
        "model": V2Problem,
        "description": description,
        "content": {PROBLEM_MEDIA_TYPE: {}},
    }


# Every other client error, in the same shape (and no FastAPI 422: V2 says 400).
OTHER_CLIENT_ERRORS: Responses = {"4XX": _error("any other client error")}
NOT_READY: Responses = {503: _error("not ready (a model failed to load); see Retry-After")}
UNKNOWN_MODEL: Responses = {
    401: _error("API keys are configured and none or a wrong one was sent"),
    404: _error("no such V2 model (or version) on this server"),
}
MODEL_RESPONSES: Responses = {**UNKNOWN_MODEL, **NOT_READY, **OTHER_CLIENT_ERRORS}


def _inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON schema with its ``$defs`` inlined, for ``openapi_extra``."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(definitions[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


INFER_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": (
            "JSON; or, with the `Inference-Header-Content-Length: N` header, N bytes of this "
            "JSON followed by the binary inputs' raw little-endian bytes in input order."
        ),
        "content": {
            "application/json": {"schema": _inline_schema(InferRequest), "example": INFER_EXAMPLE},
            BINARY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


# --- the registry seen as V2 models ---------------------------------------------------------


@dataclass(frozen=True)
class V2Model:
    """One V2 model: a graph of a loaded model (``graph`` None when the config is unknown)."""

    name: str
    model: LoadedModel
    graph: str | None
    config: GraphConfig | None


def v2_models(registry: ModelRegistry) -> dict[str, V2Model]:
    """Every V2 model this registry serves, by V2 name. Should a model's own name equal
    another's ``<model>.<graph>``, the model that comes first in the registry keeps it."""
    served: dict[str, V2Model] = {}
    for model in registry.models.values():
        config = model.config
        if config is None:  # failed before its config was read: known, never ready
            served.setdefault(model.name, V2Model(model.name, model, None, None))
        elif config.graphs is None:
            graph = config.graph_configs()[DEFAULT_GRAPH]
            served.setdefault(model.name, V2Model(model.name, model, DEFAULT_GRAPH, graph))
        else:
            for graph_name, graph in config.graphs.items():
                name = f"{model.name}{GRAPH_SEPARATOR}{graph_name}"
                served.setdefault(name, V2Model(name, model, graph_name, graph))
            # The model's own name: its first graph, which takes the image.
            entry, graph = next(iter(config.graphs.items()))
            served.setdefault(model.name, V2Model(model.name, model, entry, graph))
    return served


def find_model(registry: ModelRegistry, name: str, version: str | None = None) -> V2Model:
    """The V2 model ``name`` (at ``version``, if given), else 404."""
    served = v2_models(registry)
    found = served.get(name)
    if found is None:
        raise V2Error(404, f"unknown model {echo(name)}; this server serves {sorted(served)}")
    if version is not None and version != found.model.version:
        raise V2Error(
            404,
            f"model {echo(name)} has no version {echo(version)}; "
            f"it serves version {found.model.version!r}",
        )
    return found


def ready_session(found: V2Model) -> tuple[OnnxSession, GraphConfig]:
    """The model's session and graph config, or 503 with the reason."""
    model = found.model
    if not model.ready or found.config is None or found.graph is None:
        raise V2Error(
            503,
            f"model {found.name!r} is not ready: {model.error or 'loading'}",
            {"Retry-After": str(DEFAULT_RETRY_AFTER_S)},
        )
    return model.graph(None if model.session is not None else found.graph), found.config


def _tensors(specs: Sequence[TensorSpec]) -> list[MetadataTensor]:
    return [MetadataTensor(name=s.name, datatype=s.datatype, shape=list(s.shape)) for s in specs]


# --- tensors in and out ---------------------------------------------------------------------

# Which numpy kinds a JSON array may have for each datatype (no strings, no silent bools).
JSON_KINDS = {"BOOL": "b", "UINT8": "iu", "INT8": "iu", "INT32": "iu", "INT64": "iu"}
FLOAT_KINDS = "iuf"


def _little_endian(datatype: str) -> np.dtype[Any]:
    return np.dtype(NUMPY_TYPES[datatype]).newbyteorder("<")


def _check_shape(name: str, shape: Sequence[int], spec: TensorSpec) -> None:
    if len(shape) != len(spec.shape):
        raise V2Error(400, f"input {name!r} has shape {list(shape)}; the graph wants {spec.shape}")
    for got, want in zip(shape, spec.shape, strict=True):
        if (want < 0 and got < 1) or (want >= 0 and got != want):
            raise V2Error(
                400,
                f"input {name!r} has shape {list(shape)}; the graph wants {spec.shape} "
                "(-1: any size from 1)",
            )


def _check_finite(name: str, array: npt.NDArray[Any]) -> None:
    """Images and features are finite; a NaN sent in would come back as NaN, which JSON
    cannot carry."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise V2Error(400, f"input {name!r} holds NaN or infinite values")


def _json_tensor(name: str, data: Any, datatype: str, count: int) -> npt.NDArray[Any]:
    if data is None:
        raise V2Error(400, f"input {name!r} has neither data nor parameters.binary_data_size")
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError) as exc:
        raise V2Error(400, f"input {name!r}: data is not a regular array ({exc})") from exc
    if raw.size != count:
        raise V2Error(400, f"input {name!r} has {raw.size} values; its shape holds {count}")
    kinds = JSON_KINDS.get(datatype, FLOAT_KINDS)
    if raw.size and raw.dtype.kind not in kinds:
        raise V2Error(400, f"input {name!r}: data of kind {raw.dtype} is not {datatype}")
    dtype = np.dtype(NUMPY_TYPES[datatype])
    if raw.size and dtype.kind in "iu":
        info = np.iinfo(dtype)
        if int(raw.min()) < info.min or int(raw.max()) > info.max:
            raise V2Error(400, f"input {name!r}: values outside the range of {datatype}")
    if raw.size and dtype.kind == "f" and raw.dtype.kind == "f":
        _check_finite(name, raw)
        if np.abs(raw).max() > np.finfo(dtype).max:
            raise V2Error(400, f"input {name!r}: values outside the range of {datatype}")
    return raw.astype(dtype)


def decode_inputs(
    request: InferRequest, binary: bytes, config: GraphConfig
) -> dict[str, npt.NDArray[Any]]:
    """The request's tensors, checked against the graph's inputs, by input name."""
    declared = {spec.name: spec for spec in config.inputs}
    names = [item.name for item in request.inputs]
    if len(set(names)) != len(names):
        raise V2Error(400, f"inputs {names} name a tensor more than once")
    if set(names) != set(declared):
        raise V2Error(400, f"inputs {sorted(names)} differ from the graph's {sorted(declared)}")
    feeds: dict[str, npt.NDArray[Any]] = {}
    offset = 0
    for item in request.inputs:
        spec = declared[item.name]
        if item.datatype != spec.datatype:
            raise V2Error(
                400, f"input {item.name!r} is {item.datatype}; the graph wants {spec.datatype}"
            )
        _check_shape(item.name, item.shape, spec)
        count = math.prod(item.shape)
        size = item.parameters.get("binary_data_size")
        if size is None:
            array = _json_tensor(item.name, item.data, spec.datatype, count)
        else:
            dtype = _little_endian(spec.datatype)
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise V2Error(400, f"input {item.name!r}: binary_data_size must be an integer")
            if item.data is not None:
                raise V2Error(400, f"input {item.name!r} has both data and binary_data_size")
            if size != count * dtype.itemsize:
                raise V2Error(
                    400,
                    f"input {item.name!r}: binary_data_size is {size}; shape {item.shape} "
                    f"of {spec.datatype} needs {count * dtype.itemsize}",
                )
            if offset + size > len(binary):
                raise V2Error(400, f"input {item.name!r}: the binary data ends early")
            array = np.frombuffer(binary, dtype, count, offset)
            offset += size
            _check_finite(item.name, array)  # JSON data was checked by _json_tensor
        feeds[item.name] = array.reshape(item.shape).astype(NUMPY_TYPES[spec.datatype])
    if offset != len(binary):
        raise V2Error(400, f"{len(binary) - offset} bytes of binary data belong to no input")
    # Every input's first axis is the batch (rows are batched with other requests' rows).
    batch_sizes = sorted({tensor.shape[0] for tensor in feeds.values()})
    if len(batch_sizes) > 1:
        raise V2Error(400, f"inputs disagree on the batch size (first axis): {batch_sizes}")
    return feeds


# The fewest and the most bytes a value takes in a JSON answer, by numpy kind: "0," or
# "-9223372036854775808," for an integer, "0.0," or "-1.1754943508222875e-38," for a float
# (float32 written as a Python float), "true," or "false,". The pre-run bounds use these; the
# JSON written is measured as it is built (encode_outputs).
JSON_MIN_BYTES = {"f": 4, "i": 2, "u": 2, "b": 5}
JSON_MAX_BYTES = {"f": 24, "i": 21, "u": 21, "b": 6}


def answer_bounds(
    feeds: Mapping[str, npt.NDArray[Any]],
    wanted: Sequence[tuple[str, bool]],
    config: GraphConfig,
) -> tuple[int, int | None]:
    """The fewest and the most bytes the answer's outputs can take, from their config.json
    shapes with the batch axis at the request's rows: the datatype's size a value in
    binary, JSON_MIN_BYTES and JSON_MAX_BYTES in JSON. Another dynamic axis counts 1 in
    the fewest and leaves the most unknown (None). Past the limit, the fewest means no
    answer to these rows fits, so they are refused unrun."""
    rows = max((array.shape[0] for array in feeds.values() if array.ndim), default=1)
    specs = {spec.name: spec for spec in config.outputs}
    fewest = 0
    most: int | None = 0
    for name, binary in wanted:
        dtype = _little_endian(specs[name].datatype)
        shape = specs[name].shape
        values = math.prod(rows if a == 0 and n == -1 else max(n, 1) for a, n in enumerate(shape))
        fewest += values * (dtype.itemsize if binary else JSON_MIN_BYTES[dtype.kind])
        if most is not None and -1 not in shape[1:]:
            most += values * (dtype.itemsize if binary else JSON_MAX_BYTES[dtype.kind])
        else:
            most = None
    return fewest, most


def _flag(parameters: Mapping[str, Any], key: str, default: bool) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise V2Error(400, f"parameter {key} must be true or false")
    return value


def requested_outputs(request: InferRequest, config: GraphConfig) -> list[tuple[str, bool]]:
    """(output name, as binary) for each output to return, in request order."""
    declared = [spec.name for spec in config.outputs]
    default_binary = _flag(request.parameters, "binary_data_output", False)
    if request.outputs is None:
        return [(name, default_binary) for name in declared]
    wanted: list[tuple[str, bool]] = []
    for item in request.outputs:
        if item.name not in declared:
            raise V2Error(400, f"unknown output {item.name!r}; the graph has {declared}")
        if "classification" in item.parameters:
            raise V2Error(400, "the classification extension is not supported")
        wanted.append((item.name, _flag(item.parameters, "binary_data", default_binary)))
    if len({name for name, _ in wanted}) != len(wanted):
        raise V2Error(400, "outputs name a tensor more than once")
    return wanted


# Members of one gzip body: a body concatenated from a few files has a few; each member
# costs a fresh inflater on the event loop, so a body of a million 20-byte ones is refused.
MAX_GZIP_MEMBERS = 64
# Input fed to the inflater at a time (see _decompress).
INFLATE_SLICE_BYTES = 64 * 1024
NOT_NUL = re.compile(rb"[^\x00]")


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """A gzip/deflate body, inflated to at most ``limit`` bytes (no decompression bombs).
    A gzip body may be several members one after another (RFC 1952), with NUL padding
    between them, as ``gzip.decompress`` reads it, up to MAX_GZIP_MEMBERS; a stream cut
    short, or bytes after the last one that start no member, are a 400 (a cut stream was
    passed on as what it had inflated to, then refused as JSON)."""
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding)
    if wbits is None:
        raise V2Error(400, f"Content-Encoding {encoding!r} is not supported (gzip, deflate)")
    view, offset, size = memoryview(body), 0, 0
    pieces: list[bytes] = []
    for _ in range(MAX_GZIP_MEMBERS):
        inflater = zlib.decompressobj(wbits)
        # Fed a slice at a time: at a member's end zlib copies the input left over into
        # unused_data, which for the whole rest of a body of tiny members was quadratic.
        while not inflater.eof and offset < len(view):
            chunk = view[offset : offset + INFLATE_SLICE_BYTES]
            offset += len(chunk)
            try:
                piece = inflater.decompress(chunk, limit - size + 1)
            except zlib.error as exc:
                raise V2Error(400, f"the body is not valid {encoding}: {exc}") from exc
            size += len(piece)
            if size > limit:
                raise V2Error(413, f"the inflated body exceeds {limit} bytes")
            pieces.append(piece)
        if not inflater.eof:
            raise V2Error(400, f"the body is not valid {encoding}: it ends mid-stream")
        offset -= len(inflater.unused_data)
        if encoding == "gzip":  # NUL padding after a member is skipped, as gzip.decompress does
            found = NOT_NUL.search(body, offset)
            offset = found.start() if found else len(body)
        if offset == len(body):
            return b"".join(pieces)
        if encoding != "gzip":
            raise V2Error(
                400, f"the body is not valid deflate: {len(body) - offset} bytes follow it"
            )
    raise V2Error(400, f"the body has more than {MAX_GZIP_MEMBERS} gzip members")


def split_body(body: bytes, header_length: str | None) -> tuple[InferRequest, bytes]:
    """The JSON request and the binary tail (Triton's binary tensor data extension)."""
    if header_length is None:
        head, tail = body, b""
    else:
        try:
            length = int(header_length)
        except ValueError:
            length = -1
        if not 0 <= length <= len(body):
            raise V2Error(400, f"{HEADER_LENGTH} must be a length within the body")
        head, tail = body[:length], body[length:]
    try:
        # pydantic-core parses the JSON itself (Rust, UTF-8 as RFC 8259 asks): on a tensor
        # body about 4x faster than json.loads, and the event loop is held while it parses.
        # NaN and Infinity tokens pass here and are refused with the other values' checks.
        return InferRequest.model_validate_json(head), tail
    except ValidationError as exc:
        errors = exc.errors()
        if errors[0]["type"] == "json_invalid":  # also "[[[[..." past the parser's depth
            reason = errors[0].get("ctx", {}).get("error", errors[0]["msg"])
            raise V2Error(400, f"the inference request is not valid JSON: {reason}") from exc
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'body'}: {error['msg']}"
            for error in errors
        )
        raise V2Error(400, f"not an inference request: {problems}") from exc


# Encodes a response body (plain dicts, lists, str, int, float) to compact JSON bytes.
JSON_BODY: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])
JSON_LIST: TypeAdapter[list[Any]] = TypeAdapter(list[Any])

# Values turned into Python objects at a time while an output is written as JSON: a float
# object and its list slot take 32 bytes, so 65 536 values hold about 2 MB beside the answer
# (the whole of a 31 M-value answer as one list once took 850 MB).
JSON_CHUNK_VALUES = 65_536


def json_values(array: npt.NDArray[Any], room: int) -> list[bytes] | None:
    """The JSON text of ``array``'s values, flattened, as pieces that join with b"," (no
    brackets); None as soon as they pass ``room`` bytes."""
    flat = array.reshape(-1)
    pieces: list[bytes] = []
    used = 0
    for start in range(0, flat.size, JSON_CHUNK_VALUES):
        # pydantic's encoder: about 10x json.dumps on a feature map (the event loop waits).
        piece = JSON_LIST.dump_json(flat[start : start + JSON_CHUNK_VALUES].tolist())[1:-1]
        used += len(piece) + 1
        if used > room:
            return None
        pieces.append(piece)
    return pieces


def _open_object(value: dict[str, Any]) -> bytes:
    """``value``'s JSON without its closing brace, for members to be appended."""
    return JSON_BODY.dump_json(value)[:-1]


def encode_outputs(
    results: Mapping[str, npt.NDArray[Any]],
    wanted: Sequence[tuple[str, bool]],
    config: GraphConfig,
    body: dict[str, Any],
    limit: int,
) -> Response:
    """JSON response, or JSON header + binary outputs when any output is binary. An answer
    past ``limit`` bytes is a 413, found while it is written: JSON's size depends on the
    values (a ReLU map of zeros takes 4 bytes a value, other floats up to 24)."""
    datatypes = {spec.name: spec.datatype for spec in config.outputs}
    # The JSON is assembled from pieces so that no output is ever a Python list whole.
    parts: list[bytes] = [_open_object(body), b',"outputs":[']
    chunks: list[bytes] = []
    closing = b"]}"
    size = sum(map(len, parts)) + len(closing)
    for index, (name, binary) in enumerate(wanted):
        datatype = datatypes[name]
        array = np.asarray(results[name])
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        data: list[bytes] | None = None  # stays None for a binary output
        if binary:
            raw = np.ascontiguousarray(array, dtype=_little_endian(datatype)).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
            size += len(raw)
        else:
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                # Strict JSON has no NaN or Infinity; the binary extension carries them. Only
                # inputs far outside what the model was trained on get here (finite FP32
                # near its limit), so it is the request's to change: a 400, not a 500.
                raise V2Error(
                    400,
                    f"output {name!r} is not finite for these inputs, and JSON cannot carry "
                    "it; ask for it with binary_data true",
                )
            data = json_values(array, limit - size)
            if data is None:
                raise V2Error(
                    413,
                    f"output {name!r} in JSON takes more than the {limit} bytes an answer may "
                    "take (VISION_MAX_UPLOAD_BYTES): ask for it with binary_data true (4 bytes "
                    "a float32 value against JSON's up to 24), or for fewer rows or outputs",
                )
        part = (b"," if index else b"") + _open_object(entry)
        part += b"}" if data is None else b',"data":[' + b",".join(data) + b"]}"
        parts.append(part)
        size += len(part)
        if size > limit:
            raise V2Error(
                413,
                f"the answer takes more than the {limit} bytes an answer may take "
                "(VISION_MAX_UPLOAD_BYTES): ask for fewer rows or outputs",
            )
    parts.append(closing)
    # Every float above was checked finite, so no NaN token can reach strict JSON.
    header = b"".join(parts)
    if not chunks:
        return Response(header, media_type="application/json")
    return Response(
        header + b"".join(chunks),
        media_type=BINARY_MEDIA_TYPE,
        headers={HEADER_LENGTH: str(len(header))},
    )


# --- routes ---------------------------------------------------------------------------------


@router.get("", dependencies=protected, responses={401: UNKNOWN_MODEL[401]})
async def get_server_metadata(request: Request) -> ServerMetadata:
    """Server name, version and protocol extensions."""
    return ServerMetadata(name=SERVER_NAME, version=request.app.version, extensions=EXTENSIONS)


@router.get("/health/live")
async def check_server_live() -> LiveStatus:
    """200 while the process runs."""
    return LiveStatus(live=True)


@router.get("/health/ready", responses=NOT_READY)
async def check_server_ready(registry: RegistryDep) -> ReadyStatus:
    """200 once every configured model is loaded and warmed, else 503."""
    if not registry.ready:
        failed = [f"{n}: {m.error}" for n, m in registry.models.items() if m.error]
        reason = "; ".join(([registry.problem] if registry.problem else []) + failed)
        raise V2Error(
            503,
            f"not ready: {reason or 'models are loading'}",
            {"Retry-After": str(DEFAULT_RETRY_AFTER_S)},
        )
    return ReadyStatus(ready=True)


def _metadata(found: V2Model) -> ModelMetadata:
    if found.config is None:
        raise V2Error(
            503,
            f"model {found.name!r} failed before its signature was read: {found.model.error}",
            {"Retry-After": str(DEFAULT_RETRY_AFTER_S)},
        )
    return ModelMetadata(
        name=found.name,
        versions=[found.model.version or ""],
        platform=PLATFORM,
        inputs=_tensors(found.config.inputs),
        outputs=_tensors(found.config.outputs),
    )


@router.get("/models/{name}", dependencies=protected, responses=MODEL_RESPONSES)
async def get_model_metadata(name: V2_NAME, registry: RegistryDep) -> ModelMetadata:
    """Inputs and outputs (names, datatypes, shapes; -1 is a dynamic axis) of a V2 model."""
    return _metadata(find_model(registry, name))


@router.get(
    "/models/{name}/versions/{version}",
    dependencies=protected,
    responses=MODEL_RESPONSES,
)
async def get_model_version_metadata(
    name: V2_NAME, version: V2_VERSION, registry: RegistryDep
) -> ModelMetadata:
    """As ``/v2/models/{name}``, for the served version only."""
    return _metadata(find_model(registry, name, version))


def _model_ready(found: V2Model) -> ModelReadyStatus:
    ready_session(found)
    return ModelReadyStatus(name=found.name, ready=True)


@router.get("/models/{name}/ready", dependencies=protected, responses=MODEL_RESPONSES)
async def check_model_ready(name: V2_NAME, registry: RegistryDep) -> ModelReadyStatus:
    """200 when the model's graphs are loaded and warmed, else 503."""
    return _model_ready(find_model(registry, name))


@router.get(
    "/models/{name}/versions/{version}/ready",
    dependencies=protected,
    responses=MODEL_RESPONSES,
)
async def check_model_version_ready(
    name: V2_NAME, version: V2_VERSION, registry: RegistryDep
) -> ModelReadyStatus:
    """As ``/v2/models/{name}/ready``, for the served version only."""
    return _model_ready(find_model(registry, name, version))


def _parse(body: bytes, request: Request) -> tuple[InferRequest, bytes]:
    """The request's JSON and binary tail, the body inflated first when it was sent
    compressed; 400 for one that does not parse."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        body = _decompress(body, encoding, request.app.state.settings.max_upload_bytes)
        # The body budget counted the bytes sent; the inflated body is what is held.
        reserve_at_least(request.scope, len(body), "the inflated body")
    return split_body(body, request.headers.get(HEADER_LENGTH))


async def _infer(found: V2Model, request: Request) -> Response:
    # Read from the stream, not request.body(), which would keep a copy on the request for
    # as long as it waits in the queue.
    body = b"".join([chunk async for chunk in request.stream()])
    try:
        _, config = ready_session(found)
    except V2Error:
        # A request that does not parse is the client's error even while the model cannot
        # run: its 400, not the 503, whose Retry-After would only bring the same bytes back.
        _parse(body, request)
        raise
    assert found.graph is not None  # ready_session saw to it
    # The slot first: a full queue answers 503 before any parsing. Parsing stays on the event
    # loop: the parser, pydantic and numpy's list conversion hold the GIL throughout, so a
    # worker thread does not free the loop (with json.loads it stalled the loop longer there:
    # 1.2-1.3 s against 0.42-0.49 s on 19.6 MiB). A 19.3 MiB JSON body holds it for about
    # 0.1-0.2 s (python -m benchmarks.v2_json). Large tensors belong in the binary extension.
    with found.model.batcher(found.graph).slot() as reservation:
        parsed, binary = _parse(body, request)
        feeds = decode_inputs(parsed, binary, config)
        wanted = requested_outputs(parsed, config)
        request_id = parsed.id
        # The answer is held too, and in JSON takes up to six times its tensors: a 20 kB gzip
        # body of 420 zero images asked for a 125 MB answer (850 MB of memory building it).
        # Bounded like a body: refused unrun when even its fewest bytes pass the limit, else
        # measured as it is written (encode_outputs), and counted in the body budget.
        fewest, most = answer_bounds(feeds, wanted, config)
        limit = request.app.state.settings.max_upload_bytes
        if fewest > limit:
            raise V2Error(
                413,
                f"the answer would take at least {fewest} bytes, past the {limit} an answer "
                "may take (VISION_MAX_UPLOAD_BYTES): ask for fewer rows or outputs",
            )
        # The most it may take: encode_outputs stops it at the limit, so this holds whatever
        # the values turn out to be, and nothing is reserved (nor refused) after the run.
        answer = limit if most is None else min(most, limit)
        inputs = sum(array.nbytes for array in feeds.values())
        reserve_at_least(request.scope, inputs + answer, "the inputs and their answer")
        # The parsed JSON holds its numbers as Python objects, 5-8x the body's bytes: let it
        # and the body go before the wait in the queue, which only needs the arrays.
        del body, parsed, binary
        try:
            # Batched with concurrent requests for the same graph and per-row shape.
            results = await found.model.infer(
                feeds,
                found.graph,
                reservation=reservation,
                disconnected=request.is_disconnected,
            )
        except ServiceError:  # 503 queue full, 499 client gone: answered by V2Route
            raise
        except Exception as exc:  # inputs were checked: a failure here is the server's
            logger.exception("V2 inference on %s failed", found.name)
            raise V2Error(500, f"inference failed: {exc}") from exc
    version = found.model.version or ""
    head: dict[str, Any] = {"model_name": found.name, "model_version": version}
    if request_id is not None:
        head["id"] = request_id
    return encode_outputs(results, wanted, config, head, limit)


INFER_RESPONSES: Responses = {
    200: {
        "model": InferResponse,
        "description": (
            "JSON; when an output is binary, `application/octet-stream` with the JSON header "
            f"length in `{HEADER_LENGTH}` and the outputs' bytes after it"
        ),
        "content": {
            "application/json": {"example": INFER_RESPONSE_EXAMPLE},
            BINARY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
        },
    },
    400: _error("malformed request: JSON, names, datatypes, shapes or binary sizes"),
    **UNKNOWN_MODEL,
    401: _error(
        "API keys are configured and none or a wrong one was sent; a request with a body is "
        "answered before its body is read, so that no key means no share of the server's "
        "body budget"
    ),
    403: _error(ORIGIN_REFUSAL),
    408: _error("the body stopped arriving for VISION_BODY_TIMEOUT_S; the connection is closed"),
    413: _error("the body exceeds the upload limit, as sent or once inflated, or the answer would"),
    503: _error(
        "not ready (a model failed to load), the graph's queue full, or the server's body "
        "budget full (VISION_MAX_BODY_BYTES_IN_FLIGHT); see Retry-After"
    ),
    **OTHER_CLIENT_ERRORS,
}


INFER_PATH = "/models/{name}/infer"
INFER_VERSION_PATH = "/models/{name}/versions/{version}/infer"
# The V2 routes that take a body, as the app sees them: the size limit and the upload gate
# may answer them before routing, and the request metrics label those answers with these.
BODY_PATHS = (V2_PATH_PREFIX + INFER_PATH, V2_PATH_PREFIX + INFER_VERSION_PATH)


@router.post(
    INFER_PATH,
    dependencies=protected,
    responses=INFER_RESPONSES,
    openapi_extra=INFER_OPENAPI,
    response_class=Response,
)
async def infer_model(name: V2_NAME, request: Request, registry: RegistryDep) -> Response:
    """Run one graph on raw tensors (JSON or binary); returns the requested outputs."""
    return await _infer(find_model(registry, name), request)


@router.post(
    INFER_VERSION_PATH,
    dependencies=protected,
    responses=INFER_RESPONSES,
    openapi_extra=INFER_OPENAPI,
    response_class=Response,
)
async def infer_model_version(
    name: V2_NAME, version: V2_VERSION, request: Request, registry: RegistryDep
) -> Response:
    """As ``/v2/models/{name}/infer``, for the served version only."""
    return await _infer(find_model(registry, name, version), request)
