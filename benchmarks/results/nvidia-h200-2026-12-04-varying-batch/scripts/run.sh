#!/bin/bash
# Device check of the CUDA path: unpack onnxruntime-gpu (cubins of sm_90 only), the serving
# wheels, then the CUDA tests and the benchmark on CUDA. Run from the repository root.
set -u
export PYTHONUNBUFFERED=1
mkdir -p /tmp/site
cat /tmp/g/part00 .gpuB/part01 | python3 -c "import lzma,sys,shutil; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer)" | tar -C /tmp/site -x || { echo "unpack failed"; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpuB/whl/*.whl 2>&1 | tail -3
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee $OUT/gpu.txt
nproc | tee -a $OUT/gpu.txt
echo "== the service's own CUDA loading (no LD_LIBRARY_PATH)"
python3 - <<'PY' 2>&1 | tee -a $OUT/gpu.txt
import sys, time, onnxruntime as ort
print(sys.version.split()[0], ort.__version__, ort.__file__, ort.get_available_providers())
from service.runtime import preload_cuda_libraries
print("preload_cuda_libraries:", preload_cuda_libraries())
t = time.perf_counter()
s = ort.InferenceSession("models/repository/landmark/1/model.onnx", providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
print("session providers", s.get_providers(), f"{time.perf_counter() - t:.2f} s")
PY
export LD_LIBRARY_PATH=$(python3 -c "import glob,os,site;print(':'.join(sorted({os.path.dirname(p) for d in site.getsitepackages() for p in glob.glob(d+'/nvidia/**/lib*.so*', recursive=True)})))")
echo "== tests"
timeout 200 python3 -m pytest -q -p no:cacheprovider -p no:randomly tests/service/test_cuda.py tests/service/test_runtime.py tests/service/test_runtime_warmup.py 2>&1 | tee $OUT/pytest.log | tail -40
echo "== benchmark on CUDA"
timeout 330 python3 -m benchmarks.run --providers cuda --rounds 1 --duration 4 --warmup 1 --out $OUT/bench > $OUT/bench.log 2>&1; echo "benchmark rc=$?"
tail -60 $OUT/bench.log; for f in /tmp/benchmark-server-*.log; do echo "== $f"; tail -15 $f; done | tail -80
