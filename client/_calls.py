"""What each endpoint sends and how its answer is read; shared by the sync and async clients.

Each function returns a :class:`Call`: the request's parts and a parser for the response.
The clients only send it and raise :mod:`client.errors` for error statuses.
"""

from __future__ import annotations

import json
import mimetypes
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Generic, TypeVar
from urllib.parse import quote

import httpx
import numpy as np
import numpy.typing as npt

from service.schemas import (
    AttentionResponse,
    CorrectionResponse,
    FeedbackResponse,
    GenderResponse,
    LiveResponse,
    ModelInfo,
    ModelsResponse,
    OcclusionResponse,
    ReadyResponse,
    RecognizeResponse,
    VerifyResponse,
)

T = TypeVar("T")

# Anything an image can be given as: its bytes, a path to it, or an open binary file.
ImageInput = bytes | bytearray | memoryview | str | Path | IO[bytes]

HEADER_LENGTH = "Inference-Header-Content-Length"

# A part of no declared type: the server looks at the bytes.
OCTET_STREAM = "application/octet-stream"
# numpy dtype -> Open Inference Protocol datatype (the ones ONNX graphs use here).
V2_DATATYPES: dict[np.dtype[Any], str] = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
}
NUMPY_DTYPES = {name: dtype for dtype, name in V2_DATATYPES.items()}


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and how to read its successful (or ``accept``-ed) response."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None
    data: dict[str, str] | None = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # Error statuses that are an answer, not a failure (e.g. 503 from a readiness probe).
    accept: frozenset[int] = frozenset()


@dataclass(frozen=True)
class InferResult:
    """A V2 inference response with its outputs as numpy arrays, by output name."""

    model_name: str
    model_version: str
    outputs: dict[str, npt.NDArray[Any]]
    id: str | None = None


def _image_part(
    image: ImageInput, filename: str | None, default_name: str = "image"
) -> tuple[str, bytes, str]:
    """A multipart file part: the file's own name where it has one, and its type when the
    name says an image; otherwise ``application/octet-stream``, which the server sniffs
    (it refuses a part declared as any other non-image type, such as ``text/plain``)."""
    if isinstance(image, bytes | bytearray | memoryview):
        data, name = bytes(image), filename or default_name
    elif isinstance(image, str | Path):
        path = Path(image)
        data, name = path.read_bytes(), filename or path.name
    else:
        # A temporary file's name is an int (its descriptor) or None: not a file name.
        own = getattr(image, "name", None)
        data = image.read()
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(
                "an image file must be opened in binary mode ('rb'); "
                f"read gave {type(data).__name__}"
            )
        data = bytes(data)
        name = filename or (Path(os.fsdecode(own)).name if isinstance(own, str | bytes) else "")
        name = name or default_name
    guessed = mimetypes.guess_type(name)[0]
    content_type = guessed if guessed and guessed.startswith("image/") else OCTET_STREAM
    return name, data, content_type


def recognize(
    image: ImageInput, min_score: float | None, filename: str | None
) -> Call[RecognizeResponse]:
    params = {"min_score": min_score} if min_score is not None else None
    return Call(
        "POST",
        "/recognize",
        lambda r: RecognizeResponse.model_validate(r.json()),
        params=params,
        files={"image": _image_part(image, filename)},
    )


def attention(image: ImageInput, filename: str | None) -> Call[AttentionResponse]:
    return Call(
        "POST",
        "/attention",
        lambda r: AttentionResponse.model_validate(r.json()),
        files={"image": _image_part(image, filename)},
    )


def attention_correct(
    image: ImageInput,
    mask: ImageInput,
    label: str | None,
    save: bool,
    filename: str | None,
) -> Call[CorrectionResponse]:
    data: dict[str, str] = {"save": "true" if save else "false"}
    if label is not None:
        data["label"] = label
    return Call(
        "POST",
        "/attention/correct",
        lambda r: CorrectionResponse.model_validate(r.json()),
        files={"image": _image_part(image, filename), "mask": _image_part(mask, None, "mask")},
        data=data,
    )


def gender(image: ImageInput, contour: bool, filename: str | None) -> Call[GenderResponse]:
    return Call(
        "POST",
        "/gender",
        lambda r: GenderResponse.model_validate(r.json()),
        params={"contour": "true" if contour else "false"},
        files={"image": _image_part(image, filename)},
    )


def occlusion(image: ImageInput, filename: str | None) -> Call[OcclusionResponse]:
    return Call(
        "POST",
        "/occlusion",
        lambda r: OcclusionResponse.model_validate(r.json()),
        files={"image": _image_part(image, filename)},
    )


def verify_faces(image_a: ImageInput, image_b: ImageInput) -> Call[VerifyResponse]:
    return Call(
        "POST",
        "/faces/verify",
        lambda r: VerifyResponse.model_validate(r.json()),
        files={"image_a": _image_part(image_a, None), "image_b": _image_part(image_b, None)},
    )


def attention_feedback() -> Call[FeedbackResponse]:
    return Call("GET", "/attention/feedback", lambda r: FeedbackResponse.model_validate(r.json()))


def _segment(value: str) -> str:
    """``value`` as one path segment. "." and ".." are refused: quoting leaves them as they
    are, and URL resolution would then drop or climb a segment (``v2_model_metadata("..")``
    asked ``/v2``, the server's metadata)."""
    if value in (".", ".."):
        raise ValueError(f"{value!r} is no model name or version")
    return quote(value, safe="")


def reload_model(name: str) -> Call[ModelInfo]:
    return Call(
        "POST",
        f"/models/{_segment(name)}/reload",
        lambda r: ModelInfo.model_validate(r.json()),
    )


def health_live() -> Call[LiveResponse]:
    return Call("GET", "/health/live", lambda r: LiveResponse.model_validate(r.json()))


def health_ready() -> Call[ReadyResponse]:
    return Call("GET", "/health/ready", lambda r: ReadyResponse.model_validate(r.json()))


def models() -> Call[ModelsResponse]:
    return Call("GET", "/models", lambda r: ModelsResponse.model_validate(r.json()))


def metrics() -> Call[str]:
    return Call("GET", "/metrics", lambda r: r.text)


def _ok(response: httpx.Response) -> bool:
    return response.status_code == httpx.codes.OK


def _metadata(response: httpx.Response) -> dict[str, Any]:
    """A V2 metadata document: a JSON object naming its server or model. ValueError (the
    caller's UnexpectedResponse) for any other body: ``dict(r.json())`` passed a proxy's JSON
    off as metadata, and made a dict of a list of pairs."""
    body = response.json()
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        raise ValueError("not a V2 metadata document: no 'name'")
    return body


def v2_server_metadata() -> Call[dict[str, Any]]:
    return Call("GET", "/v2", _metadata)


def v2_live() -> Call[bool]:
    return Call("GET", "/v2/health/live", _ok, accept=frozenset({503}))


def v2_ready() -> Call[bool]:
    return Call("GET", "/v2/health/ready", _ok, accept=frozenset({503}))


def _model_path(name: str, version: str | None) -> str:
    path = f"/v2/models/{_segment(name)}"
    return path + (f"/versions/{_segment(version)}" if version else "")


def v2_model_metadata(name: str, version: str | None) -> Call[dict[str, Any]]:
    return Call("GET", _model_path(name, version), _metadata)


def v2_model_ready(name: str, version: str | None) -> Call[bool]:
    return Call("GET", _model_path(name, version) + "/ready", _ok, accept=frozenset({503}))


def _read_infer(response: httpx.Response) -> InferResult:
    length = response.headers.get(HEADER_LENGTH)
    body = response.content
    header = json.loads(body[: int(length)] if length is not None else body)
    offset = int(length) if length is not None else len(body)
    outputs: dict[str, npt.NDArray[Any]] = {}
    for output in header["outputs"]:
        dtype = NUMPY_DTYPES[output["datatype"]]
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            array = np.asarray(output["data"], dtype)
        else:
            count = size // dtype.itemsize
            array = np.frombuffer(body, dtype.newbyteorder("<"), count, offset).astype(dtype)
            offset += size
        outputs[output["name"]] = array.reshape(output["shape"])
    return InferResult(
        model_name=header["model_name"],
        model_version=header["model_version"],
        outputs=outputs,
        id=header.get("id"),
    )


def v2_infer(
    name: str,
    inputs: Mapping[str, npt.ArrayLike],
    outputs: Sequence[str] | None,
    binary: bool,
    version: str | None,
    request_id: str | None,
) -> Call[InferResult]:
    """Inputs by name (their numpy dtype picks the datatype); with ``binary`` the tensors
    travel as raw bytes both ways (Triton's binary tensor data extension), else as JSON."""
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for input_name, value in inputs.items():
        array = np.asarray(value)
        # Big-endian arrays too: the datatype is the value's, the bytes are sent little-endian.
        datatype = V2_DATATYPES.get(array.dtype.newbyteorder("="))
        if datatype is None:
            raise TypeError(f"input {input_name!r}: dtype {array.dtype} has no V2 datatype")
        tensor: dict[str, Any] = {
            "name": input_name,
            "datatype": datatype,
            "shape": list(array.shape),
        }
        if binary:
            raw = np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = array.reshape(-1).tolist()
        tensors.append(tensor)
    request: dict[str, Any] = {"inputs": tensors}
    if request_id is not None:
        request["id"] = request_id
    if outputs is not None:
        request["outputs"] = [{"name": o, "parameters": {"binary_data": binary}} for o in outputs]
    else:
        request["parameters"] = {"binary_data_output": binary}
    head = json.dumps(request).encode()
    headers = {"Content-Type": "application/json"}
    if binary:
        headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
    return Call(
        "POST",
        _model_path(name, version) + "/infer",
        _read_infer,
        content=head + b"".join(chunks),
        headers=headers,
    )
