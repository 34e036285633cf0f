"""Throughput and latency of the service against the raw ONNX Runtime limit and a naive peer.

    python -m benchmarks.run [--duration 5] [--warmup 1] [--concurrency 1 4 16 64]
        [--rounds 3] [--image-size 640x480] [--providers cpu] [--out benchmarks/results]
        (or: make benchmark)

In one run on this machine (the CPU provider and the threads the service would use, or with
``--providers cuda`` the CUDA provider for the limit, the pipeline and all three servers):

1. the limit: ``InferenceSession.run`` on pre-processed float32 tensors for every graph of
   the served version of every model in the repository, at batch 1, 2, 4, ... 32 (decode
   NOT included), and for the landmark model the same per image plus the measured
   in-process decode + letterbox + normalise of the benchmark JPEG (decode included);
2. the naive peer (benchmarks/naive_app.py: tutorial FastAPI + ORT, decoding on the event
   loop, one run per request);
3. this service (``python -m service.serve``, landmark model only) with batching off and on;

each at concurrency 1, 4, 16 and 64 of POST /recognize with one JPEG, closed loop, over
loopback with benchmarks/loadgen.py (raw asyncio HTTP/1.1, keep-alive); the three servers
run side by side and take turns at each level. Right after the one-client level, two
bounds at one client: the HTTP floor (the naive peer's upload-only route) and the thin
routes (benchmarks/thin_app.py: the service's lone-request work behind one bare handler, in
a worker thread and on the event loop). Where ``wrk`` is installed, the levels the targets
are read at (1 and 16 clients) and the one-client bounds are measured again with it
(benchmarks/wrk.py) after loadgen.py's rows of that level. Then the overload check
(service, batching on: open loop at twice the throughput it reached at concurrency 16) and
concurrency-1 p50 against decode + pre-processing + one run. All of this after the limit is
one round; ``--rounds`` of them run, the servers' order rotated each round, and the
headline is each target figure's median over the rounds (ratios between servers taken
within each round; the limit and the pipeline are measured once, before the rounds), with
the rounds' range and how many met the target.

Writes ``benchmark.json``, ``benchmark.md`` (the tables) and ``benchmark.png`` under
``--out``. Everything runs on the same CPUs as the servers (the load generator too), with
the machine's load average recorded before and after: on a shared machine the figures
move with what else runs.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from benchmarks import wrk
from benchmarks.loadgen import closed_loop, multipart_body, multipart_request, open_loop
from benchmarks.loadgen import run as loadgen_run
from service.batching import Normalization
from service.imaging import decode_image, decode_to_fit, fit_image
from service.runtime import NUMPY_TYPES, OnnxSession, read_config, select_version
from service.settings import Settings, available_cpus
from service.timing import STAGE_ORDER

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
BATCH_SIZES = (1, 2, 4, 8, 16, 32)
# Seconds each batch size of the limit is timed for (at least MIN_RUNS runs).
LIMIT_SECONDS = 0.6
MIN_RUNS = 5
# Seconds a server gets to become ready (loading + warming the model).
START_TIMEOUT_S = 120.0
# The overload check offers this multiple of the throughput reached at OVERLOAD_BASE.
OVERLOAD_FACTOR = 2.0
OVERLOAD_BASE = 16
# The levels the targets are read at (one client; 16 clients), measured a second time with
# wrk where it is installed: a C client takes less of the shared CPUs than loadgen.py.
WRK_LEVELS = (1, 16)
# Seconds to wait after each wrk run. wrk stops with a request in flight on every
# connection (loadgen.py waits for its answers); the server still works through them, and
# at 16 clients those held 16 queue slots while the next run's 16 clients arrived. wrk
# counted 46 of 2125 answers of status >= 400 in one round of 2026-12-03 and 63 of 1299 in
# one of three back-to-back pairs without the pause, none in three with it; the service's
# own counters over four such pairs: 81 answers 503 for a full queue without the pause,
# none with it. 16 requests take under 0.1 s here.
WRK_SETTLE_S = 0.5
# Rounds of every level: one run's figures move by 15-30 % on a shared two-CPU machine
# (benchmarks/README.md, "Every run against the targets"); three give a median and show
# the spread within the run, in about three times the time (some 8 minutes here).
DEFAULT_ROUNDS = 3


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def gpu_name() -> str:
    """The GPU's name and driver as ``nvidia-smi`` reports them, or why not."""
    try:
        return subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"


def provider_title(report: dict[str, Any]) -> str:
    """``CPU``, or ``CUDA (<GPU>)`` for a ``--providers cuda`` run (older reports: CPU)."""
    machine = report["machine"]
    if machine.get("providers") == "cuda":
        return f"CUDA ({machine.get('gpu')})"
    return "CPU"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def nearest_level(rows: list[dict[str, Any]], level: int) -> dict[str, Any]:
    """The row measured at concurrency ``level``, else at the nearest level (the lower on a
    tie); the headline says which level each figure came from."""
    return min(rows, key=lambda r: (abs(r["concurrency"] - level), r["concurrency"]))


def physical_cores() -> int | None:
    """Distinct (package, core) pairs among the CPUs this process's affinity allows (not
    capped by a cgroup quota, as ``available_cpus`` is). ONNX Runtime's default intra-op
    thread count, which the naive peer keeps, is a count of physical cores (the machine's,
    by its source), while the service uses every usable logical CPU: with SMT the two
    differ. None off Linux or where the topology is unreadable."""
    try:
        usable = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return None
    cores = set()
    for cpu in usable:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return None
        cores.add((package, core))
    return len(cores) or None


def code_version() -> str:
    """``git describe --always --dirty`` of this checkout, or "unknown" outside git."""
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def report_start(module: str, argv: list[str] | None) -> dict[str, Any]:
    """The first members of a benchmark script's JSON report: the command as run (``argv``
    given, or this process's), when, the code, and the machine with its load before."""
    return {
        "command": f"python -m benchmarks.{module} "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "started_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "code": code_version(),
        "machine": {"cpu": cpu_model(), "load_before": load_average()},
    }


def report_run_line(report: dict[str, Any]) -> str:
    """The markdown sentences saying when, where and how a ``report_start`` report ran."""
    machine = report["machine"]
    return (
        f"Run {report['started_utc']}, code {report.get('code', 'unknown')}. "
        f"Machine: {machine['cpu']}; load average (1/5/15 min) "
        f"before {machine['load_before']}, after {machine['load_after']}. Command: "
        f"`{report['command']}` ({report['seconds']:.0f} s)."
    )


def write_report(
    report: dict[str, Any],
    out: Path,
    name: str,
    write_markdown: Callable[[dict[str, Any], Path], None],
    started: float,
) -> None:
    """Close a ``report_start`` report (load after, seconds since ``started``, a
    ``time.perf_counter()``) and write ``name``.json and ``name``.md under ``out``."""
    report["machine"]["load_after"] = load_average()
    report["seconds"] = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    write_markdown(report, out / f"{name}.md")


def benchmark_image(size: tuple[int, int], grain: float = 0.0) -> bytes:
    """A real photograph (matplotlib's sample of Grace Hopper, 512x600) as a JPEG of
    ``size`` (quality 90). ``grain``: the standard deviation, in 8-bit levels, of Gaussian
    noise added after resizing (seeded), the fine detail a camera's photo has and an
    upscaled one lacks; it makes the JPEG larger and slower to decode."""
    import matplotlib.cbook

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
        photo = Image.open(handle).convert("RGB").resize(size, Image.Resampling.BILINEAR)
    if grain:
        noise = np.random.default_rng(0).normal(0.0, grain, (size[1], size[0], 3))
        photo = Image.fromarray(np.clip(np.asarray(photo) + noise, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def timed(fn: Callable[[], Any], seconds: float = LIMIT_SECONDS) -> float:
    """Median seconds of one call of ``fn``, over ``seconds`` (at least MIN_RUNS calls)."""
    return timed_with_cpu(fn, seconds)[0]


def timed_with_cpu(fn: Callable[[], Any], seconds: float = LIMIT_SECONDS) -> tuple[float, float]:
    """(median wall seconds of one call of ``fn``, mean CPU seconds of this process per call,
    every thread counted: ONNX Runtime's intra-op pool too), over ``seconds``."""
    fn()  # warm
    times: list[float] = []
    cpu_began = time.process_time()
    deadline = time.perf_counter() + seconds
    while len(times) < MIN_RUNS or time.perf_counter() < deadline:
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times), (time.process_time() - cpu_began) / len(times)


def landmark_version(settings: Settings) -> Path:
    """The landmark version every benchmark measures: the repository's latest (no pin, so
    the limit, the pipeline, the thin route and the servers agree)."""
    return select_version(settings.model_repository / settings.recognize_model, None)


def each_ms(call: Callable[[], object], repeats: int) -> list[float]:
    """Milliseconds of each of ``repeats`` calls of ``call``."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(1000 * (time.perf_counter() - started))
    return times


def measure_limits(settings: Settings) -> list[dict[str, Any]]:
    """Raw session.run on random pre-processed inputs, every graph of every served model."""
    rows = []
    for model_dir in sorted(p for p in settings.model_repository.iterdir() if p.is_dir()):
        try:
            version_dir = select_version(model_dir, None)
            config = read_config(version_dir)
        except Exception as exc:  # a model still being added by someone: say so, go on
            print(f"skipping {model_dir.name}: {exc}", file=sys.stderr)
            continue
        for graph_name, graph in config.graph_configs().items():
            session = OnnxSession(version_dir / graph.file, settings)
            per_size = []
            for size in BATCH_SIZES:
                rng = np.random.default_rng(0)
                feeds = {
                    spec.name: rng.random(
                        [
                            size if axis == 0 else (1 if dim < 0 else dim)
                            for axis, dim in enumerate(spec.shape)
                        ]
                    ).astype(NUMPY_TYPES[spec.datatype])
                    for spec in graph.inputs
                }
                seconds, cpu = timed_with_cpu(
                    lambda feeds=feeds, session=session: session.run(feeds)
                )
                per_size.append(
                    {
                        "batch": size,
                        "ms": seconds * 1000,
                        "images_per_s": size / seconds,
                        "cpu_ms_per_image": cpu * 1000 / size,
                    }
                )
            best = max(per_size, key=lambda row: row["images_per_s"])
            rows.append(
                {
                    "model": config.name,
                    "version": config.version,
                    "graph": graph_name,
                    "batch_1_ms": per_size[0]["ms"],
                    "batch_1_images_per_s": per_size[0]["images_per_s"],
                    "best_batch": best["batch"],
                    "best_images_per_s": best["images_per_s"],
                    "best_ms": best["ms"],
                    "best_cpu_ms_per_image": best["cpu_ms_per_image"],
                    "sizes": per_size,
                }
            )
            print(
                f"limit {config.name}/{config.version} {graph_name}: batch 1 "
                f"{per_size[0]['images_per_s']:.0f} img/s, best batch {best['batch']} "
                f"{best['images_per_s']:.0f} img/s",
                flush=True,
            )
    return rows


def measure_pipeline(image: bytes, settings: Settings, seconds: float = 1.0) -> dict[str, float]:
    """In-process cost of one /recognize image: decode, letterbox + normalise, one run; the
    decode as the service does it (``VISION_JPEG_DRAFT``) and, for reference, in full. Each
    part is the median of back-to-back calls over ``seconds``; ``single_ms`` is the sum of
    the service's three, what the one-client target multiplies by 1.2."""
    version_dir = landmark_version(settings)
    config = read_config(version_dir)
    pre = config.preprocess
    session = OnnxSession(version_dir / config.graph_configs()["model"].file, settings)
    normalization = Normalization.of(pre.scale, pre.mean, pre.std)
    limits = {"max_pixels": settings.max_image_pixels, "max_side": settings.max_image_side}

    def decode(draft: bool) -> tuple[np.ndarray, tuple[int, int]]:
        if draft:
            return decode_to_fit(image, pre.height, pre.width, resize=pre.resize, **limits)
        rgb = decode_image(image, **limits)
        return rgb, (rgb.shape[1], rgb.shape[0])

    def preprocess(decoded: tuple[np.ndarray, tuple[int, int]]) -> np.ndarray:
        rgb, full = decoded
        boxed, _ = fit_image(
            rgb, pre.height, pre.width, pre.pad_value, resize=pre.resize, source_size=full
        )
        out = np.empty((1, 3, pre.height, pre.width), np.float32)
        normalization.into(boxed[np.newaxis], out)
        return out

    service_decoded, full_decoded = decode(settings.jpeg_draft), decode(False)
    tensor = preprocess(service_decoded)
    name = config.graph_configs()["model"].inputs[0].name
    decode_s, decode_cpu_s = timed_with_cpu(lambda: decode(settings.jpeg_draft), seconds)
    preprocess_s, preprocess_cpu_s = timed_with_cpu(lambda: preprocess(service_decoded), seconds)
    parts = {
        "decode_ms": 1000 * decode_s,
        "preprocess_ms": 1000 * preprocess_s,
        "decode_cpu_ms": 1000 * decode_cpu_s,
        "preprocess_cpu_ms": 1000 * preprocess_cpu_s,
        "run_ms": 1000 * timed(lambda: session.run({name: tensor}), seconds),
        "full_decode_ms": 1000 * timed(lambda: decode(False), seconds),
        "full_preprocess_ms": 1000 * timed(lambda: preprocess(full_decoded), seconds),
    }
    parts["single_ms"] = parts["decode_ms"] + parts["preprocess_ms"] + parts["run_ms"]
    return {"jpeg_draft": settings.jpeg_draft, **parts}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextmanager
def server(command: list[str], env: dict[str, str], ready_path: str) -> Iterator[tuple[int, int]]:
    """Start a server subprocess on a free loopback port; stop it (SIGTERM) afterwards."""
    port = free_port()
    full_env = {**os.environ, **env, "HOST": HOST, "PORT": str(port)}
    # The repository first, then whatever the caller's PYTHONPATH holds (packages installed
    # with --target, say), which the servers need as much as this process.
    full_env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
    )
    command = [arg.replace("{port}", str(port)) for arg in command]
    # The server's own log (one warning per 503 under overload) goes to a file, not here.
    # Closed in the finally below, after the server has stopped writing to it.
    log = tempfile.NamedTemporaryFile(  # noqa: SIM115
        prefix="benchmark-server-", suffix=".log", delete=False
    )
    process = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command} exited with {process.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(f"http://{HOST}:{port}{ready_path}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command} not ready after {START_TIMEOUT_S}s")
            time.sleep(0.2)
        yield port, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def stat_cpu_seconds(stat: Path) -> float:
    """User + system CPU seconds from a ``/proc/<pid>/stat`` or ``/proc/<pid>/task/<tid>/stat``
    file (the fields after the parenthesised command name)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    return stat_cpu_seconds(Path(f"/proc/{pid}/stat"))


def load_levels(
    port: int,
    pid: int,
    image: bytes,
    levels: list[int],
    duration: float,
    warmup: float,
    path: str = "/recognize",
) -> list[dict[str, Any]]:
    """Closed-loop levels; also the server's CPU time per answered request (all threads),
    a figure the machine's other load does not inflate the way it does latency."""
    request = multipart_request(HOST, port, path, "image", "photo.jpg", image, "image/jpeg")
    rows = []
    for concurrency in levels:
        cpu_before, client_before = cpu_seconds(pid), time.process_time()
        result = loadgen_run(closed_loop(HOST, port, request, concurrency, duration, warmup))
        cpu = cpu_seconds(pid) - cpu_before
        client_cpu = time.process_time() - client_before
        answered = sum(len(v) for v in result.latencies.values()) * ((duration + warmup) / duration)
        row = {
            "concurrency": concurrency,
            **result.summary(),
            "server_cpu_ms_per_request": 1000 * cpu / answered if answered else float("nan"),
            "client_cpu_ms_per_request": 1000 * client_cpu / answered if answered else float("nan"),
        }
        rows.append(row)
        print(
            f"  c={concurrency:>3}: {row['throughput_rps']:.1f} req/s, p50 {row['p50_ms']:.1f} "
            f"p95 {row['p95_ms']:.1f} p99 {row['p99_ms']:.1f} ms, 503s {row['rejected_503']}, "
            f"other {row['other_status']}, errors {row['errors']}, server CPU "
            f"{row['server_cpu_ms_per_request']:.2f} ms/request",
            flush=True,
        )
    return rows


def wrk_level(
    port: int,
    pid: int,
    image: bytes,
    concurrency: int,
    duration: float,
    warmup: float,
    path: str = "/recognize",
) -> dict[str, Any]:
    """One closed-loop level measured by wrk (``benchmarks/wrk.py``) after an unmeasured
    ``warmup`` run, with the server's CPU time per answer of the measured run."""
    content_type, body = multipart_body("image", "photo.jpg", image, "image/jpeg")
    url = f"http://{HOST}:{port}{path}"
    if warmup >= wrk.MIN_SECONDS:  # a shorter warm-up than wrk can run is left out
        wrk.closed_loop(url, content_type, body, concurrency, warmup)
        time.sleep(WRK_SETTLE_S)
    cpu_before = cpu_seconds(pid)
    row = wrk.closed_loop(url, content_type, body, concurrency, duration)
    cpu = cpu_seconds(pid) - cpu_before
    time.sleep(WRK_SETTLE_S)  # what wrk left in flight must not spill into the next level
    row["server_cpu_ms_per_request"] = (
        1000 * cpu / row["answers"] if row["answers"] else float("nan")
    )
    print(
        f"  wrk c={concurrency:>3}: {row['throughput_rps']:.1f} req/s, p50 {row['p50_ms']:.2f} "
        f"p95 {row['p95_ms']:.2f} p99 {row['p99_ms']:.2f} ms, status >= 400 "
        f"{row['status_400_up']}, errors {row['errors']}",
        flush=True,
    )
    return row


def overload(
    port: int, image: bytes, rate: float, duration: float, warmup: float
) -> dict[str, Any]:
    request = multipart_request(HOST, port, "/recognize", "image", "photo.jpg", image, "image/jpeg")
    result = loadgen_run(open_loop(HOST, port, request, rate, duration, warmup))
    summary = result.summary()
    offered = summary["ok"] + summary["rejected_503"] + summary["other_status"] + summary["errors"]
    return {"offered_rps": rate, "offered": offered, **summary}


def server_commands() -> tuple[list[str], list[str], list[str]]:
    """The command lines of the naive peer, the thin app and the service (``{port}`` is
    filled in by ``server``)."""
    naive = [sys.executable, "-m", "uvicorn", "benchmarks.naive_app:app", "--host", HOST]
    naive += ["--port", "{port}", "--log-level", "warning", "--no-access-log"]
    thin_app = [*naive[:3], "benchmarks.thin_app:app", *naive[4:]]
    return naive, thin_app, [sys.executable, "-m", "service.serve"]


def naive_env(version_dir: Path, providers: str = "cpu") -> dict[str, str]:
    """The naive peer's environment: the landmark version it serves, on which provider."""
    return {"NAIVE_MODEL_DIR": str(version_dir), "NAIVE_PROVIDERS": providers}


def service_env(batching: bool, tmp: Path, providers: str = "cpu") -> dict[str, str]:
    return {
        "VISION_MODELS": '["landmark"]',
        "VISION_PROVIDERS": providers,
        "VISION_BATCHING": "true" if batching else "false",
        "VISION_LOG_LEVEL": "WARNING",
        "VISION_FEEDBACK_DB": str(tmp / f"feedback-{batching}.sqlite3"),
    }


# The thin app's routes (benchmarks/thin_app.py): the service's lone-request work behind one
# bare handler, in one worker-thread trip and on the event loop.
THIN_ROUTES = {"worker thread": "/recognize", "event loop": "/recognize-on-loop"}


def one_client_bounds(
    measured: dict[str, Any],
    naive: tuple[int, int],
    thin: tuple[int, int],
    image: bytes,
    args: argparse.Namespace,
) -> None:
    """At one client: the HTTP floor (the naive peer's upload-only route) and the thin
    routes, into ``measured["http_floor"]`` and ``measured["thin_route"]``; measured by wrk
    too, where installed, into ``measured["wrk_bounds"]``."""
    bounds = {"HTTP floor": (naive, "/upload")}
    bounds |= {f"thin route, {where}": (thin, path) for where, path in THIN_ROUTES.items()}
    rows = {}
    for name, ((port, pid), path) in bounds.items():
        print(f"{name} (POST {path})", flush=True)
        rows[name] = load_levels(port, pid, image, [1], args.duration, args.warmup, path=path)[0]
        if measured["wrk"] is not None:
            measured["wrk_bounds"][name] = wrk_level(
                port, pid, image, 1, args.duration, args.warmup, path=path
            )
    measured["http_floor"] = rows["HTTP floor"]
    measured["thin_route"] = {where: rows[f"thin route, {where}"] for where in THIN_ROUTES}


def rotated(names: list[str], index: int) -> list[str]:
    """``names`` rotated left by ``index`` (round ``index``'s order of the servers)."""
    shift = index % len(names)
    return names[shift:] + names[:shift]


def measure_round(
    servers: dict[str, tuple[int, int]],
    order: list[str],
    thin: tuple[int, int],
    image: bytes,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One round: every level of ``args.concurrency``, the servers taking turns in
    ``order`` at each (wrk after loadgen.py at the target levels), the one-client bounds
    right after the one-client level, then the overload check. Rows keyed by server name
    in ``servers``' order."""
    measured: dict[str, Any] = {
        "order": order,
        "http": {name: [] for name in servers},
        "wrk": {name: [] for name in servers} if wrk.available() else None,
        "wrk_bounds": {},
    }
    for concurrency in args.concurrency:
        for name in order:
            port, pid = servers[name]
            print(name, flush=True)
            measured["http"][name] += load_levels(
                port, pid, image, [concurrency], args.duration, args.warmup
            )
        if measured["wrk"] is not None and concurrency in WRK_LEVELS:
            for name in order:
                port, pid = servers[name]
                print(f"{name}, measured by wrk", flush=True)
                measured["wrk"][name].append(
                    wrk_level(port, pid, image, concurrency, args.duration, args.warmup)
                )
        if concurrency == 1:
            one_client_bounds(measured, servers["naive peer"], thin, image, args)
    if "http_floor" not in measured:  # no level of one client was asked for
        one_client_bounds(measured, servers["naive peer"], thin, image, args)
    base = nearest_level(measured["http"]["service, batching on"], OVERLOAD_BASE)
    rate = OVERLOAD_FACTOR * base["throughput_rps"]
    print(f"overload at {rate:.0f} req/s", flush=True)
    port, _ = servers["service, batching on"]
    measured["overload"] = overload(port, image, rate, args.duration, args.warmup)
    print(f"  {measured['overload']}", flush=True)
    return measured


def round_headline(measured: dict[str, Any], pipeline: dict[str, Any]) -> dict[str, Any]:
    """One round's target figures: ratios between rows of this round (and the in-process
    ``pipeline``), with the figures the headline's sentences quote."""

    def at(name: str, level: int) -> dict[str, Any]:
        return nearest_level(measured["http"][name], level)

    on16, off16 = at("service, batching on", 16), at("service, batching off", 16)
    naive16 = at("naive peer", 16)
    on1 = at("service, batching on", 1)
    base = at("service, batching on", OVERLOAD_BASE)
    floor, over = measured["http_floor"], measured["overload"]
    thin, on_loop = (measured["thin_route"][where] for where in ("worker thread", "event loop"))
    head = {
        "on_rps": on16["throughput_rps"],
        "naive_rps": naive16["throughput_rps"],
        "on_vs_limit_with_decode": on16["throughput_rps"]
        / pipeline["limit_with_decode_images_per_s"],
        "on_vs_limit_without_decode": on16["throughput_rps"] / pipeline["raw_limit_images_per_s"],
        "on_vs_naive": on16["throughput_rps"] / naive16["throughput_rps"],
        "off_vs_naive": off16["throughput_rps"] / naive16["throughput_rps"],
        "c1_p50_ms": on1["p50_ms"],
        "c1_ratio": on1["p50_ms"] / pipeline["single_ms"],
        "c1_ratio_vs_full_decode": on1["p50_ms"] / pipeline["full_single_ms"],
        "floor_p50_ms": floor["p50_ms"],
        "c1_floor_plus_pipeline_ms": floor["p50_ms"] + pipeline["single_ms"],
        # What the service adds of its own at one client, over the floor and the pipeline.
        "c1_own_ms": on1["p50_ms"] - floor["p50_ms"] - pipeline["single_ms"],
        "thin_p50_ms": thin["p50_ms"],
        "thin_on_loop_p50_ms": on_loop["p50_ms"],
        "c1_thin_ratio": thin["p50_ms"] / pipeline["single_ms"],
        "c1_thin_on_loop_ratio": on_loop["p50_ms"] / pipeline["single_ms"],
        "c1_above_thin_ms": on1["p50_ms"] - thin["p50_ms"],
        "base_p99_ms": base["p99_ms"],
        "overload_offered_rps": over["offered_rps"],
        "overload_ok": over["ok"],
        "overload_503": over["rejected_503"],
        "overload_p99_503_ms": over["p99_503_ms"],
        "overload_errors": over["errors"] + over["other_status"],
        "overload_p99_ms": over["p99_ms"],
        "overload_p99_ratio": over["p99_ms"] / base["p99_ms"],
        # The "unloaded p99" read strictly: one client, nothing else in flight.
        "c1_p99_ms": on1["p99_ms"],
        "overload_p99_vs_one_client": over["p99_ms"] / on1["p99_ms"],
        "on_vs_cpu_bound_limit": on16["throughput_rps"] / pipeline["cpu_bound_limit_images_per_s"],
        # The levels the figures above come from (the nearest measured when 1 or 16 was not).
        "levels": {
            "throughput": on16["concurrency"],
            "one_client": on1["concurrency"],
            "overload_base": base["concurrency"],
        },
    }
    return head | wrk_headline(measured, pipeline)


# The targets by headline figure: (sense, bound).
TARGETS = {
    "on_vs_limit_with_decode": (">=", 0.8),
    "on_vs_naive": (">=", 2.0),
    "c1_ratio": ("<=", 1.2),
    "overload_p99_ratio": ("<=", 2.0),
    "wrk_on_vs_limit_with_decode": (">=", 0.8),
    "wrk_on_vs_naive": (">=", 2.0),
    "wrk_c1_ratio": ("<=", 1.2),
}

# Headline figures added up over the rounds rather than their median: a failure in any
# round must show.
SUMMED = ("overload_errors", "wrk_16_status_400_up")


def finite(values: list[float]) -> list[float]:
    """``values`` without NaN (a p99 of no answers, say), which would make a median or a
    range depend on the order."""
    return [value for value in values if value == value]


def median_of(values: list[float]) -> float:
    """The median of the finite ``values``; NaN when there is none."""
    kept = finite(values)
    return statistics.median(kept) if kept else float("nan")


def summarize_rounds(headlines: list[dict[str, Any]]) -> dict[str, Any]:
    """The rounds' headlines as one: each figure's median over the rounds (each ratio
    between two servers is taken within its round), the counts of SUMMED added up, and
    every round's figure of each under ``per_round``. Figures missing from some round are
    left out."""
    keys = [
        key
        for key in headlines[0]
        if key != "levels" and all(key in headline for headline in headlines)
    ]
    per_round = {key: [headline[key] for headline in headlines] for key in keys}
    summary: dict[str, Any] = {
        key: sum(values) if key in SUMMED else median_of(values)
        for key, values in per_round.items()
    }
    summary["levels"] = headlines[0]["levels"]
    summary["rounds"] = len(headlines)
    summary["per_round"] = per_round
    summary["met"] = {
        key: sum(meets(key, value) for value in per_round[key])
        for key in TARGETS
        if key in per_round
    }
    # Each figure's median is taken on its own, so a quotient of two medians (on_rps over
    # naive_rps) need not be the median quotient (on_vs_naive); this names, per figure, the
    # round whose own figures give its median (None with an even number of rounds).
    summary["median_round"] = {key: median_round(summary, key) for key in per_round}
    return summary


def meets(key: str, value: float) -> bool:
    """Whether headline figure ``key`` at ``value`` meets its target (TARGETS)."""
    sense, bound = TARGETS[key]
    return value >= bound if sense == ">=" else value <= bound


def wrk_headline(measured: dict[str, Any], pipe: dict[str, Any]) -> dict[str, float]:
    """The target ratios again from the levels wrk measured in a round (none without wrk),
    over the in-process pipeline ``pipe``."""
    if measured["wrk"] is None:
        return {}
    bounds = measured["wrk_bounds"]

    def at(name: str, level: int) -> dict[str, Any] | None:
        return next((r for r in measured["wrk"][name] if r["concurrency"] == level), None)

    out = {}
    if on1 := at("service, batching on", 1):
        out["wrk_c1_p50_ms"] = on1["p50_ms"]
        out["wrk_c1_ratio"] = on1["p50_ms"] / pipe["single_ms"]
        out["wrk_c1_floor_ms"] = bounds["HTTP floor"]["p50_ms"]
        thin, on_loop = bounds["thin route, worker thread"], bounds["thin route, event loop"]
        out["wrk_c1_thin_ratio"] = thin["p50_ms"] / pipe["single_ms"]
        out["wrk_c1_thin_on_loop_ratio"] = on_loop["p50_ms"] / pipe["single_ms"]
    on16, naive16 = at("service, batching on", 16), at("naive peer", 16)
    if on16 and naive16:
        limit = pipe["limit_with_decode_images_per_s"]
        out["wrk_on_vs_limit_with_decode"] = on16["throughput_rps"] / limit
        out["wrk_on_vs_naive"] = on16["throughput_rps"] / naive16["throughput_rps"]
        # Answers of status 400 and up are left out of wrk's throughput (benchmarks/wrk.py);
        # how many there were is said beside the ratios.
        out["wrk_16_status_400_up"] = on16["status_400_up"] + naive16["status_400_up"]
    return out


def round_rows(report: dict[str, Any], key: str) -> list[tuple[str, int, dict[str, Any]]]:
    """Every round's rows of ``key`` ("http" or "wrk": a list of rows per server;
    "wrk_bounds": one row per bound) as (name, round number from 1, row), by name in the
    first round's order, then level, then round."""
    rows = [
        (name, number, row)
        for number, measured in enumerate(report["rounds"], start=1)
        for name, level_rows in measured[key].items()
        for row in (level_rows if isinstance(level_rows, list) else [level_rows])
    ]
    names = list(report["rounds"][0][key])
    return sorted(rows, key=lambda r: (names.index(r[0]), r[2]["concurrency"], r[1]))


def wrk_lines(report: dict[str, Any]) -> list[str]:
    """The markdown section of the levels measured by wrk."""
    lines = ["", "## The target levels again, measured by wrk", ""]
    if report["rounds"][0]["wrk"] is None:
        return [*lines, "wrk is not installed here (`apt-get install wrk`): not measured.", ""]
    lines += [
        "The same servers and upload, closed loop, with wrk (C, epoll, one thread) as the load "
        "generator instead of loadgen.py, after loadgen.py's rows of each level (each bound "
        "right after its loadgen.py row): its latencies hold less of the client's own time "
        "on the shared CPUs. Rows after the servers are the one-client bounds. wrk corrects "
        "its percentiles for coordinated omission (benchmarks/wrk.py), so compare p50s; its "
        "tails can be higher than the latencies observed.",
        "",
        "| server | concurrency | round | req/s | p50 ms | p95 ms | p99 ms | status >= 400 "
        "| errors | server CPU ms/request |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, number, row in round_rows(report, "wrk") + round_rows(report, "wrk_bounds"):
        lines.append(
            f"| {name} | {row['concurrency']} | {number} | {row['throughput_rps']:.1f} | "
            f"{row['p50_ms']:.2f} | {row['p95_ms']:.2f} | {row['p99_ms']:.2f} | "
            f"{row['status_400_up']} | {row['errors']} | "
            f"{_fmt(row['server_cpu_ms_per_request'], 2)} |"
        )
    return lines


def wrk_headline_lines(report: dict[str, Any]) -> list[str]:
    """The headline's figures from the wrk rows, where they were measured."""
    head, pipe = report["headline"], report["pipeline"]
    lines = []
    if "wrk_on_vs_limit_with_decode" in head:
        lines.append(
            f"- measured by wrk, concurrency 16: service (batching on) / limit with decode "
            f"included {head['wrk_on_vs_limit_with_decode']:.3f} "
            f"({spread(head, 'wrk_on_vs_limit_with_decode', 3)}), / naive peer "
            f"{head['wrk_on_vs_naive']:.3f} ({spread(head, 'wrk_on_vs_naive', 3)})"
            + (
                f"; {head['wrk_16_status_400_up']} answers of status >= 400 (service and "
                "peer, all rounds) left out of them"
                if head.get("wrk_16_status_400_up")
                else ""
            )
        )
    if "wrk_c1_ratio" in head:
        lines.append(
            f"- measured by wrk, concurrency 1: p50 {head['wrk_c1_p50_ms']:.2f} ms vs decode + "
            f"pre + run {pipe['single_ms']:.2f} ms: ratio {head['wrk_c1_ratio']:.2f} "
            f"({spread(head, 'wrk_c1_ratio', 2)}); thin route {head['wrk_c1_thin_ratio']:.2f}, "
            f"on the event loop {head['wrk_c1_thin_on_loop_ratio']:.2f}; HTTP floor p50 "
            f"{head['wrk_c1_floor_ms']:.2f} ms"
        )
    return lines


def above_or_below(difference_ms: float) -> str:
    """``1.25`` -> "1.25 ms above", ``-0.31`` -> "0.31 ms below" (runs that swing by more
    than the difference do put the service under the thin route)."""
    return f"{abs(difference_ms):.2f} ms {'below' if difference_ms < 0 else 'above'}"


def _range(values: list[float], digits: int) -> str:
    """ "lo-hi" of the finite ``values``; "n/a" when there is none."""
    kept = finite(values)
    return f"{min(kept):.{digits}f}-{max(kept):.{digits}f}" if kept else "n/a"


def _fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"  # NaN check


def median_round(head: dict[str, Any], key: str) -> int | None:
    """The index of the round whose ``key`` is the median: with an odd number of rounds
    the median is one round's own figure, and that round's operands give it exactly. None
    with an even number (the median is then no round's)."""
    values = head["per_round"][key]
    if len(values) % 2 == 0 or head[key] not in values:
        return None
    return int(values.index(head[key]))


def in_median_round(head: dict[str, Any], key: str, operands: Callable[[int], str]) -> str:
    """ "; its median round (2): <operands>" for ``key``, or nothing without one."""
    index = median_round(head, key)
    return "" if index is None else f"; in its median round ({index + 1}): {operands(index)}"


def spread(head: dict[str, Any], key: str, digits: int) -> str:
    """``key``'s range over the rounds and, for a target, the rounds that met it:
    "rounds 0.65-0.70; target >= 0.80, met in 0 of 3"."""
    values = head["per_round"][key]
    text = f"rounds {_range(values, digits)}"
    if key in TARGETS:
        sense, bound = TARGETS[key]
        text += f"; target {sense} {bound:g}, met in {head['met'][key]} of {len(values)}"
    return text


def median_table_lines(report: dict[str, Any]) -> list[str]:
    """Per server and level: the median over the rounds of throughput (with the rounds'
    range), p50 and p99, and the 503s and errors of all rounds added up."""
    lines = [
        "| server | concurrency | req/s, median (rounds' range) | p50 ms, median | p99 ms, median "
        "| 503, all rounds | errors, all rounds |",
        "|---|---|---|---|---|---|---|",
    ]
    grouped: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for name, _, row in round_rows(report, "http"):
        grouped.setdefault((name, row["concurrency"]), []).append(row)
    for (name, concurrency), rows in grouped.items():
        rps = [row["throughput_rps"] for row in rows]
        lines.append(
            f"| {name} | {concurrency} | {statistics.median(rps):.1f} ({min(rps):.1f}-"
            f"{max(rps):.1f}) | {_fmt(median_of([row['p50_ms'] for row in rows]))} | "
            f"{_fmt(median_of([row['p99_ms'] for row in rows]))} | "
            f"{sum(row['rejected_503'] for row in rows)} | "
            f"{sum(row['errors'] + row['other_status'] for row in rows)} |"
        )
    return lines


def round_table_lines(report: dict[str, Any]) -> list[str]:
    """A table of each round's figures against the targets."""
    lines = [
        "",
        "## Each round against the targets",
        "",
        "| round | order | / limit with decode (>= 0.8) | / CPU-time bound | / naive peer "
        "(>= 2) | one client / pipeline (<= 1.2) | overload p99 / 16-client p99 (<= 2) "
        "| / one-client p99 | overload accepted, 503, errors | wrk: / limit, / naive peer, "
        "one client |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for number, measured in enumerate(report["rounds"], start=1):
        head = measured["headline"]
        by_wrk = ", ".join(
            f"{head[key]:.{digits}f}" if key in head else "-"
            for key, digits in (
                ("wrk_on_vs_limit_with_decode", 3),
                ("wrk_on_vs_naive", 3),
                ("wrk_c1_ratio", 2),
            )
        )
        lines.append(
            f"| {number} | {'; '.join(measured['order'])} | "
            f"{head['on_vs_limit_with_decode']:.3f} | {head['on_vs_cpu_bound_limit']:.3f} | "
            f"{head['on_vs_naive']:.3f} | {head['c1_ratio']:.2f} | "
            f"{head['overload_p99_ratio']:.2f} | {head['overload_p99_vs_one_client']:.1f} | "
            f"{head['overload_ok']}, {head['overload_503']}, {head['overload_errors']} | "
            f"{by_wrk} |"
        )
    return lines


def write_markdown(report: dict[str, Any], path: Path) -> None:
    lines = [
        f"# Benchmark: POST /recognize (landmark), {provider_title(report)}",
        "",
        f"Run {report.get('started_utc', '(time not recorded)')}, code "
        f"{report.get('code', '(not recorded)')}. "
        f"Machine: {report['machine']['cpu']}, {report['machine']['cpus_usable']} usable CPUs"
        f" ({report['machine'].get('physical_cores_usable') or '?'} physical cores in its "
        f"affinity; ONNX Runtime's default thread count, which the naive peer keeps, counts "
        f"physical cores), "
        f"onnxruntime {report['machine']['onnxruntime']}; load average (1/5/15 min) before "
        f"{report['machine']['load_before']}, after {report['machine']['load_after']}. "
        f"Image: {report['image']['size']} JPEG, {report['image']['bytes']} bytes. "
        f"Command: `{report['command']}` ({report['seconds_total']:.0f} s).",
        "",
        "## Limit: raw InferenceSession.run on pre-processed tensors (decode not included)",
        "",
        "| model | graph | batch 1 ms | batch 1 img/s | best batch | best img/s |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["limits"]:
        lines.append(
            f"| {row['model']}/{row['version']} | {row['graph']} | {row['batch_1_ms']:.2f} | "
            f"{row['batch_1_images_per_s']:.0f} | {row['best_batch']} | "
            f"{row['best_images_per_s']:.0f} |"
        )
    pipe = report["pipeline"]
    lines += [
        "",
        f"Landmark, one image in-process, decoded as the service does "
        f"(JPEG draft {'on' if pipe['jpeg_draft'] else 'off'}): decode "
        f"{pipe['decode_ms']:.2f} ms + letterbox and normalise {pipe['preprocess_ms']:.2f} ms "
        f"+ one run {pipe['run_ms']:.2f} ms = {pipe['single_ms']:.2f} ms. Limit with decode "
        f"included (serial: decode + pre-processing + the best batch's run time per image): "
        f"{pipe['limit_with_decode_images_per_s']:.0f} img/s. It is not an upper bound: "
        f"decoding can overlap the runs. "
        + (
            f"Bound by CPU time instead ({report['machine']['cpus_usable']} CPUs over "
            f"{pipe['cpu_ms_per_image']:.2f} CPU-ms per image: decode "
            f"{pipe['decode_cpu_ms']:.2f} + pre-processing {pipe['preprocess_cpu_ms']:.2f} + "
            f"the fastest batch's run per image, whose CPU time per image another batch size "
            f"may undercut by a little): "
            f"{pipe['cpu_bound_limit_images_per_s']:.0f} img/s."
            if "cpu_bound_limit_images_per_s" in pipe
            else ""
        ),
        "",
        f"For reference, a full decode (what the naive peer does): decode "
        f"{pipe['full_decode_ms']:.2f} ms + letterbox and normalise "
        f"{pipe['full_preprocess_ms']:.2f} ms + one run = {pipe['full_single_ms']:.2f} ms; "
        f"limit with that decode {pipe['full_limit_with_decode_images_per_s']:.0f} img/s.",
        "",
        "## HTTP, closed loop over loopback",
        "",
        f"Each level of each server once per round, {report['settings']['rounds']} "
        "round(s), the servers' order rotated each round (round 1: "
        f"{'; '.join(report['rounds'][0]['order'])}).",
        "",
        *median_table_lines(report),
        "",
        "Every round's rows:",
        "",
        "| server | concurrency | round | req/s | p50 ms | p95 ms | p99 ms | 503 | errors "
        "| server CPU ms/request | load generator CPU ms/request |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, number, row in round_rows(report, "http"):
        lines.append(
            f"| {name} | {row['concurrency']} | {number} | {row['throughput_rps']:.1f} | "
            f"{_fmt(row['p50_ms'])} | {_fmt(row['p95_ms'])} | {_fmt(row['p99_ms'])} | "
            f"{row['rejected_503']} | {row['errors'] + row['other_status']} | "
            f"{_fmt(row['server_cpu_ms_per_request'], 2)} | "
            f"{_fmt(row['client_cpu_ms_per_request'], 2)} |"
        )
    lines += wrk_lines(report)
    lines += [
        "",
        "## Where the service's time goes (its Server-Timing header, medians)",
        "",
        "decode-wait = waiting for a decode thread and the hand-off to it; own = app minus "
        "the stages: middlewares, routing, multipart, hand-offs back, output decoding and "
        "JSON; outside = client latency - app: network, "
        "HTTP parsing and writing, the load generator. In-process, back to back: decode "
        f"{pipe['decode_ms']:.2f} ms, one run {pipe['run_ms']:.2f} ms.",
        "",
        "| server | concurrency | round | p50 ms | app | "
        + " | ".join(STAGE_ORDER)
        + " | own | outside |",
        "|---|---|---|---|---" + "|---" * len(STAGE_ORDER) + "|---|---|",
    ]
    for name, number, row in round_rows(report, "http"):
        if stages := row.get("server_timing_p50_ms"):
            lines.append(
                f"| {name} | {row['concurrency']} | {number} | {_fmt(row['p50_ms'], 2)} | "
                + " | ".join(
                    _fmt(stages[key], 2) for key in ("app", *STAGE_ORDER, "own", "outside")
                )
                + " |"
            )
    head = report["headline"]
    levels, count, per = head["levels"], head["rounds"], head["per_round"]
    limit = pipe["limit_with_decode_images_per_s"]

    def rps(key: str) -> Callable[[int], str]:
        return lambda k: f"{per['on_rps'][k]:.1f} / {per[key][k]:.1f} req/s"

    lines += round_table_lines(report)
    lines += [
        "",
        f"## Headline: medians of {count} round(s) (concurrency {levels['throughput']} unless "
        "said)",
        "",
        "Ratios between servers are taken within each round, between rows measured minutes "
        "apart; the limit and the in-process pipeline are measured once, before the rounds. "
        "Each figure is the median of the rounds' figures, with their range, the rounds that "
        "met the target and, where the rounds are odd in number, the median round's own "
        "operands.",
        "",
        f"- service (batching on) / limit with decode included: "
        f"{head['on_vs_limit_with_decode']:.3f} ({spread(head, 'on_vs_limit_with_decode', 3)}"
        + in_median_round(
            head,
            "on_vs_limit_with_decode",
            lambda k: f"{per['on_rps'][k]:.1f} req/s / {limit:.0f} img/s",
        )
        + f"; the serial limit above); / the CPU-time bound: "
        f"{head['on_vs_cpu_bound_limit']:.3f}",
        f"- service (batching on) / raw ORT limit, decode not included: "
        f"{head['on_vs_limit_without_decode']:.2f}",
        f"- service (batching on) / naive peer: {head['on_vs_naive']:.3f} "
        f"({spread(head, 'on_vs_naive', 3)}"
        + in_median_round(head, "on_vs_naive", rps("naive_rps"))
        + ")",
        f"- service (batching off) / naive peer: {head['off_vs_naive']:.2f}",
        f"- concurrency {levels['one_client']} p50 / decode + pre + run "
        f"{pipe['single_ms']:.3f} ms: ratio {head['c1_ratio']:.2f} "
        f"({spread(head, 'c1_ratio', 2)}"
        + in_median_round(head, "c1_ratio", lambda k: f"{per['c1_p50_ms'][k]:.3f} ms")
        + f"); against the full-decode pipeline {pipe['full_single_ms']:.2f} ms: "
        f"{head['c1_ratio_vs_full_decode']:.2f}",
        f"- HTTP floor at concurrency 1 (a FastAPI endpoint that only reads the same upload, "
        f"the naive peer's POST /upload): p50 {head['floor_p50_ms']:.2f} ms; the service "
        f"adds {head['c1_own_ms']:.2f} ms of its own over floor + decode + pre + run (rounds "
        f"{_range(per['c1_own_ms'], 2)}: thread hand-offs, middleware, batcher)",
        f"- thinnest route at concurrency 1 (benchmarks/thin_app.py: the service's decode, "
        f"pre-processing, run and output decoding behind one bare FastAPI handler, in one "
        f"worker-thread trip): p50 {head['thin_p50_ms']:.3f} ms, ratio "
        f"{head['c1_thin_ratio']:.2f} to decode + pre + run; the same on the event loop, "
        f"blocking it (which the service must not): p50 {head['thin_on_loop_p50_ms']:.3f} ms, "
        f"ratio {head['c1_thin_on_loop_ratio']:.2f}. The service's p50 is "
        f"{above_or_below(head['c1_above_thin_ms'])} the thin route's (rounds "
        f"{_range(per['c1_above_thin_ms'], 2)}: its batcher, middleware, checks, metrics and "
        "response model)",
        f"- overload: 2x the {levels['overload_base']}-client throughput offered for "
        f"{report['settings']['duration_s']:g} s a round: accepted "
        f"{', '.join(str(n) for n in per['overload_ok'])}, answered 503 "
        f"{', '.join(str(n) for n in per['overload_503'])} (their p99 median "
        f"{_fmt(head['overload_p99_503_ms'])} ms), errors {head['overload_errors']} in all "
        f"rounds; accepted p99 / {levels['overload_base']}-client p99: ratio "
        f"{head['overload_p99_ratio']:.2f} ({spread(head, 'overload_p99_ratio', 2)}"
        + in_median_round(
            head,
            "overload_p99_ratio",
            lambda k: f"{per['overload_p99_ms'][k]:.1f} / {per['base_p99_ms'][k]:.1f} ms",
        )
        + "; reading the issue's 'unloaded' as the closed loop at capacity); accepted p99 / "
        f"{levels['one_client']}-client p99"
        f"{' (no load at all)' if levels['one_client'] == 1 else ''}: ratio "
        f"{head['overload_p99_vs_one_client']:.1f} "
        f"({spread(head, 'overload_p99_vs_one_client', 1)}"
        + in_median_round(
            head,
            "overload_p99_vs_one_client",
            lambda k: f"{per['overload_p99_ms'][k]:.1f} / {per['c1_p99_ms'][k]:.1f} ms",
        )
        + ")",
        *wrk_headline_lines(report),
        "",
    ]
    path.write_text("\n".join(lines))


def write_plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    # Per server and level: the median over the rounds, bars from the lowest to the highest.
    for name in report["rounds"][0]["http"]:
        by_level: dict[int, list[dict[str, Any]]] = {}
        for measured in report["rounds"]:
            for row in measured["http"][name]:
                by_level.setdefault(row["concurrency"], []).append(row)
        levels = sorted(by_level)
        for axis, key in ((left, "throughput_rps"), (right, "p99_ms")):
            values = [[row[key] for row in by_level[level]] for level in levels]
            middle = [statistics.median(v) for v in values]
            below = [m - min(v) for m, v in zip(middle, values, strict=True)]
            above = [max(v) - m for m, v in zip(middle, values, strict=True)]
            axis.errorbar(levels, middle, yerr=[below, above], marker="o", capsize=3, label=name)
    landmark = next(row for row in report["limits"] if row["model"] == "landmark")
    left.axhline(
        landmark["best_images_per_s"], color="k", ls="--", lw=1, label="raw ORT limit (no decode)"
    )
    left.axhline(
        report["pipeline"]["limit_with_decode_images_per_s"],
        color="grey",
        ls=":",
        lw=1.5,
        label="limit, decode included",
    )
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent clients")
        axis.grid(alpha=0.3)
    left.set_ylabel(f"requests/s (200 only), median of {len(report['rounds'])} rounds")
    right.set_ylabel("p99 latency, ms")
    right.set_yscale("log")
    left.legend(fontsize=8)
    fig.suptitle(
        f"POST /recognize, {provider_title(report)} ({report['machine']['cpus_usable']} "
        f"usable CPUs, load "
        f"{report['machine']['load_before'][0]} before)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every measurement; write and return the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="measured s per level")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured s per level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--image-size", default="640x480", help="WxH of the benchmark JPEG")
    parser.add_argument(
        "--rounds",
        type=int,
        default=DEFAULT_ROUNDS,
        help="times every level is measured, the servers' order rotated each round",
    )
    parser.add_argument(
        "--providers",
        choices=("cpu", "cuda"),
        default="cpu",
        help="execution provider of the limit, the pipeline, the naive peer and the service",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    started = time.perf_counter()
    width, height = (int(v) for v in args.image_size.split("x"))
    image = benchmark_image((width, height))
    settings = Settings(providers=args.providers)
    report: dict[str, Any] = {
        "command": "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv),
        "started_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "code": code_version(),
        "machine": {
            "cpu": cpu_model(),
            "cpus_usable": available_cpus(),
            "cpus_host": os.cpu_count(),
            "physical_cores_usable": physical_cores(),
            "onnxruntime": ort.__version__,
            "providers": args.providers,
            "gpu": gpu_name() if args.providers == "cuda" else None,
            "python": platform.python_version(),
            "load_before": load_average(),
        },
        "image": {"size": args.image_size, "bytes": len(image)},
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "intra_op_threads": settings.resolved_intra_op_threads(),
            "batch_max_size": settings.batch_max_size,
            "batch_max_delay_ms": settings.batch_max_delay_ms,
            "batch_queue_size": settings.batch_policy(settings.recognize_model).queue_size,
        },
    }
    print(f"load before: {report['machine']['load_before']}", flush=True)
    report["limits"] = measure_limits(settings)
    pipeline = measure_pipeline(image, settings)
    landmark = next(row for row in report["limits"] if row["model"] == settings.recognize_model)
    best_run_ms = 1000 / landmark["best_images_per_s"]
    pipeline["full_single_ms"] = (
        pipeline["full_decode_ms"] + pipeline["full_preprocess_ms"] + pipeline["run_ms"]
    )
    per_image_ms = pipeline["decode_ms"] + pipeline["preprocess_ms"] + best_run_ms
    pipeline["limit_with_decode_images_per_s"] = 1000 / per_image_ms
    # What the two CPUs could do if decoding overlapped the runs perfectly: the CPUs this
    # process may use over the CPU time one image costs (decode, pre-processing, its share
    # of the fastest batch's run; another batch size may cost a little less CPU per image,
    # about 1 % for the landmark graph). Near an upper bound, which the serial limit is not.
    cpu_ms_per_image = (
        pipeline["decode_cpu_ms"]
        + pipeline["preprocess_cpu_ms"]
        + landmark["best_cpu_ms_per_image"]
    )
    pipeline["cpu_ms_per_image"] = cpu_ms_per_image
    pipeline["cpu_bound_limit_images_per_s"] = available_cpus() * 1000 / cpu_ms_per_image
    pipeline["raw_limit_images_per_s"] = landmark["best_images_per_s"]
    full_per_image_ms = pipeline["full_decode_ms"] + pipeline["full_preprocess_ms"] + best_run_ms
    pipeline["full_limit_with_decode_images_per_s"] = 1000 / full_per_image_ms
    report["pipeline"] = pipeline
    print(f"pipeline: {pipeline}", flush=True)

    naive, thin_app, service = server_commands()
    version_dir = landmark_version(settings)
    # The servers (the thin app too) run side by side, an idle one costing no CPU, and take
    # turns at each concurrency level, so a change in the machine's other load hits them
    # alike rather than whichever happened to be measured at the time. Each round measures
    # every level again with the servers' order rotated, so that no server is always the
    # first after the machine's quiet moment or the last before the overload; the headline
    # is the median of the rounds' figures, each ratio between servers taken within its
    # round.
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        servers = {
            "naive peer": stack.enter_context(
                server(naive, naive_env(version_dir, args.providers), "/openapi.json")
            ),
            "service, batching off": stack.enter_context(
                server(service, service_env(False, Path(tmp), args.providers), "/health/ready")
            ),
            "service, batching on": stack.enter_context(
                server(service, service_env(True, Path(tmp), args.providers), "/health/ready")
            ),
        }
        thin = stack.enter_context(
            server(thin_app, service_env(True, Path(tmp), args.providers), "/docs")
        )
        if not wrk.available():
            print("wrk is not installed (apt-get install wrk): loadgen.py only", flush=True)
        report["rounds"] = []
        for index in range(args.rounds):
            order = rotated(list(servers), index)
            print(f"round {index + 1} of {args.rounds}: {'; '.join(order)}", flush=True)
            measured = measure_round(servers, order, thin, image, args)
            measured["headline"] = round_headline(measured, pipeline)
            report["rounds"].append(measured)
    report["headline"] = summarize_rounds([measured["headline"] for measured in report["rounds"]])
    report["machine"]["load_after"] = load_average()
    report["seconds_total"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmark.json").write_text(json.dumps(report, indent=2))
    write_markdown(report, args.out / "benchmark.md")
    write_plot(report, args.out / "benchmark.png")
    print((args.out / "benchmark.md").read_text())
    return report


if __name__ == "__main__":
    main()
