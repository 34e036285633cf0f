"""Attention-editable classification (seed 002): the class with its attention map, the
class recomputed from a person's edited map, and the teacher records those edits leave.

The model is two graphs (models/repository/README.md, "Several graphs"): ``features``
(image -> feature map, attention map, attention-branch probabilities) and ``perception``
(feature map + any attention map -> probabilities). A correction needs only the second
when the image's feature map is cached (FeatureCache, keyed by the image bytes' sha256).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated

import anyio
import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile

from service.attention import (
    FeatureCache,
    ImageFeatures,
    decode_mask,
    image_key,
    map_to_png,
    mask_to_grid,
)
from service.batching import Disconnected, decode_upload
from service.decoding import AttentionDecoder, Classification
from service.dependencies import (
    DecodePoolDep,
    RegistryDep,
    SettingsDep,
    check_feedback_key,
)
from service.errors import InvalidField, echo
from service.feedback import FeedbackStore, TeacherRecord
from service.imaging import SERVED_FORMATS_TEXT
from service.runtime import LoadedModel, ModelConfig, OnnxSession
from service.schemas import (
    ORIGIN_REFUSAL,
    UPLOAD_PROBLEMS,
    AttentionResponse,
    ClassPrediction,
    CorrectionResponse,
    FeedbackResponse,
    ModelRef,
    ScoredClass,
    problem_responses,
)
from service.serving import about_field, map_png, read_upload, ready_model, uploads_judged_first
from service.settings import Settings
from service.workers import WorkerPool

logger = logging.getLogger(__name__)

router = APIRouter(tags=["attention"])

ERROR_RESPONSES = problem_responses(
    *UPLOAD_PROBLEMS,
    (422, "a missing field, an unknown label, save without a label, or a field sent twice"),
    (
        503,
        "the attention model is not loaded, or the teacher-record database is unreachable,"
        " read-only or full; retry after Retry-After seconds",
    ),
)

CORRECT_ERRORS = ERROR_RESPONSES | problem_responses(
    (
        403,
        "save was asked with an API key that may not save (VISION_FEEDBACK_API_KEYS); or "
        + ORIGIN_REFUSAL,
    ),
    (507, "save was asked and the teacher-record store holds VISION_FEEDBACK_MAX_RECORDS"),
)


@dataclass(frozen=True)
class AttentionModel:
    """A ready attention model with its parts narrowed to non-optional."""

    model: LoadedModel
    config: ModelConfig
    decoder: AttentionDecoder
    features: OnnxSession
    perception: OnnxSession

    @property
    def ref(self) -> ModelRef:
        return ModelRef(name=self.config.name, version=self.config.version)

    @property
    def cache_prefix(self) -> tuple[str, str]:
        return self.config.name, self.config.version


def get_feature_cache(request: Request) -> FeatureCache:
    cache: FeatureCache = request.app.state.feature_cache
    return cache


def get_feedback_store(request: Request) -> FeedbackStore:
    store: FeedbackStore = request.app.state.feedback_store
    return store


def attention_model(registry: RegistryDep, settings: SettingsDep) -> AttentionModel:
    """The attention model if ready, else 503 with the reason (404 if not served here)."""
    serving = ready_model(registry, settings.attention_model, AttentionDecoder, one_graph=False)
    names = serving.decoder.config
    # Present once loaded: the runtime checks the decode block's graph roles at load time.
    features = serving.model.sessions[names.features_graph]
    perception = serving.model.sessions[names.perception_graph]
    return AttentionModel(serving.model, serving.config, serving.decoder, features, perception)


def _prediction(result: Classification) -> ClassPrediction:
    return ClassPrediction(
        class_id=result.class_id,
        label=result.label,
        score=result.score,
        top_k=[
            ScoredClass(class_id=c.class_id, label=c.label, score=c.score) for c in result.top_k
        ],
    )


async def compute_features(
    data: bytes,
    serving: AttentionModel,
    settings: Settings,
    pool: WorkerPool,
    disconnected: Disconnected,
) -> ImageFeatures:
    """Decode and letterbox (decode pool), then the features graph and the perception graph
    with the model's own map, each batched with concurrent requests."""
    names = serving.decoder.config
    model = serving.model
    # Both graphs' slots are taken before decoding: a full queue of either answers 503
    # without spending CPU, and a request whose features graph ran is never refused at the
    # perception graph (that run would be thrown away).
    with (
        model.batcher(names.features_graph).slot() as features_slot,
        model.batcher(names.perception_graph).slot() as perception_slot,
    ):
        rows, transform = await decode_upload(data, serving.config.preprocess, settings, pool)
        extracted = await model.infer(
            {serving.features.inputs[0].name: rows},
            names.features_graph,
            reservation=features_slot,
            disconnected=disconnected,
        )
        perceived = await model.infer(
            {
                names.feature_map: extracted[names.feature_map],
                names.attention_map: extracted[names.attention_map],
            },
            names.perception_graph,
            reservation=perception_slot,
            disconnected=disconnected,
        )
    # Copies: a batched request's outputs are views of the whole batch's arrays, and these
    # may live on in the feature cache, which would keep every row of that batch alive.
    return ImageFeatures(
        feature_map=extracted[names.feature_map].copy(),
        attention_map=extracted[names.attention_map].copy(),
        attention_probs=extracted[names.attention_probs][0].copy(),
        perception_probs=perceived[names.perception_probs][0].copy(),
        transform=transform,
    )


async def image_features(
    data: bytes,
    serving: AttentionModel,
    settings: SettingsDep,
    cache: FeatureCache,
    pool: WorkerPool,
    disconnected: Disconnected,
) -> tuple[ImageFeatures, bool]:
    """The upload's features from the cache (True) or freshly computed and cached (False)."""
    key = (*serving.cache_prefix, image_key(data))
    cached = cache.get(key)
    if cached is not None:
        return cached, True
    computed = await compute_features(data, serving, settings, pool, disconnected)
    cache.put(key, computed)
    return computed, False


@router.post("/attention", responses=ERROR_RESPONSES)
async def classify_with_attention(
    request: Request,
    image: Annotated[UploadFile, File(description=f"the photo ({SERVED_FORMATS_TEXT})")],
    registry: RegistryDep,
    settings: SettingsDep,
    decode_pool: DecodePoolDep,
) -> AttentionResponse:
    """Classify an image; return both branches' classes and the attention map."""
    data = await read_upload(image, settings.max_upload_bytes)  # before the model: as /recognize
    async with uploads_judged_first(decode_pool, settings, [data]):
        serving = attention_model(registry, settings)
    found, _ = await image_features(
        data, serving, settings, get_feature_cache(request), decode_pool, request.is_disconnected
    )
    branch = serving.decoder.classify(found.attention_probs)
    return AttentionResponse(
        model=serving.ref,
        prediction=_prediction(serving.decoder.classify(found.perception_probs)),
        attention_branch=ScoredClass(
            class_id=branch.class_id, label=branch.label, score=branch.score
        ),
        attention_map=map_png(found.attention_map, found.transform, serving.config),
    )


def _edited_map(
    data: bytes, features: ImageFeatures, serving: AttentionModel, settings: SettingsDep
) -> npt.NDArray[np.float32]:
    mask = decode_mask(data, max_pixels=settings.max_image_pixels, max_side=settings.max_image_side)
    pre, grid = serving.config.preprocess, serving.decoder.config.map
    return mask_to_grid(mask, features.transform, pre.height, pre.width, grid.height, grid.width)


# What pydantic reads as true in a form field, so that the key check sees save=true where
# FastAPI will (the handler checks again, should the two ever disagree).
TRUE_FORM_VALUES = frozenset({"1", "on", "t", "true", "y", "yes"})


async def authorize_save(request: Request, settings: SettingsDep) -> str | None:
    """The ID of the API key a teacher record would be saved with (``check_feedback_key``),
    when the form asks to save; None when it does not. A dependency, so that it runs before
    FastAPI checks the route's fields: like the API key, a key that may not save is 401/403
    whatever else is wrong with the request."""
    form = await request.form()  # parsed once: FastAPI reads the same, cached
    if str(form.get("save", "")).lower() not in TRUE_FORM_VALUES:
        return None
    return check_feedback_key(request, settings)


@router.post("/attention/correct", responses=CORRECT_ERRORS)
async def correct_with_edited_map(
    request: Request,
    checked_saver: Annotated[str | None, Depends(authorize_save)],
    image: Annotated[UploadFile, File(description="the photo, as sent to /attention")],
    mask: Annotated[
        UploadFile,
        File(
            description="the edited attention map: luminance 0..255 = 0..1; with the "
            "image's aspect ratio it covers the image, otherwise the map grid"
        ),
    ],
    registry: RegistryDep,
    settings: SettingsDep,
    decode_pool: DecodePoolDep,
    label: Annotated[str | None, Form(description="the true class name")] = None,
    save: Annotated[bool, Form(description="store a teacher record (needs label)")] = False,
) -> CorrectionResponse:
    """Re-classify with the edited map replacing the model's; optionally keep the edit."""
    saved_by = ""
    if save:
        saved_by = (
            checked_saver if checked_saver is not None else check_feedback_key(request, settings)
        )
    data = await read_upload(image, settings.max_upload_bytes)  # before the model: as /recognize
    with about_field("mask"):
        mask_data = await read_upload(mask, settings.max_upload_bytes)
    if save and (label is None or not label.strip()):  # needs no model either
        raise InvalidField("save=true needs the true class in the label field")
    async with uploads_judged_first(decode_pool, settings, [data], mask=mask_data):
        serving = attention_model(registry, settings)
    label_id: int | None = None
    if label is not None:
        label = label.strip()
        if label not in serving.decoder.labels:
            raise InvalidField(
                f"label {echo(label)} is not one of the model's labels "
                f"{list(serving.decoder.labels)}"
            )
        label_id = serving.decoder.labels.index(label)
    if save:  # a full store refuses before the image is decoded and run, not after
        await anyio.to_thread.run_sync(get_feedback_store(request).check_room)
    found, hit = await image_features(
        data, serving, settings, get_feature_cache(request), decode_pool, request.is_disconnected
    )
    edited = await decode_pool.run(_edited_map, mask_data, found, serving, settings)
    names = serving.decoder.config
    perceived = await serving.model.infer(
        {names.feature_map: found.feature_map, names.attention_map: edited},
        names.perception_graph,
        disconnected=request.is_disconnected,
    )
    probs = perceived[names.perception_probs][0]
    original = serving.decoder.classify(found.perception_probs)
    corrected = serving.decoder.classify(probs)
    feedback_id = None
    if save:
        assert label is not None and label_id is not None
        grid = serving.decoder.config.map
        record = TeacherRecord(
            model_name=serving.config.name,
            model_version=serving.config.version,
            label=label,
            label_id=label_id,
            perception_class_id=original.class_id,
            attention_class_id=serving.decoder.classify(found.attention_probs).class_id,
            corrected_class_id=corrected.class_id,
            image=data,
            edited_map=map_to_png(edited[0, 0]),
            model_map=map_to_png(found.attention_map[0, 0]),
            map_height=grid.height,
            map_width=grid.width,
            saved_by=saved_by,
        )
        # Durably committed (service/feedback) before the response is built; a database
        # failure is a 503 (StoreUnavailable) and nothing half-written stays behind.
        feedback_id = await anyio.to_thread.run_sync(get_feedback_store(request).add, record)
        logger.info(
            "teacher record %s saved: %s, label %r, key %s",
            feedback_id,
            f"{record.model_name}/{record.model_version}",
            label,
            saved_by or "(no keys)",
        )
    return CorrectionResponse(
        model=serving.ref,
        original=_prediction(original),
        corrected=_prediction(corrected),
        attention_map=map_png(found.attention_map, found.transform, serving.config),
        edited_map=map_png(edited, found.transform, serving.config),
        feature_cache="hit" if hit else "miss",
        feedback_id=feedback_id,
    )


@router.get(
    "/attention/feedback",
    responses={status: ERROR_RESPONSES[status] for status in (401, 503)},
)
async def count_feedback(request: Request) -> FeedbackResponse:
    """How many teacher records are stored: in total, per label, misrecognised."""
    counts = await anyio.to_thread.run_sync(get_feedback_store(request).counts)
    return FeedbackResponse(
        total=counts.total,
        per_label=counts.per_label,
        misrecognised=counts.misrecognised,
        misrecognised_attention_branch=counts.misrecognised_attention_branch,
        per_model_version=counts.per_model_version,
    )
