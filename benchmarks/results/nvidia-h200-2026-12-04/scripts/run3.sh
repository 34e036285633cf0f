#!/bin/bash
set -u
export PYTHONUNBUFFERED=1
mkdir -p /tmp/site
cat /tmp/g/part00 .gpuB/part01 | python3 -c "import lzma,sys,shutil; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer)" | tar -C /tmp/site -x || { echo "unpack failed"; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpuB/whl/*.whl 2>&1 | tail -3
export PYTHONPATH=/tmp/site:$PWD
export LD_LIBRARY_PATH=$(python3 -c "import glob,os,site;print(':'.join(sorted({os.path.dirname(p) for d in site.getsitepackages() for p in glob.glob(d+'/nvidia/**/lib*.so*', recursive=True)})))")
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/service/test_cuda.py tests/service/test_runtime_warmup.py 2>&1 | tee $OUT/pytest.log | tail -6
timeout 230 python3 -m benchmarks.run --providers cuda --rounds 1 --duration 4 --warmup 1 --out $OUT/bench > $OUT/bench.log 2>&1; echo "benchmark rc=$?"
grep -A12 "^## Headline" $OUT/bench/benchmark.md; grep "| 16 |\|| 1 |" $OUT/bench/benchmark.md | head -12
