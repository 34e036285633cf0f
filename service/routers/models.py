"""What the service serves: each model's version, signature, labels, providers, metrics."""

from __future__ import annotations

from fastapi import APIRouter

from service.dependencies import RegistryDep
from service.runtime import LoadedModel, TensorSpec
from service.schemas import GraphInfo, ModelInfo, ModelsResponse, TensorInfo

router = APIRouter(tags=["models"])


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
