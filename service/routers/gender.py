"""POST /gender: female/male from multi-level contour features fused with semantic
features (seed 003), optionally with the contour map the model saw."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Query, Request, UploadFile

from service.decoding import GenderDecoder
from service.dependencies import DecodePoolDep, RegistryDep, SettingsDep
from service.schemas import UPLOAD_PROBLEMS, GenderResponse, ModelRef, problem_responses
from service.serving import infer_images, map_png, read_upload, ready_model, uploads_judged_first

router = APIRouter(tags=["gender"])

ERROR_RESPONSES = problem_responses(
    *UPLOAD_PROBLEMS,
    (422, "a missing field, an out-of-range parameter, or a field or parameter sent twice"),
    (503, "the gender model is not loaded, or overloaded; retry after Retry-After seconds"),
)


@router.post("/gender", responses=ERROR_RESPONSES)
async def classify_gender(
    request: Request,
    image: Annotated[UploadFile, File(description="a product photo of a garment")],
    registry: RegistryDep,
    settings: SettingsDep,
    decode_pool: DecodePoolDep,
    contour: Annotated[
        bool, Query(description="also return the contour map as an 8-bit PNG")
    ] = False,
) -> GenderResponse:
    """Classify a garment as womenswear or menswear, optionally with its contour map."""
    data = await read_upload(image, settings.max_upload_bytes)  # before the model: as /recognize
    async with uploads_judged_first(decode_pool, settings, [data]):
        serving = ready_model(registry, settings.gender_model, GenderDecoder)
    outputs, (transform,) = await infer_images(
        serving, [data], settings, decode_pool, request.is_disconnected
    )
    result = serving.decoder.decode(outputs)
    return GenderResponse(
        model=ModelRef(name=serving.config.name, version=serving.config.version),
        label=result.label,
        score=result.score,
        probabilities=result.probabilities,
        contour_map=(map_png(result.contour_map, transform, serving.config) if contour else None),
    )
