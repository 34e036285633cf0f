"""What the service serves: each model's version, signature, labels, providers, metrics."""

from __future__ import annotations

from fastapi import APIRouter

from service.dependencies import RegistryDep
from service.runtime import LoadedModel
from service.schemas import ModelInfo, ModelsResponse, TensorInfo

router = APIRouter(tags=["models"])


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
        info.inputs = [
            TensorInfo(**spec.model_dump(include={"name", "datatype", "shape"}))
            for spec in config.inputs
        ]
        info.outputs = [
            TensorInfo(**spec.model_dump(include={"name", "datatype", "shape"}))
            for spec in config.outputs
        ]
        info.labels = list(config.labels)
        info.metrics = dict(config.metrics)
    return info


@router.get("/models")
async def list_models(registry: RegistryDep) -> ModelsResponse:
    """List every configured model with its state."""
    return ModelsResponse(models=[model_info(model) for model in registry.models.values()])
