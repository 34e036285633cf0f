"""Liveness and readiness probes; never behind an API key."""

from __future__ import annotations

from fastapi import APIRouter

from service.dependencies import RegistryDep
from service.errors import NotReady
from service.runtime import ModelRegistry
from service.schemas import LiveResponse, ModelHealth, Problem, ReadyResponse

router = APIRouter(prefix="/health", tags=["health"])


def model_health(registry: ModelRegistry) -> dict[str, ModelHealth]:
    """Each configured model's state and failure reason, by name."""
    return {
        name: ModelHealth(state=model.state.value, version=model.version, error=model.error)
        for name, model in registry.models.items()
    }


@router.get("/live")
async def get_live() -> LiveResponse:
    """Answer 200 while the process runs."""
    return LiveResponse()


@router.get("/ready", responses={503: {"model": Problem, "description": "not ready"}})
async def get_ready(registry: RegistryDep) -> ReadyResponse:
    """Answer 200 once every configured model is loaded and warmed, else 503 with reasons."""
    models = model_health(registry)
    if not registry.ready:
        failed = [f"{name}: {health.error}" for name, health in models.items() if health.error]
        reasons = [registry.problem] if registry.problem else []
        detail = "; ".join(reasons + failed) or "models are not ready"
        raise NotReady(detail, extra={"models": {k: v.model_dump() for k, v in models.items()}})
    return ReadyResponse(models=models)
