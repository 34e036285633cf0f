"""What the model endpoints share: find the ready model, read the upload, run it through
the batcher, and return a map (attention, contour) as a PNG over the image."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt
from fastapi import UploadFile

from service.attention import decode_mask, map_to_png, png_base64
from service.batching import Disconnected, Feed, ImageRows, decode_rows_for, decode_upload
from service.decoding import (
    AttentionDecoder,
    GenderDecoder,
    LandmarkPointsDecoder,
    OcclusionDecoder,
)
from service.errors import (
    InvalidImage,
    ModelNotFound,
    NotReady,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from service.imaging import LetterboxTransform, check_content_type, decode_image
from service.runtime import LoadedModel, ModelConfig, ModelRegistry
from service.schemas import MapExtent, MapPng
from service.settings import Settings
from service.workers import WorkerPool

D = TypeVar("D")


@dataclass(frozen=True)
class ServingModel(Generic[D]):
    """A ready model with its parts narrowed to non-optional; ``decoder`` of the task the
    endpoint expects."""

    model: LoadedModel
    config: ModelConfig
    decoder: D


def ready_model(
    registry: ModelRegistry, name: str, decoder_type: type[D], *, one_graph: bool = True
) -> ServingModel[D]:
    """Model ``name`` if it is loaded, warmed, decodes with ``decoder_type`` and (with
    ``one_graph``) is a single graph; otherwise 503 (NotReady) saying which it is not, or
    404 (ModelNotFound) when this server does not serve ``name`` at all."""
    model = registry.get(name)
    if model is None and registry.problem is not None:
        # Loading, shutting down, or the repository unusable: retrying may help.
        raise NotReady(f"model {name!r} is not available: {registry.problem}")
    if model is None:
        # Retrying never helps here, so not a 503 with Retry-After.
        raise ModelNotFound(
            f"model {name!r} is not served here: it is not among this server's models "
            "(its model repository and VISION_MODELS)"
        )
    if not model.ready or model.config is None or model.decoder is None:
        raise NotReady(f"model {name!r} is not ready: {model.error or 'loading'}")
    decoder = model.decoder
    if not isinstance(decoder, decoder_type):
        task = getattr(decoder_type, "task", decoder_type.__name__)
        raise NotReady(f"model {name!r} is not a {task} model")
    if one_graph and model.session is None:
        raise NotReady(f"model {name!r} has several graphs; this endpoint runs one")
    return ServingModel(model, model.config, decoder)


# The setting that names each endpoint group's model -> the task its routes decode (the
# decoder type their ready_model calls ask for).
ENDPOINT_TASKS: Mapping[str, str] = {
    "recognize_model": LandmarkPointsDecoder.task,
    "attention_model": AttentionDecoder.task,
    "gender_model": GenderDecoder.task,
    "occlusion_model": OcclusionDecoder.task,
}


class MisconfiguredEndpoint(ValueError):
    """An endpoint setting names a served model of another task: every request to those
    routes would be refused, and no retry or reload of that model would change it."""


def check_endpoint_models(
    settings: Settings, registry: ModelRegistry, endpoints: Mapping[str, str]
) -> list[str]:
    """Check at start that each endpoint group's model (``endpoints``: POST path -> the
    setting naming its model) decodes the group's task. Raises MisconfiguredEndpoint for
    one that does not; returns a warning for each group whose model this server does not
    serve (those routes answer 404, as a deployment serving some models means)."""
    if registry.problem is not None:  # no models at all: readiness says why
        return []
    warnings = []
    for setting in ENDPOINT_TASKS:
        name: str = getattr(settings, setting)
        model = registry.get(name)
        if model is None:
            warnings.append(
                f"{_routes(endpoints, setting)} will answer 404: VISION_{setting.upper()} "
                f"names {name!r}, which is not among this server's models"
            )
        elif model.config is not None:
            problem = task_mismatch(settings, endpoints, name, model.config.task)
            if problem is not None:
                raise MisconfiguredEndpoint(f"{problem}: name one of that task, or unset it")
    return warnings


def task_mismatch(
    settings: Settings, endpoints: Mapping[str, str], name: str, task: str
) -> str | None:
    """Why model ``name`` of ``task`` cannot serve the endpoint groups whose setting names
    it, or None when it can (or none names it)."""
    for setting, wanted in ENDPOINT_TASKS.items():
        if getattr(settings, setting) == name and task != wanted:
            routes = _routes(endpoints, setting)
            verb = "need" if " and " in routes else "needs"
            return (
                f"VISION_{setting.upper()} names {name!r}, a {task} model, but {routes} "
                f"{verb} a {wanted} model"
            )
    return None


def _routes(endpoints: Mapping[str, str], setting: str) -> str:
    return " and ".join(path for path, named in endpoints.items() if named == setting)


# What one upload can be refused for: 400, 413, 415.
UPLOAD_ERRORS = (InvalidImage, PayloadTooLarge, UnsupportedMediaType)


@contextmanager
def about_field(name: str | None) -> Iterator[None]:
    """Prefix the detail of an upload error raised inside with its form field ``name``
    (None: leave it), for endpoints that take more than one image."""
    try:
        yield
    except UPLOAD_ERRORS as exc:
        if name is not None:
            exc.detail = f"{name}: {exc.detail}"
        raise


async def read_upload(upload: UploadFile, max_bytes: int) -> bytes:
    """The upload's bytes after the content-type (415) and size (413) checks. The body-size
    middleware has already cut off bodies far over the limit while they streamed."""
    check_content_type(upload.content_type)
    data = await upload.read()
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"the upload is {len(data)} bytes; the limit is {max_bytes}")
    return data


@asynccontextmanager
async def uploads_judged_first(
    pool: WorkerPool,
    settings: Settings,
    images: Sequence[bytes],
    *,
    fields: Sequence[str] | None = None,
    mask: bytes | None = None,
) -> AsyncIterator[None]:
    """Around ``ready_model``: when the model is not ready, decode the uploads first (in the
    decode pool, the pixels dropped), so that an empty, broken or oversized one gets the
    400 / 413 a ready model would give it instead of the 503. A client's mistake is never a
    5xx, and a 503's Retry-After would only have it send the same bytes again. ``fields``
    names each image in the errors, as ``infer_images`` does; ``mask``: an attention mask."""
    try:
        yield
    except NotReady:
        pixels, side = settings.max_image_pixels, settings.max_image_side
        for index, data in enumerate(images):
            with about_field(fields[index] if fields else None):
                await pool.run(decode_image, data, max_pixels=pixels, max_side=side)
        if mask is not None:
            await pool.run(decode_mask, mask, max_pixels=pixels, max_side=side)
        raise


async def infer_images(
    serving: ServingModel[Any],
    uploads: Sequence[bytes],
    settings: Settings,
    pool: WorkerPool,
    disconnected: Disconnected,
    fields: Sequence[str] | None = None,
) -> tuple[dict[str, npt.NDArray[Any]], list[LetterboxTransform]]:
    """Decode and letterbox ``uploads`` in the decode pool, then run them as one request of
    ``len(uploads)`` rows through the model's dynamic batcher. Returns the outputs (row i
    is upload i) and each upload's letterbox transform (model input <-> image pixels).
    ``fields``: each upload's form field, named in its decoding errors."""
    batcher = serving.model.batcher()
    name = serving.config.inputs[0].name
    # The slot is taken before decoding: a full queue answers 503 without spending CPU.
    with batcher.slot() as reservation:
        if len(uploads) == 1 and batcher.alone():
            # Nobody to batch with: decode and run in one worker-thread trip.
            def decode() -> tuple[dict[str, Feed], LetterboxTransform]:
                rows, transform = decode_rows_for(uploads[0], serving.config.preprocess, settings)
                return {name: rows}, transform

            outputs, transform = await batcher.run_alone(decode, reservation=reservation, pool=pool)
            return outputs, [transform]
        decoded = []
        for index, data in enumerate(uploads):
            with about_field(fields[index] if fields else None):
                decoded.append(await decode_upload(data, serving.config.preprocess, settings, pool))
        rows = (
            decoded[0][0]
            if len(decoded) == 1
            else ImageRows(
                np.concatenate([r.pixels for r, _ in decoded])  # (N, h, w, 3) uint8
            )
        )
        outputs = await serving.model.infer(
            {name: rows},
            reservation=reservation,
            disconnected=disconnected,
        )
    return outputs, [transform for _, transform in decoded]


def map_png(
    values: npt.NDArray[np.float32], transform: LetterboxTransform, config: ModelConfig
) -> MapPng:
    """A map over the model input (any leading axes of size 1, then ``(h, w)``, values in
    0..1) as a PNG, with the image-pixel rectangle the model input covers."""
    height, width = values.shape[-2:]
    size = np.array([[0.0, 0.0], [config.preprocess.width, config.preprocess.height]])
    corners = transform.to_image(size)  # the model input's corners in image pixels
    return MapPng(
        width=int(width),
        height=int(height),
        png_base64=png_base64(map_to_png(values.reshape(height, width))),
        extent=MapExtent(
            x0=float(corners[0, 0]),
            y0=float(corners[0, 1]),
            x1=float(corners[1, 0]),
            y1=float(corners[1, 1]),
        ),
    )
