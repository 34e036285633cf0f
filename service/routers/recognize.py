"""POST /recognize: landmark classes and reference points (seed 000)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Query, Request, UploadFile

from service.decoding import LandmarkPointsDecoder
from service.dependencies import DecodePoolDep, RegistryDep, SettingsDep
from service.imaging import SERVED_FORMATS_TEXT
from service.schemas import (
    UPLOAD_PROBLEMS,
    ImageSize,
    Landmark,
    ModelRef,
    Point,
    RecognizeResponse,
    problem_responses,
)
from service.serving import infer_images, read_upload, ready_model, uploads_judged_first

router = APIRouter(tags=["recognition"])

# The contract's default: report landmarks the model is at least even odds on.
DEFAULT_MIN_SCORE = 0.5

ERROR_RESPONSES = problem_responses(
    *UPLOAD_PROBLEMS,
    (422, "a missing field, an out-of-range parameter, or a field or parameter sent twice"),
    (503, "the landmark model is not loaded, or overloaded; retry after Retry-After seconds"),
)


@router.post("/recognize", responses=ERROR_RESPONSES)
async def recognize_landmarks(
    request: Request,
    image: Annotated[UploadFile, File(description=f"the photo ({SERVED_FORMATS_TEXT})")],
    registry: RegistryDep,
    settings: SettingsDep,
    decode_pool: DecodePoolDep,
    min_score: Annotated[
        float,
        # NaN would fail le=1.0 with a message about the bound; say what is wrong instead.
        Query(ge=0.0, le=1.0, allow_inf_nan=False, description="lowest landmark score to report"),
    ] = DEFAULT_MIN_SCORE,
) -> RecognizeResponse:
    """Recognise landmarks: class, score and reference point in image pixels."""
    # The upload's own checks first: a bad upload is the client's error even while the
    # model is loading (415 / 413, not 503).
    data = await read_upload(image, settings.max_upload_bytes)
    async with uploads_judged_first(decode_pool, settings, [data]):
        serving = ready_model(registry, settings.recognize_model, LandmarkPointsDecoder)
    outputs, (transform,) = await infer_images(
        serving, [data], settings, decode_pool, request.is_disconnected
    )
    points = serving.decoder.decode(outputs, transform, min_score=min_score)
    return RecognizeResponse(
        model=ModelRef(name=serving.config.name, version=serving.config.version),
        image=ImageSize(width=transform.image_width, height=transform.image_height),
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
