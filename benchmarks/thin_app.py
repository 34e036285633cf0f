"""The thinnest route: the service's own landmark pipeline behind one bare FastAPI handler.

It is not a peer but a bound for the one-client target. ``POST /recognize`` reads the
upload, then in one worker-thread trip does what a lone ``/recognize`` request does in the
service: decode as the service does (``decode_rows_for``: JPEG draft decoding, letterbox),
normalise, one run of the served landmark graph with the service's session options, and the
service's ``LandmarkPointsDecoder``; it answers the landmarks as JSON. No middleware, no
dependencies, no batcher, no metrics, logging or checks beyond the service's decode limits.
``POST /recognize-on-loop`` does the same on the event loop, blocking it while it runs,
which the service must not do (the issue asks for a free event loop); the difference
between the two is what the trip to a worker thread and back costs.

So at one client it shows what the service's middleware, dependencies, batcher and
metrics cost over the least a design that keeps the event loop free needs on this HTTP
stack (uvicorn, httptools, FastAPI's multipart form): in the default run of 2026-12-03
23:12 UTC the thin route was 0.43-0.52 ms faster than the service in every round.
``python -m benchmarks.run`` reports its p50 against the same decode + pre-processing +
one run as the service's. Serve it with ``uvicorn
benchmarks.thin_app:app``; it reads the ``VISION_*`` settings as the service does (model
repository, landmark model, threads, JPEG draft, image limits) and serves the landmark
version the benchmark's pipeline times. Nothing else imports it.
"""

from __future__ import annotations

from typing import Annotated, Any

import anyio
import numpy as np
from fastapi import FastAPI, File, UploadFile

from benchmarks.run import landmark_version
from service.batching import Normalization, decode_rows_for
from service.decoding import LandmarkPointsDecoder, build_decoder
from service.limits import configure_uploads
from service.runtime import OnnxSession, read_config
from service.settings import Settings

settings = Settings()
# The service's spool size (its create_app does the same), so a large upload costs the same
# here as there.
configure_uploads(settings.upload_spool_bytes)
version_dir = landmark_version(settings)  # the version benchmarks.run's pipeline times
config = read_config(version_dir)
graph = config.graph_configs()["model"]
session = OnnxSession(version_dir / graph.file, settings)
normalization = Normalization.of(
    config.preprocess.scale, config.preprocess.mean, config.preprocess.std
)
decoder = build_decoder(
    config.task, config.decode, config.labels, {spec.name: spec.shape for spec in graph.outputs}
)
assert isinstance(decoder, LandmarkPointsDecoder), config.task
INPUT_NAME = graph.inputs[0].name
# The service's default min_score for /recognize.
MIN_SCORE = 0.5

app = FastAPI()


def recognize(data: bytes) -> list[dict[str, Any]]:
    """The upload's landmarks, computed as a lone request in the service computes them."""
    rows, transform = decode_rows_for(data, config.preprocess, settings)
    pre = config.preprocess
    tensor = np.empty((1, 3, pre.height, pre.width), np.float32)  # (N, C, H, W)
    normalization.into(rows.pixels, tensor)
    outputs = session.run({INPUT_NAME: tensor})
    points = decoder.decode(outputs, transform, min_score=MIN_SCORE)
    return [
        {"class_id": p.class_id, "label": p.label, "score": p.score, "point": [p.x, p.y]}
        for p in points
    ]


@app.post("/recognize")
async def recognize_in_thread(image: Annotated[UploadFile, File()]) -> dict[str, Any]:
    """The pipeline in one worker-thread trip: the event loop stays free."""
    data = await image.read()
    return {"landmarks": await anyio.to_thread.run_sync(recognize, data)}


@app.post("/recognize-on-loop")
async def recognize_on_loop(image: Annotated[UploadFile, File()]) -> dict[str, Any]:
    """The pipeline on the event loop, blocking it (what the service must not do)."""
    return {"landmarks": recognize(await image.read())}
