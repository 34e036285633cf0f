"""Why batched runs on CUDA take ~300 ms: in-process thread patterns, then the service's
batching under setting variants at 16 clients."""
import os, statistics, sys, tempfile, threading, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import numpy as np
from service.runtime import OnnxSession, read_config, select_version, warm_up
from service.settings import Settings
P = os.environ.get("PROBE_PROVIDERS", "cuda")
D = float(os.environ.get("PROBE_SECONDS", "3"))

def ms(fn, n):
    out = []
    for _ in range(n):
        t = time.perf_counter(); fn(); out.append(1000 * (time.perf_counter() - t))
    return out

def inprocess(label, **kw):
    s = Settings(providers=P, **kw)
    vd = select_version(s.model_repository / "landmark", None)
    cfg = read_config(vd); g = cfg.graph_configs()["model"]
    sess = OnnxSession(vd / g.file, s)
    t = time.perf_counter(); warm_up(g, sess, 1, range(1, 17)); warm = time.perf_counter() - t
    x = {g.inputs[0].name: np.random.default_rng(0).random((4, 3, cfg.preprocess.height, cfg.preprocess.width)).astype(np.float32)}
    run = lambda: sess.run(x)
    same = ms(run, 20)
    fresh = []
    for _ in range(6):
        box = []
        th = threading.Thread(target=lambda: box.extend(ms(run, 2))); th.start(); th.join(); fresh.append(box)
    with ThreadPoolExecutor(8) as pool:
        first = list(pool.map(lambda _: ms(run, 1)[0], range(8)))
        later = list(pool.map(lambda _: ms(run, 1)[0], range(32)))
        t = time.perf_counter(); list(pool.map(lambda _: run(), range(64))); conc = 1000 * (time.perf_counter() - t) / 64
    print(f"[{label}] warm-up 1..16 {warm:.1f} s; same thread b4 median {statistics.median(same):.2f} ms; "
          f"fresh thread (1st, 2nd run) {[(round(a,1), round(b,1)) for a, b in fresh]}; pool of 8 first use "
          f"{[round(v,1) for v in first]}; later median {statistics.median(later):.2f} max {max(later):.1f}; "
          f"8 threads concurrent: {conc:.2f} ms per run", flush=True)

inprocess("default")
inprocess("HEURISTIC", cudnn_conv_algo_search="HEURISTIC")
inprocess("io_binding off", io_binding="off")

from benchmarks.run import HOST, benchmark_image, server, server_commands, service_env
from benchmarks.loadgen import closed_loop, multipart_request, run as lrun
image = benchmark_image((640, 480))
_, _, service = server_commands()
variants = {"default": {}, "parallel 1": {"VISION_BATCH_PARALLEL": "1"},
            "io_binding off": {"VISION_IO_BINDING": "off"},
            "HEURISTIC": {"VISION_CUDNN_CONV_ALGO_SEARCH": "HEURISTIC"},
            "intra-op 1": {"VISION_INTRA_OP_THREADS": "1"}}
with tempfile.TemporaryDirectory() as tmp:
    for label, extra in variants.items():
        env = {**service_env(True, Path(tmp), P), **extra}
        t = time.perf_counter()
        with server(service, env, "/health/ready") as (port, pid):
            up = time.perf_counter() - t
            req = multipart_request(HOST, port, "/recognize", "image", "photo.jpg", image, "image/jpeg")
            for c in (4, 16):
                r = lrun(closed_loop(HOST, port, req, c, D, 1.0)).summary()
                print(f"<{label}> up {up:.1f} s; c={c}: {r['throughput_rps']:.1f} req/s p50 {r.get('p50_ms')} "
                      f"stages {r.get('server_timing_p50_ms')}", flush=True)
