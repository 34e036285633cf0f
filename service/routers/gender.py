"""POST /gender: female/male from multi-level contour features fused with semantic
features (seed 003), optionally with the contour map the model saw."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Query, Request, UploadFile
from pydantic import BaseModel, ConfigDict

from service.decoding import GenderDecoder
from service.dependencies import DecodeLimiterDep, RegistryDep, SettingsDep
from service.schemas import UPLOAD_PROBLEMS, MapPng, ModelRef, problem_responses
from service.serving import infer_images, map_png, read_upload, ready_model

router = APIRouter(tags=["gender"])

ERROR_RESPONSES = problem_responses(
    *UPLOAD_PROBLEMS,
    (422, "a missing field or an out-of-range parameter"),
    (503, "the gender model is not loaded; retry after Retry-After seconds"),
)


class GenderResponse(BaseModel):
    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "model": {"name": "gender", "version": "1"},
                    "label": "female",
                    "score": 0.93,
                    "probabilities": {"female": 0.93, "male": 0.07},
                    "contour_map": {
                        "width": 128,
                        "height": 128,
                        "png_base64": "iVBORw0KGgoAAAANSUhEUgAAAIAAAACACAAAAADrRVxmAAA...",
                        "extent": {"x0": 0.0, "y0": -40.0, "x1": 400.0, "y1": 360.0},
                    },
                }
            ]
        },
    )

    model: ModelRef
    label: str
    score: float
    probabilities: dict[str, float]
    contour_map: MapPng | None = None  # only with ?contour=true


@router.post("/gender", responses=ERROR_RESPONSES)
async def classify_gender(
    request: Request,
    image: Annotated[UploadFile, File(description="a product photo of a garment")],
    registry: RegistryDep,
    settings: SettingsDep,
    decode_limiter: DecodeLimiterDep,
    contour: Annotated[
        bool, Query(description="also return the contour map as an 8-bit PNG")
    ] = False,
) -> GenderResponse:
    """Classify a garment as womenswear or menswear, optionally with its contour map."""
    serving = ready_model(registry, settings.gender_model, GenderDecoder)
    data = await read_upload(image, settings.max_upload_bytes)
    outputs, (transform,) = await infer_images(
        serving, [data], settings, decode_limiter, request.is_disconnected
    )
    result = serving.decoder.decode(outputs)
    return GenderResponse(
        model=ModelRef(name=serving.config.name, version=serving.config.version),
        label=result.label,
        score=result.score,
        probabilities=result.probabilities,
        contour_map=(map_png(result.contour_map, transform, serving.config) if contour else None),
    )
