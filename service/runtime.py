"""ONNX Runtime sessions and the model repository loader.

The one place that touches ``onnxruntime``. Layout and config.json schema:
models/repository/README.md. A version holds one graph (top-level ``file``/``sha256``/
``inputs``/``outputs``, served under the name ``DEFAULT_GRAPH``) or several named graphs
(``graphs``); every graph of a version is verified, checked and warmed before it serves.
"""

from __future__ import annotations

import enum
import hashlib
import importlib.util
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.batching import Batcher, Disconnected, Feed, Normalization, Reservation
from service.decoding import AttentionDecoder, DecodeConfigError, Decoder, build_decoder
from service.errors import ModelLoadError
from service.imaging import PadMode, ResizeMode
from service.metrics import Metrics
from service.settings import Settings

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
# The config.json layout this service reads (models/repository/README.md); a version
# written in another layout is refused at load rather than misread.
CONFIG_FORMAT = 1
# The name a single-graph version's graph is served under (LoadedModel.sessions key).
DEFAULT_GRAPH = "model"
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
# Read the model file in 1 MiB blocks when hashing: large enough to be fast, small enough
# not to hold a whole graph's bytes twice.
HASH_BLOCK_BYTES = 1 << 20

# KServe V2 datatypes (config.json) -> ONNX Runtime's type strings and numpy dtypes.
ORT_TYPES = {
    "BOOL": "tensor(bool)",
    "UINT8": "tensor(uint8)",
    "INT8": "tensor(int8)",
    "INT32": "tensor(int32)",
    "INT64": "tensor(int64)",
    "FP16": "tensor(float16)",
    "FP32": "tensor(float)",
    "FP64": "tensor(double)",
}
NUMPY_TYPES: dict[str, type[np.generic]] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "INT8": np.int8,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


class TensorSpec(BaseModel):
    """A graph input or output as config.json declares it; ``-1`` is a dynamic axis."""

    model_config = ConfigDict(extra="allow")

    name: str
    datatype: str
    shape: list[int]


class PreprocessConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    height: int = Field(ge=1)
    width: int = Field(ge=1)
    resize: ResizeMode
    pad_value: tuple[int, int, int]
    # Older versions' config.json has no "pad": their bars are pad_value.
    pad: PadMode = "constant"
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    color: Literal["RGB"] = "RGB"
    layout: Literal["NCHW"] = "NCHW"


class GraphConfig(BaseModel):
    """One ONNX graph of a version: its file, digest and signature."""

    model_config = ConfigDict(extra="allow")

    file: str
    sha256: str
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)


class ModelConfig(BaseModel):
    """A version's config.json: one graph (``file``/``sha256``/``inputs``/``outputs`` at the
    top level) or several named ones (``graphs``), never both."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    format: int
    name: str
    version: str
    task: str
    file: str | None = None
    sha256: str | None = None
    inputs: list[TensorSpec] = Field(default_factory=list)
    outputs: list[TensorSpec] = Field(default_factory=list)
    graphs: dict[str, GraphConfig] | None = None
    preprocess: PreprocessConfig
    labels: list[str]
    decode: dict[str, Any]
    metrics: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_layout(self) -> ModelConfig:
        top_level = [
            key
            for key, value in (
                ("file", self.file),
                ("sha256", self.sha256),
                ("inputs", self.inputs),
                ("outputs", self.outputs),
            )
            if value
        ]
        if self.graphs is None:
            missing = {"file", "sha256", "inputs", "outputs"} - set(top_level)
            if missing:
                raise ValueError(f"a single-graph config needs {sorted(missing)}")
        else:
            if not self.graphs:
                raise ValueError("graphs is empty")
            if top_level:
                raise ValueError(f"graphs and top-level {top_level} are exclusive")
        return self

    def graph_configs(self) -> dict[str, GraphConfig]:
        """Every graph of the version by name; a single-graph version's is DEFAULT_GRAPH."""
        if self.graphs is not None:
            return dict(self.graphs)
        assert self.file is not None and self.sha256 is not None  # the validator saw to it
        graph = GraphConfig(
            file=self.file, sha256=self.sha256, inputs=self.inputs, outputs=self.outputs
        )
        return {DEFAULT_GRAPH: graph}

    def all_outputs(self) -> list[TensorSpec]:
        """The outputs of every graph, in graph order."""
        return [spec for graph in self.graph_configs().values() for spec in graph.outputs]


class ModelState(enum.StrEnum):
    READY = "ready"
    FAILED = "failed"


# Device nodes of an NVIDIA driver's GPUs (/dev/nvidia0, ...) and WSL2's GPU bridge
# (/dev/dxg). onnxruntime-gpu lists CUDA whether or not a GPU is there, then logs errors
# and falls back to the CPU for every session; with none of these nodes ``auto`` does not
# try CUDA at all.
GPU_DEVICE_PATTERNS = ("nvidia[0-9]*", "dxg")


def gpu_visible(dev: Path = Path("/dev")) -> bool:
    """Whether an NVIDIA GPU (or WSL2's GPU bridge) is visible to this process."""
    return any(next(dev.glob(pattern), None) is not None for pattern in GPU_DEVICE_PATTERNS)


def wants_cuda(choice: str, gpu: bool) -> bool:
    """Whether ``providers=choice`` asks for CUDA: ``cuda`` always, ``auto`` when a GPU is
    visible (``gpu``, see ``gpu_visible``), ``cpu`` never."""
    return choice == "cuda" or (choice == "auto" and gpu)


def resolve_providers(choice: str, available: Sequence[str], gpu: bool = True) -> list[str]:
    """Execution providers to request for ``auto|cuda|cpu``, best first; ``gpu``: whether
    a GPU is visible (``gpu_visible``), which ``auto`` needs before it tries CUDA.

    ``cuda`` keeps CPU after CUDA so that operators CUDA lacks still run; whether CUDA
    really came up is checked on the session (see OnnxSession).
    """
    if choice == "cuda" and CUDA_PROVIDER not in available:
        raise ModelLoadError(f"providers=cuda but this onnxruntime offers only {list(available)}")
    if wants_cuda(choice, gpu) and CUDA_PROVIDER in available:
        return [CUDA_PROVIDER, CPU_PROVIDER]
    return [CPU_PROVIDER]


def preload_cuda_libraries() -> bool:
    """Load CUDA and cuDNN from the ``nvidia-*`` wheels (``onnxruntime-gpu[cuda,cudnn]``, the
    GPU image) so the CUDA provider finds them without LD_LIBRARY_PATH; a no-op, returning
    False, on a CPU build or where those wheels are not installed (a CUDA base image)."""
    if CUDA_PROVIDER not in ort.get_available_providers():
        return False
    if importlib.util.find_spec("nvidia") is None or not hasattr(ort, "preload_dlls"):
        return False
    ort.preload_dlls(directory="")
    return True


GRAPH_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(settings: Settings) -> ort.SessionOptions:
    """Thread counts from settings (the CPUs this process may use, not ORT's host-core
    default), graph optimisation level, memory arena and pattern, intra-op spinning."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.resolved_intra_op_threads()
    options.inter_op_num_threads = settings.inter_op_threads
    options.graph_optimization_level = GRAPH_OPTIMIZATION[settings.graph_optimization]
    options.enable_cpu_mem_arena = settings.cpu_mem_arena
    options.enable_mem_pattern = settings.mem_pattern
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if settings.intra_op_spinning else "0"
    )
    return options


def provider_options(settings: Settings, providers: Sequence[str]) -> list[dict[str, str]]:
    """Options for each provider of ``providers`` (same order), as InferenceSession takes
    them: CUDA gets its device, cuDNN convolution search, arena growth and memory cap."""
    options: list[dict[str, str]] = []
    for provider in providers:
        if provider == CUDA_PROVIDER:
            cuda = {
                "device_id": str(settings.cuda_device_id),
                "cudnn_conv_algo_search": settings.cudnn_conv_algo_search,
                "arena_extend_strategy": settings.cuda_arena_extend_strategy,
                # Copies on the compute stream: no race between the input copy and the run.
                "do_copy_in_default_stream": "1",
            }
            if settings.gpu_mem_limit_mb is not None:
                cuda["gpu_mem_limit"] = str(settings.gpu_mem_limit_mb * 1024 * 1024)
            options.append(cuda)
        else:
            options.append({})
    return options


class UnpaddableOutputError(RuntimeError):
    """A padded run's output whose first axis is not the batch (``OnnxSession.pad_batch_to``):
    the padding rows cannot be told from the request's. ``load_model`` makes it a load
    failure; after load (an output whose length depends on the data) it is a server fault."""


class OnnxSession:
    """An ``InferenceSession`` plus the providers it really uses.

    ``run`` is thread-safe and releases the GIL; call it from a worker thread.
    """

    def __init__(self, model: Path | bytes, settings: Settings) -> None:
        requested = resolve_providers(
            settings.providers, ort.get_available_providers(), gpu_visible()
        )
        source = str(model) if isinstance(model, Path) else model
        try:
            self._session = ort.InferenceSession(
                source,
                sess_options=session_options(settings),
                providers=requested,
                provider_options=provider_options(settings, requested),
            )
        except Exception as exc:  # ORT raises its own pybind types for bad graphs
            raise ModelLoadError(f"onnxruntime could not load the graph: {exc}") from exc
        # Only the session knows: ORT silently drops a provider whose libraries fail to load.
        self.providers: list[str] = list(self._session.get_providers())
        if CUDA_PROVIDER in requested and CUDA_PROVIDER not in self.providers:
            message = (
                f"CUDA was requested but the session runs on {self.providers}; the CUDA "
                "provider failed to initialise (no GPU, or CUDA/cuDNN libraries missing)"
            )
            if settings.providers == "cuda":
                raise ModelLoadError(message)
            logger.warning("%s; serving on CPU, expect much slower inference", message)
        # On CUDA, I/O binding copies each (batched) input to the device once and lets ORT
        # allocate outputs where they are produced; on CPU it only adds bookkeeping.
        self.io_binding = settings.io_binding == "on" or (
            settings.io_binding == "auto" and CUDA_PROVIDER in self.providers
        )
        self._device = (
            ("cuda", settings.cuda_device_id) if CUDA_PROVIDER in self.providers else ("cpu", 0)
        )
        # Rows every run is padded to (``Settings.cuda_fixed_batch``), set by ``load_model``
        # for a batchable graph on CUDA; None runs each batch at its own size.
        self.pad_batch_to: int | None = None

    @property
    def inputs(self) -> list[Any]:
        """ORT NodeArgs (name, shape, type) of the graph inputs."""
        return list(self._session.get_inputs())

    @property
    def outputs(self) -> list[Any]:
        """ORT NodeArgs (name, shape, type) of the graph outputs."""
        return list(self._session.get_outputs())

    def run(
        self, feeds: Mapping[str, npt.NDArray[Any]], output_names: Sequence[str] | None = None
    ) -> dict[str, npt.NDArray[Any]]:
        """Run the graph; returns the outputs by name. With ``pad_batch_to`` set, the graph
        only ever sees that many rows: a smaller batch is padded with zero rows, a larger one
        runs in chunks of that size, and the outputs keep only the rows sent."""
        names = list(output_names) if output_names else [arg.name for arg in self.outputs]
        size = self.pad_batch_to
        rows = next(iter(feeds.values())).shape[0] if size is not None and feeds else 0
        if size is None or rows == 0:
            return self._run_once(feeds, names)
        parts = []
        for start in range(0, rows, size):
            taken = min(size, rows - start)
            chunk = {
                name: pad_rows(array[start : start + size], size) for name, array in feeds.items()
            }
            outputs = self._run_once(chunk, names)
            for name, array in outputs.items():
                if array.shape[:1] != (size,):
                    # Warm-up runs at the padded size first (one chunk, checked like any
                    # other), so such a graph fails at load, not per request.
                    raise UnpaddableOutputError(
                        f"output {name!r} has shape {list(array.shape)} for a padded batch of "
                        f"{size}: its first axis is not the batch"
                    )
            parts.append({name: array[:taken] for name, array in outputs.items()})
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([part[name] for part in parts]) for name in names}

    def _run_once(
        self, feeds: Mapping[str, npt.NDArray[Any]], names: Sequence[str]
    ) -> dict[str, npt.NDArray[Any]]:
        if self.io_binding:
            return self._run_bound(feeds, names)
        return dict(zip(names, self._session.run(names, dict(feeds)), strict=True))

    def _run_bound(
        self, feeds: Mapping[str, npt.NDArray[Any]], names: Sequence[str]
    ) -> dict[str, npt.NDArray[Any]]:
        """Run with I/O binding: inputs copied to the session's device in one go, outputs
        allocated there by ORT and copied back once."""
        binding = self._session.io_binding()
        device, device_id = self._device
        for name, array in feeds.items():
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), device, device_id)
            binding.bind_ortvalue_input(name, value)
        for name in names:
            binding.bind_output(name, device, device_id)
        self._session.run_with_iobinding(binding)
        results = binding.copy_outputs_to_cpu()
        return dict(zip(names, results, strict=True))


@dataclass
class LoadedModel:
    """One configured model: ready (with sessions and decoder) or failed (with the reason).

    ``sessions`` holds every graph of the version by name (a single-graph version's under
    DEFAULT_GRAPH); ``session`` is that single graph, None for a multi-graph version.
    """

    name: str
    state: ModelState
    version: str | None = None
    path: Path | None = None
    config: ModelConfig | None = None
    session: OnnxSession | None = None
    decoder: Decoder | None = None
    error: str | None = None
    load_seconds: float | None = None
    sessions: dict[str, OnnxSession] = field(default_factory=dict)
    # One dynamic batcher per graph, same keys as sessions (service/batching.py).
    batchers: dict[str, Batcher] = field(default_factory=dict)

    @property
    def providers(self) -> list[str]:
        """Providers in use by any of the model's sessions, best first, without repeats."""
        sessions = list(self.sessions.values()) or ([self.session] if self.session else [])
        return list(dict.fromkeys(p for s in sessions for p in s.providers))

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    def graph(self, name: str | None = None) -> OnnxSession:
        """The session of graph ``name`` (None: the single graph); only valid when ready."""
        if name is None and self.session is not None:
            return self.session
        session = self.sessions.get(name or DEFAULT_GRAPH)
        if session is None:
            raise RuntimeError(
                f"model {self.name!r} has no loaded graph {name!r}; it has {sorted(self.sessions)}"
            )
        return session

    def run(
        self, feeds: Mapping[str, npt.NDArray[Any]], graph: str | None = None
    ) -> dict[str, npt.NDArray[Any]]:
        """Run one graph (``graph`` name; None for a single-graph model); only when ready.
        Blocking and unbatched: request handlers use ``infer``."""
        if not self.sessions and self.session is None:
            raise RuntimeError(f"model {self.name!r} is not loaded")
        return self.graph(graph).run(feeds)

    def batcher(self, graph: str | None = None) -> Batcher:
        """The dynamic batcher of graph ``graph`` (None: the single graph); only when ready."""
        found = self.batchers.get(graph or DEFAULT_GRAPH)
        if found is None:
            raise RuntimeError(
                f"model {self.name!r} has no batcher for graph {graph!r}; "
                f"it has {sorted(self.batchers)}"
            )
        return found

    async def infer(
        self,
        feeds: Mapping[str, Feed],
        graph: str | None = None,
        *,
        reservation: Reservation | None = None,
        disconnected: Disconnected | None = None,
    ) -> dict[str, npt.NDArray[Any]]:
        """Run one graph on ``feeds`` (batch axis first; ``ImageRows`` for uint8 images)
        batched with concurrent requests, off the event loop; returns this request's rows
        of every output. 503 (Overloaded) when the graph's queue is full; pass
        ``request.is_disconnected`` as ``disconnected`` so a departed client is dropped."""
        return await self.batcher(graph).infer(
            feeds, reservation=reservation, disconnected=disconnected
        )


@dataclass
class ModelRegistry:
    """The models this process serves, by name, and any repository-wide problem."""

    models: dict[str, LoadedModel] = field(default_factory=dict)
    problem: str | None = None

    @property
    def ready(self) -> bool:
        """Every configured model loaded and warmed, and at least one configured."""
        return (
            self.problem is None
            and bool(self.models)
            and all(model.ready for model in self.models.values())
        )

    def get(self, name: str) -> LoadedModel | None:
        return self.models.get(name)


# An absolute path in a message: a slash not preceded by a word, dot or colon, then segments.
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s/'\"]+/)+[^\s/'\":,;)]*")


def public_reason(message: str, repository: Path) -> str:
    """A failure as clients may read it (health, /models, 503 details): paths inside the
    model repository relative to it, any other absolute path cut to its file name, so no
    answer shows the server's file layout."""
    for root in dict.fromkeys((str(repository), str(repository.resolve()))):
        message = message.replace(root.rstrip("/") + "/", "").replace(root, "the repository")
    return ABSOLUTE_PATH.sub(lambda match: match.group(0).rstrip("/").rsplit("/", 1)[-1], message)


def discover_models(settings: Settings) -> tuple[list[str], str | None]:
    """Names to load (``settings.models`` or every directory found) and a repository-wide
    problem, if any."""
    root = settings.model_repository
    if not root.is_dir():
        logger.error("model repository %s is not a directory", root)
        return list(settings.models or []), "the model repository is not a directory"
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    names = list(settings.models) if settings.models is not None else found
    if not names:
        logger.error("no models found in %s", root)
        return [], "no models found in the model repository"
    return names, None


def select_version(model_dir: Path, pinned: str | None) -> Path:
    """The version directory to serve: ``pinned``, else the highest integer version."""
    if not model_dir.is_dir():
        raise ModelLoadError(f"no directory {model_dir} in the model repository")
    versions = sorted(
        (int(p.name), p) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()
    )
    if not versions:
        raise ModelLoadError(f"{model_dir} has no integer version directories")
    if pinned is None:
        return versions[-1][1]
    for number, path in versions:
        if str(number) == pinned.strip() or path.name == pinned:
            return path
    available = [path.name for _, path in versions]
    raise ModelLoadError(f"pinned version {pinned!r} not found; available: {available}")


def read_config(version_dir: Path) -> ModelConfig:
    """Parse and validate ``config.json``."""
    path = version_dir / CONFIG_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        config = ModelConfig.model_validate(raw)
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{path} is missing") from exc
    except (OSError, ValueError, ValidationError) as exc:
        raise ModelLoadError(f"{path} is not a valid config: {exc}") from exc
    if config.format != CONFIG_FORMAT:
        raise ModelLoadError(f"{path}: format {config.format} is not supported (want 1)")
    for graph in config.graph_configs().values():
        for spec in (*graph.inputs, *graph.outputs):
            if spec.datatype not in ORT_TYPES:
                raise ModelLoadError(f"{path}: datatype {spec.datatype!r} of {spec.name!r} unknown")
    return config


def verify_sha256(path: Path, expected: str) -> None:
    """Refuse a graph file whose digest is not the one config.json records."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while block := handle.read(HASH_BLOCK_BYTES):
                digest.update(block)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if digest.hexdigest() != expected.lower():
        raise ModelLoadError(
            f"sha256 of {path.name} is {digest.hexdigest()}, config.json says {expected}"
        )


def _dims_agree(declared: Sequence[int], actual: Sequence[Any]) -> bool:
    if len(declared) != len(actual):
        return False
    for want, got in zip(declared, actual, strict=True):
        # ORT reports symbolic or unknown axes as str/None: they accept any declared size.
        if isinstance(got, int) and got != want:
            return False
    return True


def check_signature(config: GraphConfig | ModelConfig, session: OnnxSession) -> None:
    """Names, datatypes and shapes of the session's inputs/outputs must match config.json."""
    for kind, declared, actual in (
        ("input", config.inputs, session.inputs),
        ("output", config.outputs, session.outputs),
    ):
        by_name = {arg.name: arg for arg in actual}
        if kind == "input" and set(by_name) != {spec.name for spec in declared}:
            raise ModelLoadError(
                f"graph inputs {sorted(by_name)} differ from config inputs "
                f"{sorted(spec.name for spec in declared)}"
            )
        for spec in declared:
            arg = by_name.get(spec.name)
            if arg is None:
                raise ModelLoadError(f"graph has no {kind} {spec.name!r}; it has {sorted(by_name)}")
            if arg.type != ORT_TYPES[spec.datatype]:
                raise ModelLoadError(
                    f"{kind} {spec.name!r} is {arg.type} in the graph, {spec.datatype} in config"
                )
            if not _dims_agree(spec.shape, arg.shape):
                raise ModelLoadError(
                    f"{kind} {spec.name!r} has shape {arg.shape} in the graph, "
                    f"{spec.shape} in config"
                )


def warm_up(
    config: GraphConfig | ModelConfig,
    session: OnnxSession,
    runs: int,
    batch_sizes: Sequence[int] = (1,),
) -> None:
    """Run zero batches at each batch size (other dynamic axes = 1) so allocation and, on
    CUDA, cuDNN's per-shape kernel choice happen now, not in a user's request."""
    for size in batch_sizes:
        feeds = {
            spec.name: np.zeros(
                [
                    (size if axis == 0 else 1) if dim < 0 else dim
                    for axis, dim in enumerate(spec.shape)
                ],
                NUMPY_TYPES[spec.datatype],
            )
            for spec in config.inputs
        }
        for _ in range(runs):
            session.run(feeds)


def pad_rows(array: npt.NDArray[Any], rows: int) -> npt.NDArray[Any]:
    """``array`` (N, ...) with zero rows appended up to ``rows`` (>= N), same dtype; the
    array itself when it has ``rows`` already."""
    if array.shape[0] == rows:
        return array
    padded = np.zeros((rows, *array.shape[1:]), array.dtype)
    padded[: array.shape[0]] = array
    return padded


def batchable(config: GraphConfig) -> bool:
    """Whether requests can share a run: every input and output has a dynamic first axis."""
    return all(spec.shape and spec.shape[0] < 0 for spec in (*config.inputs, *config.outputs))


def warmup_batch_sizes(settings: Settings, session: OnnxSession, max_size: int) -> list[int]:
    """The batch sizes to warm: the setting, else on CUDA the one padded size or, unpadded,
    every size up to ``max_size`` (cuDNN tunes per shape), and 1 and ``max_size`` on CPU
    (arena sized for the largest)."""
    if settings.warmup_batch_sizes is not None:
        return sorted({size for size in settings.warmup_batch_sizes if size >= 1})
    if session.pad_batch_to is not None:
        return [session.pad_batch_to]
    if CUDA_PROVIDER in session.providers:
        return list(range(1, max_size + 1))
    return sorted({1, max_size})


def check_graph_roles(config: ModelConfig, decoder: Decoder) -> None:
    """An attention model's decode block names its features and perception graphs and the
    perception graph's two inputs, and its masks assume a letterboxed input; refuse the
    version at load (not on the first request) when the config does not match."""
    if not isinstance(decoder, AttentionDecoder):
        return
    graphs = config.graph_configs()
    names = decoder.config
    for role in (names.features_graph, names.perception_graph):
        if role not in graphs:
            raise ModelLoadError(
                f"decode names graph {role!r}, which config.json does not have "
                f"(it has {sorted(graphs)})"
            )
    if next(iter(graphs)) != names.features_graph:
        # The first graph is the one that takes the image: /models lists its inputs, and
        # V2 serves it under the model's own name.
        raise ModelLoadError(
            f"config.json must list the features graph {names.features_graph!r} first in "
            f"graphs (it lists {list(graphs)})"
        )
    inputs = {spec.name for spec in graphs[names.perception_graph].inputs}
    missing = sorted({names.feature_map, names.attention_map} - inputs)
    if missing:
        raise ModelLoadError(
            f"graph {names.perception_graph!r} lacks the inputs {missing} (it has {sorted(inputs)})"
        )
    if config.preprocess.resize != "letterbox":
        # Edited masks are mapped onto the letterboxed input (service.attention.mask_to_grid).
        raise ModelLoadError(
            f"an attention model needs preprocess resize 'letterbox', not "
            f"{config.preprocess.resize!r}: edited masks are mapped onto the letterboxed input"
        )


def load_model(name: str, settings: Settings, metrics: Metrics | None = None) -> LoadedModel:
    """Load, verify and warm one model, with a batcher per graph reporting to ``metrics``;
    never raises: failures come back with their reason."""
    started = time.perf_counter()
    # A pinned version that cannot be found is still the version that failed (metrics
    # label its series with it, /models shows it).
    pinned = settings.model_versions.get(name)
    model = LoadedModel(
        name=name, state=ModelState.FAILED, version=pinned.strip() if pinned else None
    )
    try:
        version_dir = select_version(settings.model_repository / name, pinned)
        model.version, model.path = version_dir.name, version_dir
        config = read_config(version_dir)
        model.config = config
        if (config.name, config.version) != (name, version_dir.name):
            raise ModelLoadError(
                f"config.json names {config.name}/{config.version} but lives in "
                f"{name}/{version_dir.name}"
            )
        try:
            decoder = build_decoder(
                config.task,
                config.decode,
                config.labels,
                {spec.name: spec.shape for spec in config.all_outputs()},
            )
        except DecodeConfigError as exc:
            raise ModelLoadError(str(exc)) from exc
        check_graph_roles(config, decoder)
        sessions: dict[str, OnnxSession] = {}
        batchers: dict[str, Batcher] = {}
        pre = config.preprocess
        normalization = Normalization.of(pre.scale, pre.mean, pre.std)
        for graph_name, graph_config in config.graph_configs().items():
            try:
                graph = version_dir / graph_config.file
                verify_sha256(graph, graph_config.sha256)
                session = OnnxSession(graph, settings)
                check_signature(graph_config, session)
                policy = settings.batch_policy(name, None if config.graphs is None else graph_name)
                can_batch = batchable(graph_config)
                if can_batch and settings.cuda_fixed_batch and CUDA_PROVIDER in session.providers:
                    session.pad_batch_to = policy.max_size
                sizes = warmup_batch_sizes(settings, session, policy.max_size if can_batch else 1)
                warm_up(graph_config, session, settings.warmup_runs, sizes)
                if session.pad_batch_to is not None and (settings.warmup_runs < 1 or not sizes):
                    # A padded run checks that the outputs are batch-first: one, warm-up or
                    # not, so a graph whose outputs are not fails here, not in requests.
                    warm_up(graph_config, session, 1, [session.pad_batch_to])
            except UnpaddableOutputError as exc:
                reason = f"{exc}; padding cannot be undone: set VISION_CUDA_FIXED_BATCH=false"
                if config.graphs is not None:
                    reason = f"graph {graph_name!r}: {reason}"
                raise ModelLoadError(reason) from exc
            except ModelLoadError as exc:
                if config.graphs is None:
                    raise
                raise ModelLoadError(f"graph {graph_name!r}: {exc}") from exc
            sessions[graph_name] = session
            batchers[graph_name] = Batcher(
                runner=session,
                policy=policy,
                model=name,
                version=version_dir.name,
                graph=graph_name,
                batchable=can_batch,
                normalization=normalization,
                metrics=metrics,
            )
    except ModelLoadError as exc:
        model.error = public_reason(str(exc), settings.model_repository)
    except Exception as exc:  # a broken model must never take the others down with it
        logger.exception("unexpected failure loading model %r", name)
        reason = f"unexpected {type(exc).__name__}: {exc}"
        model.error = public_reason(reason, settings.model_repository)
    else:
        model.sessions, model.decoder, model.state = sessions, decoder, ModelState.READY
        model.batchers = batchers
        if config.graphs is None:
            model.session = sessions[DEFAULT_GRAPH]
    model.load_seconds = time.perf_counter() - started
    if model.ready:
        logger.info(
            "model %s/%s ready on %s in %.2fs",
            name,
            model.version,
            model.providers,
            model.load_seconds,
        )
    else:
        logger.error("model %s failed to load: %s", name, model.error)
    return model
