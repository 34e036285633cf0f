"""Request dependencies: everything comes from ``request.app.state``, set by the lifespan."""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from typing import Annotated

from fastapi import Depends, Request, Security, params
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.errors import Forbidden, InvalidField, Unauthorized, UnsupportedMediaType, echo
from service.metrics import Metrics
from service.runtime import ModelRegistry
from service.settings import Settings
from service.workers import WorkerPool


# Every dependency is ``async def`` though none awaits: FastAPI runs a plain ``def``
# dependency in the thread pool, one thread hop per dependency per request.
async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def get_decode_pool(request: Request) -> WorkerPool:
    pool: WorkerPool = request.app.state.decode_pool
    return pool


# Form bodies whose fields are checked for repeats: a POST's, which FastAPI has parsed by
# then (every POST these routers serve takes a form); a GET's body is never read.
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


async def check_request_fields(request: Request) -> None:
    """4xx for what FastAPI would answer as if the client had meant something else:
    - 422, a query parameter or form field sent more than once (FastAPI keeps the last, so
      two images, or two labels for a saved teacher record, would pass as the last one);
    - 422, a field the route reads from the form sent in the query, or the other way round
      (FastAPI drops it: save=true in the query would store nothing);
    - 415, a POST body that is no form (the photo as the whole body, or JSON), or, to a route
      that reads a file, no multipart form: a urlencoded body (what ``curl --data-binary
      @photo.jpg`` sends) or one without a content type. FastAPI would read each as a form
      without the file: "body.image: Field required"."""
    content_type = request.headers.get("content-type", "").lower()
    media_type = content_type.split(";", 1)[0].strip()
    declared = _declared_fields(request.scope.get("route"))
    if request.method == "POST":
        if declared["file"] and media_type != "multipart/form-data":
            refused = _no_multipart(request, media_type)
        else:
            no_form = content_type and media_type not in FORM_TYPES
            refused = f"is {echo(media_type)}" if no_form else None
        if refused is not None:
            raise UnsupportedMediaType(
                f"the request body {refused}; send multipart/form-data with the image as a "
                "file in the field 'image' (curl -F image=@photo.jpg)"
            )
    is_form = request.method == "POST" and media_type in FORM_TYPES
    form = await request.form() if is_form else None
    sent = {
        "query parameter": Counter(name for name, _ in request.query_params.multi_items()),
        "form field": Counter(name for name, _ in form.multi_items()) if form else Counter(),
    }
    for where, names in sent.items():
        repeated = sorted(name for name, count in names.items() if count > 1)
        if repeated:
            listed = ", ".join(f"{echo(name)} ({names[name]} times)" for name in repeated)
            raise InvalidField(f"{where} sent more than once: {listed}; send each once")
    # A field sent where the route does not read it would be dropped without a word: a
    # label or save=true in the query stores no teacher record, a min_score in the form
    # leaves the default. Other unknown names pass (cache busters, tracing tags).
    for where, names in sent.items():
        elsewhere = "form field" if where == "query parameter" else "query parameter"
        misplaced = sorted(set(names) & (declared[elsewhere] - declared[where]))
        if misplaced:
            listed = ", ".join(echo(name) for name in misplaced)
            if len(misplaced) == 1:
                said = f"sent as a {where}; this endpoint reads it as a {elsewhere}"
            else:
                said = f"sent as {where}s; this endpoint reads them as {elsewhere}s"
            raise InvalidField(f"{listed} {said}")


def _no_multipart(request: Request, media_type: str) -> str | None:
    """What a body sent to a route that reads a file is, for a 415 ("the request body ..."),
    when it is not a multipart form; None when there is no body at all (the missing field's
    422 says that)."""
    if media_type:
        return f"is {echo(media_type)}"
    sent = request.headers.get("content-length", "0").strip() not in ("", "0")
    if sent or "transfer-encoding" in request.headers:
        return "has no content type"
    return None


def _declared_fields(route: object) -> dict[str, set[str]]:
    """The query parameters and form fields the matched route reads, by their names on the
    wire (its dependencies' too), and ``file``: those of the form fields that are files."""
    declared: dict[str, set[str]] = {"query parameter": set(), "form field": set(), "file": set()}
    pending = [getattr(route, "dependant", None)]
    while pending:
        dependant = pending.pop()
        if dependant is None:
            continue
        declared["query parameter"] |= {p.alias for p in dependant.query_params}
        declared["form field"] |= {p.alias for p in dependant.body_params}
        declared["file"] |= {
            p.alias for p in dependant.body_params if isinstance(p.field_info, params.File)
        }
        pending.extend(dependant.dependencies)
    return declared


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
DecodePoolDep = Annotated[WorkerPool, Depends(get_decode_pool)]


# A key's ID in records and logs: 48 bits, so that no two of a deployment's keys share one
# by chance, and too few to stand in for a random key.
KEY_ID_HEX_DIGITS = 12


def _digest(key: str) -> bytes:
    """SHA-256 of a key: equal-length inputs for ``hmac.compare_digest``."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def _presented_keys(request: Request) -> list[str]:
    """The keys a request carries: its X-API-Key and its Bearer token, either or both, and
    each of them as often as the header is repeated. Every one is checked: were only the
    first read, a valid key in front would carry a wrong one behind it (a proxy that adds
    its own header sees the request refused, not passed on the other's word)."""
    keys = [key for key in request.headers.getlist("x-api-key") if key]
    for authorization in request.headers.getlist("authorization"):
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            keys.append(credentials.strip())
    return keys


# Declared as security schemes so that OpenAPI marks the protected operations (and /docs
# offers "Authorize"); the keys themselves are read by _presented_keys.
API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="ApiKey")
BEARER = HTTPBearer(auto_error=False, scheme_name="Bearer")


async def require_api_key(
    request: Request,
    settings: SettingsDep,
    _header: Annotated[str | None, Security(API_KEY_HEADER)] = None,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None,
) -> None:
    """401 unless API keys are off or the request carries one of them."""
    check_api_key(request, settings)


def check_api_key(request: Request, settings: Settings) -> None:
    """Raise Unauthorized (401) unless API keys are off or ``request`` carries a valid one
    (in X-API-Key or as a Bearer token; when it sends both, both must be valid). Admin and
    feedback keys are valid keys too."""
    if not settings.api_keys:
        return
    presented = _presented_keys(request)
    if not presented:
        raise Unauthorized("an API key is required: send X-API-Key or Authorization: Bearer")
    if not _all_among(presented, settings.valid_api_keys()):
        raise Unauthorized("the API key is not valid")


def _all_among(presented: list[str], keys: list[str]) -> bool:
    """Whether every presented key is one of ``keys``.

    Constant-time comparison against every key (no early exit), so timing reveals neither a
    matching prefix nor which key matched; digests first, so not the length either. With
    both headers, both must hold a valid key: a wrong one is refused, whichever."""
    digests = [_digest(key) for key in keys]
    offered = [_digest(key) for key in presented]
    return all([any([hmac.compare_digest(o, key) for key in digests]) for o in offered])


async def require_admin_key(request: Request, settings: SettingsDep) -> None:
    """With admin keys set (VISION_ADMIN_API_KEYS): 401 without a key or with one that is
    no key at all, 403 with a valid key that is not an admin key. After the router's own
    API-key check, which admits admin keys."""
    if not settings.admin_api_keys:
        return
    presented = _presented_keys(request)
    if not presented:
        raise Unauthorized("an admin API key is required: send X-API-Key or Authorization: Bearer")
    if _all_among(presented, settings.admin_api_keys):
        return
    if settings.api_keys and _all_among(presented, settings.valid_api_keys()):
        raise Forbidden("this API key may not reload models: that needs an admin API key")
    raise Unauthorized("the API key is not an admin API key")


def key_id(key: str) -> str:
    """The name a key goes by in teacher records and logs: the first KEY_ID_HEX_DIGITS hex
    digits of its SHA-256. An operator finds a key's with ``printf %s KEY | sha256sum``."""
    return _digest(key).hex()[:KEY_ID_HEX_DIGITS]


def check_feedback_key(request: Request, settings: Settings) -> str:
    """Whether ``request`` may save a teacher record, and the ID of the key it saves with
    (``key_id``; "" on a server that needs no key for it). With feedback keys set
    (VISION_FEEDBACK_API_KEYS) it needs one of them or an admin key: Unauthorized (401)
    without a key or with one that is no key at all, Forbidden (403) with another valid API
    key. Otherwise the router's own API-key check has already passed the key."""
    presented = _presented_keys(request)
    if settings.feedback_api_keys:
        if not presented:
            raise Unauthorized(
                "saving a teacher record needs a feedback API key: send X-API-Key or "
                "Authorization: Bearer"
            )
        if not _all_among(presented, [*settings.feedback_api_keys, *settings.admin_api_keys]):
            if settings.api_keys and _all_among(presented, settings.valid_api_keys()):
                raise Forbidden(
                    "this API key may not save teacher records: that needs a feedback API key"
                )
            raise Unauthorized("the API key is not a feedback API key")
    elif not settings.api_keys:
        return ""  # any key sent was never checked: it names no one
    return key_id(presented[0])
