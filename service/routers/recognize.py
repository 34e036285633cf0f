"""POST /recognize: landmark classes and reference points (seed 000)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any

import anyio
import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, File, Query, UploadFile

from service.decoding import LandmarkPointsDecoder
from service.dependencies import DecodeLimiterDep, MetricsDep, RegistryDep, SettingsDep
from service.errors import NotReady, PayloadTooLarge
from service.imaging import (
    LetterboxTransform,
    check_content_type,
    decode_image,
    letterbox,
    normalize,
)
from service.runtime import LoadedModel, ModelConfig, OnnxSession
from service.schemas import ImageSize, Landmark, ModelRef, Point, Problem, RecognizeResponse

router = APIRouter(tags=["recognition"])

# The contract's default: report landmarks the model is at least even odds on.
DEFAULT_MIN_SCORE = 0.5

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "content": {"application/problem+json": {}}, "description": text}
    for status, text in (
        (400, "the upload is not a decodable image"),
        (401, "API keys are configured and none or a wrong one was sent"),
        (413, "the upload exceeds the size or pixel limit"),
        (415, "the upload's content type is not an image"),
        (422, "a missing field or an out-of-range parameter"),
        (503, "the landmark model is not loaded; retry after Retry-After seconds"),
    )
}


@dataclass(frozen=True)
class PreparedImage:
    """An upload ready for the graph: ``tensor`` float32 (1, 3, h, w) in model-input pixels."""

    tensor: npt.NDArray[np.float32]
    transform: LetterboxTransform


@dataclass(frozen=True)
class ServingModel:
    """A ready model with its parts narrowed to non-optional."""

    model: LoadedModel
    config: ModelConfig
    session: OnnxSession
    decoder: LandmarkPointsDecoder


def serving_model(registry: RegistryDep, settings: SettingsDep) -> ServingModel:
    """The recognize model if ready, else 503 with the reason."""
    name = settings.recognize_model
    model = registry.get(name)
    if model is None:
        raise NotReady(f"model {name!r} is not configured on this server")
    if not model.ready or model.config is None or model.session is None or model.decoder is None:
        raise NotReady(f"model {name!r} is not ready: {model.error or 'loading'}")
    if not isinstance(model.decoder, LandmarkPointsDecoder):
        raise NotReady(f"model {name!r} is not a landmark_points model")
    return ServingModel(model, model.config, model.session, model.decoder)


def prepare_image(
    data: bytes, config: ModelConfig, max_pixels: int, max_side: int
) -> PreparedImage:
    """Decode, letterbox and normalise one upload (CPU-bound: run in a worker thread)."""
    rgb = decode_image(data, max_pixels=max_pixels, max_side=max_side)
    pre = config.preprocess
    boxed, transform = letterbox(rgb, pre.height, pre.width, pre.pad_value)
    tensor = normalize(boxed, scale=pre.scale, mean=pre.mean, std=pre.std)
    return PreparedImage(tensor, transform)


def timed_run(
    session: OnnxSession, feeds: dict[str, npt.NDArray[Any]]
) -> tuple[dict[str, npt.NDArray[Any]], float]:
    """Run the session and return its outputs with the seconds spent inside it."""
    started = time.perf_counter()
    outputs = session.run(feeds)
    return outputs, time.perf_counter() - started


@router.post("/recognize", responses=ERROR_RESPONSES)
async def recognize_landmarks(
    image: Annotated[UploadFile, File(description="the photo (JPEG, PNG, WebP, BMP, GIF)")],
    registry: RegistryDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    decode_limiter: DecodeLimiterDep,
    min_score: Annotated[
        float, Query(ge=0.0, le=1.0, description="lowest landmark score to report")
    ] = DEFAULT_MIN_SCORE,
) -> RecognizeResponse:
    """Recognise landmarks: class, score and reference point in image pixels."""
    serving = serving_model(registry, settings)
    check_content_type(image.content_type)
    data = await image.read()
    if len(data) > settings.max_upload_bytes:
        raise PayloadTooLarge(
            f"the upload is {len(data)} bytes; the limit is {settings.max_upload_bytes}"
        )
    prepared = await anyio.to_thread.run_sync(
        partial(
            prepare_image,
            data,
            serving.config,
            settings.max_image_pixels,
            settings.max_image_side,
        ),
        limiter=decode_limiter,
    )
    feeds = {serving.config.inputs[0].name: prepared.tensor}
    outputs, seconds = await anyio.to_thread.run_sync(timed_run, serving.session, feeds)
    metrics.inference_seconds.labels(serving.config.name, serving.config.version).observe(seconds)
    points = serving.decoder.decode(outputs, prepared.transform, min_score=min_score)
    return RecognizeResponse(
        model=ModelRef(name=serving.config.name, version=serving.config.version),
        image=ImageSize(
            width=prepared.transform.image_width, height=prepared.transform.image_height
        ),
        landmarks=[
            Landmark(
                class_id=point.class_id,
                label=point.label,
                score=point.score,
                point=Point(x=point.x, y=point.y),
            )
            for point in points
        ],
    )
