"""The naive peer: FastAPI + ONNX Runtime written the way the usual tutorials do it.

One request, one ``session.run``; the upload is decoded, resized and normalised inside the
``async`` handler, on the event loop; ONNX Runtime with its default session options; the
answer is the cells whose confidence passes 0.5 with their class. Serve it with
``uvicorn benchmarks.naive_app:app`` (``NAIVE_MODEL_DIR`` = a landmark version directory).
It exists only as the baseline of ``python -m benchmarks.run``; nothing imports it.

``POST /upload`` is the HTTP floor: the same multipart upload read and its size answered,
no decoding and no model, so what HTTP alone costs at concurrency 1 is measured too.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, File, UploadFile
from PIL import Image

MODEL_DIR = Path(
    os.environ.get(
        "NAIVE_MODEL_DIR",
        Path(__file__).resolve().parents[1] / "models" / "repository" / "landmark" / "1",
    )
)
CONFIG = json.loads((MODEL_DIR / "config.json").read_text())
PRE = CONFIG["preprocess"]
MEAN = np.array(PRE["mean"], dtype=np.float32)
STD = np.array(PRE["std"], dtype=np.float32)

# The tutorials' provider lists: CPU, or on a GPU "CUDA, then CPU" (benchmarks.run --providers).
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}[os.environ.get("NAIVE_PROVIDERS", "cpu")]
session = ort.InferenceSession(str(MODEL_DIR / CONFIG["file"]), providers=PROVIDERS)
input_name = session.get_inputs()[0].name
app = FastAPI()


@app.post("/recognize")
async def predict(image: UploadFile = File(...)) -> dict[str, Any]:  # noqa: B008 (tutorial style)
    data = await image.read()
    img = Image.open(io.BytesIO(data)).convert("RGB").resize((PRE["width"], PRE["height"]))
    x = np.array(img).astype(np.float32) / 255.0
    x = (x - MEAN) / STD
    x = x.transpose(2, 0, 1)[np.newaxis]
    class_probs, confidence, points = session.run(None, {input_name: x})
    cells = np.argwhere(confidence[0] > 0.5)
    return {
        "landmarks": [
            {
                "class_id": int(class_probs[0][tuple(cell)].argmax()),
                "score": float(confidence[0][tuple(cell)]),
                "point": points[0][tuple(cell)].tolist(),
            }
            for cell in cells
        ]
    }


@app.post("/upload")
async def upload(image: UploadFile = File(...)) -> dict[str, int]:  # noqa: B008 (tutorial style)
    return {"bytes": len(await image.read())}
