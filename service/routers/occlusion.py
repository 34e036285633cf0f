"""POST /occlusion and POST /faces/verify: occlusion pattern and face embedding (seed 001)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Request, UploadFile

from service.batching import Disconnected
from service.decoding import OcclusionDecoder, OcclusionResult
from service.dependencies import DecodePoolDep, RegistryDep, SettingsDep
from service.imaging import LetterboxTransform
from service.schemas import (
    UPLOAD_PROBLEMS,
    Box,
    ImageSize,
    ModelRef,
    Occlusion,
    OcclusionBlocks,
    OcclusionGrid,
    OcclusionResponse,
    VerifiedFace,
    VerifyResponse,
    problem_responses,
)
from service.serving import (
    ServingModel,
    about_field,
    infer_images,
    read_upload,
    ready_model,
    uploads_judged_first,
)
from service.settings import Settings
from service.workers import WorkerPool

router = APIRouter(tags=["faces"])

ERROR_RESPONSES = problem_responses(
    *UPLOAD_PROBLEMS,
    (422, "a missing field, or a field or parameter sent twice"),
    (503, "the occlusion model is not loaded, or overloaded; retry after Retry-After seconds"),
)


async def infer_faces(
    serving: ServingModel[OcclusionDecoder],
    uploads: list[bytes],
    settings: Settings,
    pool: WorkerPool,
    disconnected: Disconnected,
    fields: Sequence[str] | None = None,
) -> list[tuple[OcclusionResult, LetterboxTransform]]:
    """Every upload as one request of len(uploads) rows through the model's dynamic
    batcher; each row decoded into its occlusion result (``fields``: see infer_images)."""
    outputs, transforms = await infer_images(serving, uploads, settings, pool, disconnected, fields)
    size = (serving.config.preprocess.height, serving.config.preprocess.width)
    return [
        (serving.decoder.decode(outputs, transform, size, index), transform)
        for index, transform in enumerate(transforms)
    ]


def occlusion_body(result: OcclusionResult, decoder: OcclusionDecoder) -> Occlusion:
    """The contract's ``occlusion`` object of one face."""
    grid = decoder.config.grid
    blocks = box = None
    if result.blocks is not None and result.box is not None:
        r0, r1, c0, c1 = result.blocks
        blocks = OcclusionBlocks(row_start=r0, row_end=r1, col_start=c0, col_end=c1)
        x0, y0, x1, y1 = result.box
        box = Box(x0=x0, y0=y0, x1=x1, y1=y1)
    return Occlusion(
        occluded=result.occluded,
        pattern_id=result.pattern_id,
        score=result.score,
        grid=OcclusionGrid(rows=grid.rows, cols=grid.cols),
        blocks=blocks,
        box=box,
    )


@router.post("/occlusion", responses=ERROR_RESPONSES)
async def detect_occlusion(
    request: Request,
    image: Annotated[UploadFile, File(description="an aligned or roughly cropped face")],
    registry: RegistryDep,
    settings: SettingsDep,
    decode_pool: DecodePoolDep,
) -> OcclusionResponse:
    """Occlusion pattern (grid blocks and pixel box) and identity embedding of a face."""
    data = await read_upload(image, settings.max_upload_bytes)  # before the model: as /recognize
    async with uploads_judged_first(decode_pool, settings, [data]):
        serving = ready_model(registry, settings.occlusion_model, OcclusionDecoder)
    [(result, transform)] = await infer_faces(
        serving, [data], settings, decode_pool, request.is_disconnected
    )
    return OcclusionResponse(
        model=ModelRef(name=serving.config.name, version=serving.config.version),
        image=ImageSize(width=transform.image_width, height=transform.image_height),
        occlusion=occlusion_body(result, serving.decoder),
        embedding=[float(v) for v in result.embedding],
    )


@router.post("/faces/verify", responses=ERROR_RESPONSES)
async def verify_faces(
    request: Request,
    image_a: Annotated[UploadFile, File(description="the first face")],
    image_b: Annotated[UploadFile, File(description="the second face")],
    registry: RegistryDep,
    settings: SettingsDep,
    decode_pool: DecodePoolDep,
) -> VerifyResponse:
    """Cosine similarity of two faces, the same-person decision and both occlusions."""
    fields = ("image_a", "image_b")
    uploads = []
    for field, upload in zip(fields, (image_a, image_b), strict=True):
        with about_field(field):
            uploads.append(await read_upload(upload, settings.max_upload_bytes))
    async with uploads_judged_first(decode_pool, settings, uploads, fields=fields):
        serving = ready_model(registry, settings.occlusion_model, OcclusionDecoder)
    results = await infer_faces(
        serving, uploads, settings, decode_pool, request.is_disconnected, fields
    )
    (a, _), (b, _) = results
    similarity = float(np.clip(np.dot(a.embedding, b.embedding), -1.0, 1.0))
    threshold = serving.decoder.config.verify_threshold
    return VerifyResponse(
        model=ModelRef(name=serving.config.name, version=serving.config.version),
        similarity=similarity,
        threshold=threshold,
        same=similarity >= threshold,
        faces=[
            VerifiedFace(
                image=ImageSize(width=t.image_width, height=t.image_height),
                occlusion=occlusion_body(r, serving.decoder),
            )
            for r, t in results
        ],
    )
