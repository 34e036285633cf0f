"""What the service serves: each model's version, signature, labels, providers, metrics."""

from __future__ import annotations

import logging

import anyio
from fastapi import APIRouter, Depends, Request

from service.admission import MODEL_ENDPOINTS
from service.dependencies import MetricsDep, RegistryDep, SettingsDep, require_admin_key
from service.errors import ModelNotFound, ReloadFailed
from service.runtime import LoadedModel, TensorSpec, load_model
from service.schemas import (
    ORIGIN_REFUSAL,
    GraphInfo,
    ModelInfo,
    ModelsResponse,
    TensorInfo,
    problem_responses,
)
from service.serving import task_mismatch

router = APIRouter(tags=["models"])
logger = logging.getLogger(__name__)


def _tensors(specs: list[TensorSpec]) -> list[TensorInfo]:
    return [TensorInfo(**spec.model_dump(include={"name", "datatype", "shape"})) for spec in specs]


def model_info(model: LoadedModel) -> ModelInfo:
    """A model's public description; a failed one shows whatever was read before failing."""
    config = model.config
    info = ModelInfo(
        name=model.name,
        version=model.version,
        state=model.state.value,
        error=model.error,
        providers=model.providers,
    )
    if config is not None:
        info.task = config.task
        graphs = config.graph_configs()
        info.inputs = _tensors(next(iter(graphs.values())).inputs)
        info.outputs = _tensors(config.all_outputs())
        if config.graphs is not None:
            info.graphs = {
                name: GraphInfo(
                    file=graph.file, inputs=_tensors(graph.inputs), outputs=_tensors(graph.outputs)
                )
                for name, graph in graphs.items()
            }
        info.labels = list(config.labels)
        info.metrics = dict(config.metrics)
    return info


@router.get("/models")
async def list_models(registry: RegistryDep) -> ModelsResponse:
    """List every configured model with its state."""
    return ModelsResponse(models=[model_info(model) for model in registry.models.values()])


RELOAD_ERRORS = problem_responses(
    (
        403,
        "admin API keys are configured (VISION_ADMIN_API_KEYS) and the key sent is one of "
        "the other API keys; or " + ORIGIN_REFUSAL,
    ),
    (404, "no model of that name is served here"),
    (
        409,
        "the new version failed to load, or is of a task its endpoints cannot serve; the "
        "serving version keeps serving",
    ),
)


# Also named to the upload gate, which checks the API key of a body sent here early.
RELOAD_PATH = "/models/{name}/reload"


def _not_swapped(old: LoadedModel, why: str) -> ReloadFailed:
    """The 409 for a reload that kept ``old`` (serving, or failed before too)."""
    kept = (
        f"version {old.version} keeps serving" if old.ready else "it was not serving before either"
    )
    return ReloadFailed(
        f"{why}; {kept}", extra={"serving_version": old.version if old.ready else None}
    )


@router.post(RELOAD_PATH, responses=RELOAD_ERRORS, dependencies=[Depends(require_admin_key)])
async def reload_model(
    name: str,
    request: Request,
    registry: RegistryDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> ModelInfo:
    """Swap in the version the repository now designates, once it is loaded and warmed.

    That is a new highest version, or the pinned one; until then, and if it fails, the
    version that was serving keeps serving. 404 for a model this server does not serve."""
    if name not in registry.models:
        raise ModelNotFound(
            f"model {name!r} is not served here; known models: {sorted(registry.models)}"
        )
    lock: anyio.Lock = request.app.state.reload_lock
    async with lock:  # one reload at a time: two would race to swap
        old = registry.models[name]
        new = await anyio.to_thread.run_sync(load_model, name, settings, metrics)
        if not new.ready:
            raise _not_swapped(old, f"model {name!r} could not be reloaded: {new.error}")
        # A version of another task would leave its endpoints refusing every request.
        assert new.config is not None  # a ready model has its config
        mismatch = task_mismatch(settings, MODEL_ENDPOINTS, name, new.config.task)
        if mismatch is not None:
            raise _not_swapped(old, f"version {new.version} was not swapped in: {mismatch}")
        # A dict assignment: requests already holding the old model finish on it.
        registry.models[name] = new
        metrics.model_ready.labels(name, new.version or "").set(1)
        if old.version != new.version:
            metrics.model_ready.labels(name, old.version or "").set(0)
    logger.info("model %s reloaded: version %s -> %s", name, old.version, new.version)
    return model_info(new)
