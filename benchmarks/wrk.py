"""Closed-loop levels measured by wrk, a C load generator (Debian's ``wrk``), as a second
opinion on benchmarks/loadgen.py.

The load generator shares the two CPUs with the server it measures, so its own cost is in
every latency: loadgen.py is Python on uvloop (about 0.3 ms of CPU per request at one
client), wrk is C on epoll. ``closed_loop`` runs ``wrk`` with one thread and
``concurrency`` keep-alive connections, each sending its next request as soon as the
previous answer arrived, and reads its latency percentiles through a Lua ``done`` hook.
Unlike loadgen.py it does not wait out a 503's Retry-After, and its latencies mix every
status: use it only where the server answers all 200s (``status_400_up`` says whether it
did; wrk counts answers of status 400 and up, not 1xx or 3xx).

wrk's percentiles are not raw: before ``done`` it corrects its histogram for coordinated
omission (``stats_correct``: for each latency of at least twice the mean interval between
a connection's requests, samples are added in steps of that interval below it). At a
steady closed loop the p50 barely moves; a p95/p99 from a run with long stalls (the naive
peer at 16 clients) comes out higher than the latencies observed. Compare p50s with
loadgen.py's, not tails.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.loadgen import REQUEST_TIMEOUT_S

# wrk reads durations as whole seconds.
MIN_SECONDS = 1

# Sets the upload from the file and Content-Type given after "--", and prints one JSON line
# when done. wrk's latency statistics are in microseconds.
SCRIPT = r"""
init = function(args)
  local file = assert(io.open(args[1], "rb"))
  wrk.body = file:read("*a")
  file:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = args[2]
end

done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    "WRK-RESULT {\"requests\": %d, \"duration_us\": %d, \"status_400_up\": %d, \"errors\": %d, "
    .. "\"p50_us\": %d, \"p95_us\": %d, \"p99_us\": %d}\n",
    summary.requests, summary.duration, errors.status,
    errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""
MARKER = "WRK-RESULT "


def available() -> bool:
    """Whether ``wrk`` is on PATH (``apt-get install wrk``)."""
    return shutil.which("wrk") is not None


def whole_seconds(duration_s: float) -> int:
    """What wrk can run for ``duration_s``: whole seconds, rounded up, at least one."""
    return max(MIN_SECONDS, math.ceil(duration_s))


def closed_loop(
    url: str, content_type: str, body: bytes, concurrency: int, duration_s: float
) -> dict[str, Any]:
    """POST ``body`` to ``url`` from ``concurrency`` connections for ``duration_s`` (see
    ``whole_seconds``): answers, answers of status 400 and up, socket errors and timeouts,
    throughput of the other answers (req/s) and wrk's p50/p95/p99 latency of all answers
    (ms, corrected for coordinated omission: see the module's docstring).
    Raises RuntimeError when wrk fails (no server to connect to, a bad option)."""
    seconds = whole_seconds(duration_s)
    with tempfile.TemporaryDirectory(prefix="wrk-") as tmp:
        script, upload = Path(tmp) / "upload.lua", Path(tmp) / "body"
        script.write_text(SCRIPT)
        upload.write_bytes(body)
        command = ["wrk", "--threads", "1", "--connections", str(concurrency)]
        # As loadgen.py: an answer taking longer is a failure, not a latency.
        command += [
            "--duration",
            f"{seconds}s",
            "--timeout",
            f"{whole_seconds(REQUEST_TIMEOUT_S)}s",
        ]
        command += ["--script", str(script), url, "--", str(upload), content_type]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds + REQUEST_TIMEOUT_S
        )
    output = done.stdout
    line = next((line for line in output.splitlines() if line.startswith(MARKER)), None)
    if done.returncode != 0 or line is None:
        # wrk gives up (exit 1) when it cannot connect at all.
        raise RuntimeError(f"wrk failed (exit {done.returncode}): {done.stderr or output!r}")
    raw = json.loads(line.removeprefix(MARKER))
    wall_s = raw["duration_us"] / 1e6
    ok = raw["requests"] - raw["status_400_up"]
    return {
        "concurrency": concurrency,
        "answers": raw["requests"],
        "ok": ok,
        "status_400_up": raw["status_400_up"],
        "errors": raw["errors"],
        "seconds": wall_s,
        "throughput_rps": ok / wall_s if wall_s > 0 else 0.0,
        **{f"p{q}_ms": raw[f"p{q}_us"] / 1000 for q in (50, 95, 99)},
    }
