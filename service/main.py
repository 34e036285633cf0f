"""Application factory: ``uvicorn --factory service.main:create_app``."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
from fastapi import Depends, FastAPI

from service.admission import MODEL_ENDPOINTS, AdmissionMiddleware
from service.attention import FeatureCache
from service.dependencies import check_api_key, check_request_fields, require_api_key
from service.docs import STARLETTE_PATHS, install_offline_docs
from service.errors import StoreUnavailable, install_exception_handlers
from service.expect import ExpectContinueMiddleware
from service.feedback import FeedbackStore, open_store
from service.head import HeadAsGetMiddleware
from service.imaging import configure_pillow
from service.limits import (
    BodyLimits,
    BodySizeLimitMiddleware,
    UploadGateMiddleware,
    configure_uploads,
)
from service.logs import RequestIdMiddleware, make_handler
from service.metrics import METRICS_STATE_KEY, Metrics, MetricsMiddleware, create_metrics
from service.origin import SameSiteMiddleware
from service.paths import RelativeSlashRedirect
from service.ranges import IgnoreRangeMiddleware
from service.routers import attention, gender, health, metrics, models, occlusion, recognize, ui
from service.routers.v2 import BODY_PATHS as V2_BODY_PATHS
from service.routers.v2 import router as v2_router
from service.runtime import LoadedModel, ModelRegistry, discover_models, load_model
from service.serving import check_endpoint_models
from service.settings import Settings, get_settings
from service.timing import ServerTimingMiddleware
from service.workers import WorkerPool

logger = logging.getLogger("service")


def configure_logging(level: str, log_format: str = "text") -> None:
    """Level for the ``service`` loggers; a handler (text or JSON lines, with request IDs)
    only when nobody configured logging (``service.serve`` configures the root logger)."""
    logger.setLevel(level)
    if not logging.getLogger().handlers and not logger.handlers:
        logger.addHandler(make_handler(log_format))


async def load_registry(settings: Settings, metrics: Metrics | None = None) -> ModelRegistry:
    """Load every configured model, each in its own worker thread, so the event loop stays
    free and several models load concurrently; their batchers report to ``metrics``."""
    names, problem = discover_models(settings)
    loaded: dict[str, LoadedModel] = {}

    async def load_one(name: str) -> None:
        loaded[name] = await anyio.to_thread.run_sync(load_model, name, settings, metrics)

    async with anyio.create_task_group() as group:
        for name in names:
            group.start_soon(load_one, name)
    if problem:
        logger.error("model repository: %s", problem)
    # Keep the configured order, not the order threads happened to finish in.
    return ModelRegistry(models={name: loaded[name] for name in names}, problem=problem)


def log_configuration(settings: Settings) -> None:
    """Say at start what a mistake would otherwise leave unsaid: ``VISION_*`` variables
    that are no setting (ignored), and whether requests need an API key."""
    for name, close in Settings.unknown_environment(os.environ).items():
        hint = f"; did you mean {close}?" if close else ""
        logger.warning("%s is not a setting and is ignored%s", name, hint)
    admin, feedback = len(settings.admin_api_keys), len(settings.feedback_api_keys)
    if settings.api_keys:
        logger.info(
            "API keys required: %d keys, %d of them admin, %d feedback%s; open without one: "
            "health, the docs, /ui%s",
            len(set(settings.valid_api_keys())),
            admin,
            feedback,
            "" if feedback else " (any key may save teacher records)",
            "" if settings.metrics_require_key else ", /metrics",
        )
    else:
        logger.warning(
            "no API keys (VISION_API_KEYS): whoever reaches the port may %s and %s",
            f"store teacher records only with one of {feedback} feedback keys"
            if feedback
            else "store teacher records",
            f"reload models only with one of {admin} admin keys" if admin else "reload models",
        )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    """Load and warm the models before the first request; drop them at shutdown. The state
    it yields reaches the server too: the entry command's connection protocol counts its
    timeouts in the app's metrics (service/protocol.py)."""
    settings: Settings = app.state.settings
    registry = await load_registry(settings, app.state.metrics)
    for model in registry.models.values():
        app.state.metrics.model_ready.labels(model.name, model.version or "").set(
            1 if model.ready else 0
        )
    # A setting that sends an endpoint to a model of another task fails the start: served
    # on, every request there would be refused for good while /health/ready said 200.
    for warning in check_endpoint_models(settings, registry, MODEL_ENDPOINTS):
        logger.warning(warning)
    app.state.registry = registry
    logger.info(
        "serving %s; ready=%s",
        {n: m.state.value for n, m in registry.models.items()},
        registry.ready,
    )
    store: FeedbackStore = app.state.feedback_store
    try:
        versions = await anyio.to_thread.run_sync(store.open)
        logger.info("teacher records: %s (migrations applied now: %s)", store.description, versions)
    except StoreUnavailable as exc:
        # Only saving and counting records need it: the models serve on, those answer 503
        # and retry the migration until the database is back.
        logger.error("teacher records unavailable at start: %s", exc.detail)
    try:
        yield {METRICS_STATE_KEY: app.state.metrics}
    finally:
        app.state.registry = ModelRegistry(problem="shutting down")
        app.state.decode_pool.close()
        await anyio.to_thread.run_sync(store.close)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application; models load in the lifespan, not here."""
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)
    configure_pillow(settings.max_image_pixels)
    configure_uploads(settings.upload_spool_bytes)

    app = FastAPI(
        title="Vision inference service",
        version="0.1.0",
        summary=(
            "Landmarks, attention-editable classification, gender from contour and semantic "
            "features, occlusion-robust face embeddings: ONNX Runtime behind FastAPI."
        ),
        lifespan=lifespan,
        # Served from this app's own copies of the assets (service/docs.py), not a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = create_metrics()
    # Until the lifespan has loaded models, every model endpoint answers 503.
    app.state.registry = ModelRegistry(problem="models are loading")
    # Its threads start with the first decode and stop with the lifespan.
    app.state.decode_pool = WorkerPool(settings.resolved_decode_threads(), "decode")
    app.state.feature_cache = FeatureCache(
        settings.feature_cache_size, app.state.metrics.feature_cache
    )
    app.state.feedback_store = open_store(
        settings.resolved_feedback_url(), max_records=settings.feedback_max_records
    )
    if settings.feedback_require_shared and app.state.feedback_store.backend != "postgresql":
        raise ValueError(
            "VISION_FEEDBACK_REQUIRE_SHARED is set, but the teacher records would go to "
            f"{app.state.feedback_store.description}, a file of this replica's own: set "
            "VISION_FEEDBACK_URL to the PostgreSQL database every replica shares"
        )
    log_configuration(settings)
    app.state.reload_lock = anyio.Lock()

    install_exception_handlers(app)
    protected = [Depends(require_api_key)]
    # The key first: a request without one is 401 whatever its fields.
    single_fields = [*protected, Depends(check_request_fields)]
    app.include_router(health.router)
    app.include_router(models.router, dependencies=protected)
    app.include_router(recognize.router, dependencies=single_fields)
    app.include_router(attention.router, dependencies=single_fields)
    app.include_router(occlusion.router, dependencies=single_fields)
    app.include_router(gender.router, dependencies=single_fields)
    app.include_router(ui.router)
    app.include_router(
        metrics.router, dependencies=protected if settings.metrics_require_key else []
    )
    # KServe V2 maps its own errors to its statuses (400, not 422) and checks keys per route.
    app.include_router(v2_router)
    install_offline_docs(app)
    app.router.default = RelativeSlashRedirect(app.router)

    body_limits = BodyLimits(settings.max_upload_bytes, form_paths=MODEL_ENDPOINTS)
    # Each middleware added wraps the ones before it, so this one is innermost: the access
    # log and metrics (outside it) still see the request as the HEAD it was.
    app.add_middleware(HeadAsGetMiddleware)
    app.add_middleware(IgnoreRangeMiddleware)
    # Metrics (outside it) also see the 413s the size limit answers itself.
    app.add_middleware(BodySizeLimitMiddleware, limits=body_limits, router=app.router)
    # Inside metrics (its 503s are counted), outside the size limit: refuses before reading.
    app.add_middleware(AdmissionMiddleware, limits=body_limits)
    # The routes that take a body: the gate and the size limit may answer them before any
    # route is matched, so the metrics label those answers by these templates too.
    body_paths = [*MODEL_ENDPOINTS, *V2_BODY_PATHS, models.RELOAD_PATH]
    # Outside admission, so that its drains of refused bodies time out too; inside metrics.
    # It answers a missing key on the routes that take bodies before reserving for one.
    app.add_middleware(
        UploadGateMiddleware,
        limits=body_limits,
        max_bytes=settings.max_body_bytes_in_flight,
        timeout_s=settings.body_timeout_s,
        metrics=app.state.metrics,
        check_key=partial(check_api_key, settings=settings) if settings.api_keys else None,
        keyed_paths=body_paths,
    )
    # Outside every middleware that reads a body, so that it sees whether any of them did.
    app.add_middleware(ExpectContinueMiddleware)
    if not settings.api_keys:
        # Before any body is read: a cross-site page's request is refused unread.
        app.add_middleware(SameSiteMiddleware, allowed_hosts=settings.allowed_hosts)
    app.add_middleware(
        MetricsMiddleware,
        metrics=app.state.metrics,
        early_paths=[*body_paths, *STARLETTE_PATHS],
    )
    # Every response, the size limit's 413s too, carries X-Request-ID.
    app.add_middleware(RequestIdMiddleware)
    if settings.server_timing:
        # Outermost: its "app" stage covers every other middleware, and the access line
        # (RequestIdMiddleware, inside it) can read the request's stage timings.
        app.add_middleware(ServerTimingMiddleware)
    return app
