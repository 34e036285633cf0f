"""Service configuration: one settings class, read from ``VISION_*`` environment variables."""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# VISION_* names that are read elsewhere, not settings: the test suite's skip guard
# (tests/strict_skips.py). Kubernetes' service links (VISION_SERVICE_HOST, VISION_PORT...
# for a Service named "vision") are switched off in deploy/kubernetes (enableServiceLinks).
NOT_SETTINGS = frozenset({"VISION_TESTS_FAIL_ON_SKIP"})
# Resolved from this file, not the cwd, so `uvicorn --factory` works from any directory.
DEFAULT_MODEL_REPOSITORY = Path(__file__).resolve().parent.parent / "models" / "repository"
# Teacher records of the attention editor (SQLite); var/ is git-ignored.
DEFAULT_FEEDBACK_DB = Path(__file__).resolve().parent.parent / "var" / "feedback.sqlite3"
# An editing session re-sends one image with many masks; 64 feature maps of the attention
# model are ~3 MB and cover many concurrent sessions.
DEFAULT_FEATURE_CACHE_SIZE = 64

# 20 MiB holds any sensible photo (a 24 MP JPEG is ~10 MiB) while keeping a single upload
# far below what would hurt a small container's memory.
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
# 40 MP is above any phone camera; decoded RGB that is 120 MB, about the most one request
# should be allowed to allocate.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
# Pillow's decoders and our resize allocate per row/column; a 1 x 40M strip passes the pixel
# limit but is no real photo, so the longest side is capped as well.
DEFAULT_MAX_IMAGE_SIDE = 16_384
# Uploads this large stay in memory while the form is parsed: a 12 MP phone photo is 2-5 MB
# as a JPEG. Spooling them to disk instead (Starlette's 1 MiB) costs a thread trip per 64 KiB
# (service/limits.py, configure_uploads). Each upload being received may hold this much, so
# not the whole upload limit.
DEFAULT_UPLOAD_SPOOL_BYTES = 4 * 1024 * 1024
# Request bodies (uploads, V2 JSON) in flight at once, by their declared length: each is
# held while it is received and handled (a form's file part up to UPLOAD_SPOOL_BYTES in
# memory and the rest in the temporary directory, a tmpfs in the container; a V2 JSON body
# whole). 256 MiB is an eighth of the compose file's 2 GiB: 12 uploads at the 20 MiB
# limit, or about 87 phone photos of 3 MB, at once. On a busy server the graphs' queues
# (16 requests each) refuse first, cheaply, for the endpoint that is busy.
DEFAULT_MAX_BODY_BYTES_IN_FLIGHT = 256 * 1024 * 1024
# Longest wait for the next piece of a request body (s) before 408 and the connection
# closed. uvicorn has no such limit: a client that stops sending mid-upload holds its
# buffered body and its share of MAX_BODY_BYTES_IN_FLIGHT for as long as it keeps the socket
# open. nginx's client_body_timeout is 60 s; 30 s is still ages on any network that can
# send a photo at all.
DEFAULT_BODY_TIMEOUT_S = 30.0
# Longest time (s) from a connection's start, or from a later request's first byte, to the
# end of that request's headers; then the connection is closed (408 if part of a head came). uvicorn
# has none: a connection that never sends a request, or sends its head a byte at a time
# (slowloris), is held as long as the client likes. A head fits in one packet, so 10 s is
# generous. Idle time between requests is bounded by the entry command's KEEP_ALIVE_S (5 s).
DEFAULT_HEADER_TIMEOUT_S = 10.0
# Longest time (s) a client may acknowledge nothing the server sent it (or open no window
# for it); then the kernel drops the connection (TCP_USER_TIMEOUT). uvicorn waits for ever:
# a client that sends small requests for large answers and reads nothing pinned each answer
# (12 MB for a 10 kB V2 request) and, with a request pipelined behind it, that one's body
# reservation, past every other timeout. As long as BODY_TIMEOUT_S, its counterpart for
# what comes in.
DEFAULT_SEND_TIMEOUT_S = 30.0
# The kernel takes TCP_USER_TIMEOUT in milliseconds as a C int: no longer than this. (A
# value under a millisecond would round to 0, which turns it off.)
MAX_SEND_TIMEOUT_S = (2**31 - 1) // 1000
# Most bytes of one request head (request line and headers). uvicorn's httptools parser has
# no limit, and it joins a long header by copying it again for every piece: one client could
# send a gigabyte of header within the header timeout. nginx takes 4 x 8 KiB by default and
# h11 16 KiB; 64 KiB leaves room for large cookies and tokens.
DEFAULT_MAX_HEADER_BYTES = 64 * 1024

CGROUP_ROOT = Path("/sys/fs/cgroup")

# 16 images of a small CNN fill the CPU's vector units and a GPU's first wave; beyond it
# latency grows with no throughput gain on CPU.
DEFAULT_BATCH_MAX_SIZE = 16
# A queued request waits at most this long (ms) for requests still being decoded.
DEFAULT_BATCH_MAX_DELAY_MS = 2.0
# Batches of one graph that may run at once. Two keep the CPUs busy: while one batch is in
# ONNX Runtime the next is assembled and starts as soon as a core frees up, instead of the
# decode threads and ORT's intra-op threads taking turns (one batch at a time, the server
# used about 1.5 of 2 CPUs). /recognize at 16 clients, 2 AMD EPYC CPUs, alternating runs:
# 1 -> 247-260, 2 -> 271-280 req/s; 3 was no better (benchmarks/README.md, "Parallel
# batches"). On CUDA one batch's host-side work can overlap the other's run (not measured:
# no GPU here).
DEFAULT_BATCH_PARALLEL = 2
# Queue bound = this many times BATCH_MAX_SIZE (or a graph's own max size, if larger).
# One full batch is enough to keep the model busy (a slot is freed when its batch starts,
# so the next batch decodes while this one runs) and keeps an accepted request's wait under
# overload to about one batch time; a graph with smaller batches (or batching off) keeps
# the same number of requests, so they wait up to queue size / max size runs.
BATCH_QUEUE_FACTOR = 1


class BatchOverride(BaseModel):
    """Batching of one model or graph; unset fields keep the global settings."""

    model_config = ConfigDict(extra="forbid")

    max_size: int | None = Field(default=None, ge=1)
    max_delay_ms: float | None = Field(default=None, ge=0)
    queue_size: int | None = Field(default=None, ge=1)
    parallel: int | None = Field(default=None, ge=1)


@dataclass(frozen=True)
class BatchPolicy:
    """How one graph batches: rows per run, wait for company (s), requests admitted,
    batches running at once."""

    max_size: int
    max_delay_s: float
    queue_size: int
    parallel: int = 1


def _cgroup_cpu_limit(root: Path) -> float | None:
    """CPUs granted by the cgroup CPU quota (v2 ``cpu.max``, else v1 CFS), None if unlimited."""
    try:
        quota_s, period_s = (root / "cpu.max").read_text().split()[:2]
        if quota_s != "max":
            return int(quota_s) / int(period_s)
        return None
    except (OSError, ValueError):
        pass
    for v1_dir in (root / "cpu", root / "cpu,cpuacct"):
        try:
            quota = int((v1_dir / "cpu.cfs_quota_us").read_text())
            period = int((v1_dir / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        if quota > 0 and period > 0:
            return quota / period
        return None
    return None


def available_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may really use: its affinity mask, capped by the cgroup quota.

    ``os.cpu_count()`` reports the host's cores, which inside a container oversubscribes
    the quota and makes ONNX Runtime's thread pool spin against CFS throttling.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    limit = _cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return max(1, cpus)


class Settings(BaseSettings):
    """Every knob of the service; environment variables are ``VISION_<FIELD>`` (JSON for
    lists and dicts, e.g. ``VISION_MODEL_VERSIONS='{"landmark": "1"}'``)."""

    model_config = SettingsConfigDict(env_prefix="VISION_", protected_namespaces=())

    model_repository: Path = DEFAULT_MODEL_REPOSITORY
    # name -> version directory to serve; a model not listed gets its highest integer version.
    model_versions: dict[str, str] = Field(default_factory=dict)
    # Which models to load; None loads every model found in the repository.
    models: list[str] | None = None
    # Which model answers POST /recognize.
    recognize_model: str = "landmark"
    # Which model answers POST /attention and /attention/correct.
    attention_model: str = "attention"
    # Which model answers POST /gender.
    gender_model: str = "gender"
    # Which model answers POST /occlusion and /faces/verify.
    occlusion_model: str = "occlusion"
    # SQLite database of the attention editor's teacher records (WAL, synchronous=FULL),
    # used when feedback_url is unset.
    feedback_db: Path = DEFAULT_FEEDBACK_DB
    # Database URL of the teacher records, overriding feedback_db: sqlite:///<path> (SQLite,
    # one host) or postgresql://user:password@host:port/dbname (shared by every replica).
    feedback_url: SecretStr | None = None
    # The teacher records must go to a database every replica shares (PostgreSQL): a start
    # that would write them to a file of its own (feedback_url unset, blank or sqlite) fails
    # instead. The Kubernetes ConfigMap sets it, where a pod's own file is lost with the pod.
    feedback_require_shared: bool = False
    # Most teacher records the store may hold (all replicas together); a save past it is
    # refused with 507 and stores nothing. None: no limit. A record holds its upload (at
    # most max_upload_bytes) and two small map PNGs, so this also bounds the store's size.
    feedback_max_records: int | None = Field(default=None, ge=1)
    # Feature maps kept per image (LRU by sha256 of the bytes); 0 disables the cache.
    feature_cache_size: int = Field(default=DEFAULT_FEATURE_CACHE_SIZE, ge=0)
    providers: Literal["auto", "cuda", "cpu"] = "auto"
    # None = the CPUs this process may use (see available_cpus).
    intra_op_threads: int | None = Field(default=None, ge=1)
    # One graph runs at a time per request; parallel branches in our small graphs are rare.
    inter_op_threads: int = Field(default=1, ge=1)
    # Threads that decode and resize uploads concurrently; None = available_cpus() - 1, at
    # least 1: the event loop needs a CPU's share too. On 2 CPUs one decode thread kept the
    # 16-client throughput and cut the accepted p99 under a 2x overload by 11-34 % and the
    # 503s' p99 by half (three alternating pairs, benchmarks/README.md "Every endpoint at
    # once"), since two decoders and ORT's threads left the loop too little of the CPUs.
    decode_threads: int | None = Field(default=None, ge=1)
    # JPEGs much larger than a model's input decode at 1/2, 1/4 or 1/8 scale (libjpeg's
    # DCT-domain reduction): a 640x480 photo for a 160x160 input decodes in about a
    # third of the time (benchmarks/results/jpeg_draft.md: no loss of landmark accuracy).
    # False = full decode, then resize only.
    jpeg_draft: bool = True
    max_upload_bytes: int = Field(default=DEFAULT_MAX_UPLOAD_BYTES, ge=1)
    max_image_pixels: int = Field(default=DEFAULT_MAX_IMAGE_PIXELS, ge=1)
    max_image_side: int = Field(default=DEFAULT_MAX_IMAGE_SIDE, ge=1)
    # Uploads up to this many bytes stay in memory while the form is parsed; larger ones are
    # spooled to the temporary directory (process-wide: service/limits.py).
    upload_spool_bytes: int = Field(default=DEFAULT_UPLOAD_SPOOL_BYTES, ge=1)
    # Bytes of request bodies being received or handled at once (each by its declared
    # length, the path's limit when chunked); a request that would pass it is refused
    # without buffering its body: read and dropped, then 503 + Retry-After
    # (service/limits.py, UploadGateMiddleware).
    max_body_bytes_in_flight: int = Field(default=DEFAULT_MAX_BODY_BYTES_IN_FLIGHT, ge=1)
    # Seconds to wait for the next piece of a request body; then 408 and the connection is
    # closed.
    body_timeout_s: float = Field(default=DEFAULT_BODY_TIMEOUT_S, gt=0, allow_inf_nan=False)
    # Seconds a connection gets to deliver a request's headers, from its start or from that
    # request's first byte (service/protocol.py; only the entry command, service.serve).
    header_timeout_s: float = Field(default=DEFAULT_HEADER_TIMEOUT_S, gt=0, allow_inf_nan=False)
    # Seconds a client may acknowledge nothing the server sent it (Linux TCP_USER_TIMEOUT);
    # then the kernel drops the connection (same place).
    send_timeout_s: float = Field(
        default=DEFAULT_SEND_TIMEOUT_S, ge=0.001, le=MAX_SEND_TIMEOUT_S, allow_inf_nan=False
    )
    # Most bytes of a request head; past it 431 and the connection is closed (same place).
    max_header_bytes: int = Field(default=DEFAULT_MAX_HEADER_BYTES, ge=1024)
    # Non-empty: every endpoint needs `X-API-Key` or `Authorization: Bearer`, except health,
    # the API docs and the /ui page and its scripts (static; its API calls carry the key).
    api_keys: list[str] = Field(default_factory=list)
    # Non-empty: reloading a model (POST /models/{name}/reload) needs one of these keys: 401
    # without a key or with one that is no key at all, 403 with one of api_keys. They are
    # valid API keys elsewhere too. Empty: any API key may reload (with none, anyone).
    admin_api_keys: list[str] = Field(default_factory=list)
    # Non-empty: saving a teacher record (save=true on POST /attention/correct) needs one of
    # these keys or an admin key: 401 without a key or with one that is no key at all, 403
    # with another of api_keys. They are valid API keys elsewhere too. Empty: any API key
    # may save (with none, anyone). Each record names the key that saved it (key_id).
    feedback_api_keys: list[str] = Field(default_factory=list)
    # Without API keys: host names (besides IP addresses and localhost) under which a browser
    # page may change something (POST); "*" = any. Other names, in Host or X-Forwarded-Host,
    # are refused 403: a name an attacker re-points at this server (DNS rebinding) looks the
    # same to a browser.
    allowed_hosts: list[str] = Field(default_factory=list)
    # With API keys set, whether GET /metrics needs one too (False: open to a scraper that
    # has no key, e.g. behind a network policy).
    metrics_require_key: bool = True
    # Runs of a zero batch after loading, so the first real request pays no allocation cost.
    warmup_runs: int = Field(default=1, ge=0)
    # Batch sizes every graph is warmed at (each warmup_runs times); None = every size up to
    # the graph's max batch size on CUDA (cuDNN picks kernels per shape), {1, max} on CPU.
    warmup_batch_sizes: list[int] | None = None
    # Dynamic batching (service/batching.py): concurrent requests for one graph run as one
    # batch. False runs every request alone (still through the bounded queue).
    batching: bool = True
    # Most rows (images) one run may hold; a single larger request still runs alone.
    batch_max_size: int = Field(default=DEFAULT_BATCH_MAX_SIZE, ge=1)
    # Longest a queued request waits for others while more are being decoded (ms); with
    # nothing else on its way a request runs at once, so one client pays no delay.
    batch_max_delay_ms: float = Field(default=DEFAULT_BATCH_MAX_DELAY_MS, ge=0)
    # Requests admitted per graph (being decoded or queued); beyond it 503 + Retry-After.
    # None = BATCH_QUEUE_FACTOR x batch_max_size.
    batch_queue_size: int | None = Field(default=None, ge=1)
    # Batches of one graph running at once (see DEFAULT_BATCH_PARALLEL).
    batch_parallel: int = Field(default=DEFAULT_BATCH_PARALLEL, ge=1)
    # Per model (``"landmark"``) or graph (``"attention.features"``) overrides, e.g.
    # ``{"landmark": {"max_size": 8, "max_delay_ms": 1, "queue_size": 32, "parallel": 1}}``.
    batch_per_model: dict[str, BatchOverride] = Field(default_factory=dict)
    # ONNX Runtime graph optimisation level.
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    # ORT's CPU memory arena and memory-pattern planning (reuse buffers between runs).
    cpu_mem_arena: bool = True
    mem_pattern: bool = True
    # Intra-op threads spin while waiting for work: a little lower latency on idle cores,
    # but CPU burnt that the decoding threads need; off measured 7-8 instead of 9-12 ms of
    # server CPU per /recognize request on 2 shared cores (benchmarks/run.py).
    intra_op_spinning: bool = False
    # CUDA provider: device, cuDNN convolution search, arena growth, memory cap (MiB).
    cuda_device_id: int = Field(default=0, ge=0)
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = "EXHAUSTIVE"
    cuda_arena_extend_strategy: Literal["kNextPowerOfTwo", "kSameAsRequested"] = "kSameAsRequested"
    gpu_mem_limit_mb: int | None = Field(default=None, ge=1)
    # I/O binding (inputs copied once to the device, outputs bound): auto = on CUDA only.
    io_binding: Literal["auto", "on", "off"] = "auto"
    # On CUDA, every run of a batchable graph is padded to the model's max batch size (a
    # larger one runs in chunks of it), so the graph sees one input shape. ORT's Conv (cuDNN
    # frontend, since ORT 1.20) plans again at every change of input shape, searched sizes
    # or not (microsoft/onnxruntime#23006): on an H200 a landmark batch of varying size took
    # 270-360 ms (EXHAUSTIVE) or 40 ms (HEURISTIC) instead of about 1 ms, and batching on did
    # 30.8 req/s at 16 clients where batching off did 312 (2026-12-04). Padded: 362 req/s;
    # the cost is a lone request's run at 16 rows (1.1 against 0.56 ms on that GPU). Off:
    # each run at its own size.
    cuda_fixed_batch: bool = True
    # A Server-Timing header on every answer (decode-wait, decode, queue, infer, app in ms;
    # service/timing.py), also written in the access line. False hides how long a
    # server's stages take from its clients.
    server_timing: bool = True
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # "json": one JSON object per log line (service/logs.py); "text": human-readable.
    log_format: Literal["text", "json"] = "text"

    @classmethod
    def unknown_environment(cls, environ: Mapping[str, str]) -> dict[str, str | None]:
        """``VISION_*`` names in ``environ`` that are no setting (pydantic-settings ignores
        them, so a typo such as ``VISION_API_KEY`` would leave the API open without a
        word), each with the setting it most resembles, if any."""
        prefix = cls.model_config.get("env_prefix", "")
        known = {prefix.upper() + name.upper() for name in cls.model_fields}
        unknown: dict[str, str | None] = {}
        for name in environ:
            upper = name.upper()
            if upper.startswith(prefix.upper()) and upper not in known | NOT_SETTINGS:
                close = difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.8)
                unknown[name] = close[0] if close else None
        return unknown

    def resolved_intra_op_threads(self) -> int:
        """Intra-op threads for ONNX Runtime sessions."""
        return self.intra_op_threads or available_cpus()

    def resolved_decode_threads(self) -> int:
        """Worker threads allowed to decode images at once."""
        return self.decode_threads or max(1, available_cpus() - 1)

    def valid_api_keys(self) -> list[str]:
        """Every key a request may carry where API keys are required: the plain ones and
        those with a role (admin, feedback), which are valid keys everywhere else too."""
        return [*self.api_keys, *self.admin_api_keys, *self.feedback_api_keys]

    def resolved_feedback_url(self) -> str:
        """Where teacher records go: ``feedback_url`` when set and non-empty, else the
        SQLite file ``feedback_db``."""
        url = self.feedback_url.get_secret_value().strip() if self.feedback_url else ""
        return url or str(self.feedback_db)

    def batch_policy(self, model: str, graph: str | None = None) -> BatchPolicy:
        """Batching of one graph: defaults, then the model's override, then the graph's."""
        max_size = self.batch_max_size
        max_delay_ms = self.batch_max_delay_ms
        queue_size = self.batch_queue_size
        parallel = self.batch_parallel
        for key in (model, f"{model}.{graph}" if graph else None):
            override = self.batch_per_model.get(key) if key else None
            if override is not None:
                max_size = override.max_size or max_size
                max_delay_ms = (
                    override.max_delay_ms if override.max_delay_ms is not None else max_delay_ms
                )
                queue_size = override.queue_size or queue_size
                parallel = override.parallel or parallel
        if not self.batching:
            max_size, max_delay_ms = 1, 0.0
        return BatchPolicy(
            max_size=max_size,
            max_delay_s=max_delay_ms / 1000.0,
            queue_size=queue_size or BATCH_QUEUE_FACTOR * max(max_size, self.batch_max_size),
            parallel=parallel,
        )


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
