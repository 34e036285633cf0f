#!/bin/bash
set -u
export PYTHONUNBUFFERED=1
mkdir -p /tmp/site
cat /tmp/g/part00 .gpuB/part01 | python3 -c "import lzma,sys,shutil; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer)" | tar -C /tmp/site -x || { echo "unpack failed"; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpuB/whl/*.whl 2>&1 | tail -3
export PYTHONPATH=/tmp/site:$PWD
export LD_LIBRARY_PATH=$(python3 -c "import glob,os,site;print(':'.join(sorted({os.path.dirname(p) for d in site.getsitepackages() for p in glob.glob(d+'/nvidia/**/lib*.so*', recursive=True)})))")
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/service/test_cuda.py 2>&1 | tee $OUT/pytest.log | tail -15
timeout 300 python3 .gpuB/probe.py 2>&1 | grep -v "No registered plugin\|no API keys" | tee $OUT/probe.log
