"""The sync and async clients: one method per endpoint, errors raised as client.errors."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
import numpy.typing as npt

from client import _calls
from client._calls import Call, ImageInput, InferResult
from client.errors import TransportError, UnexpectedResponse, VisionError, error_from_response
from service.schemas import (
    AttentionResponse,
    CorrectionResponse,
    FeedbackResponse,
    GenderResponse,
    LiveResponse,
    ModelInfo,
    ModelsResponse,
    OcclusionResponse,
    ReadyResponse,
    RecognizeResponse,
    VerifyResponse,
)

T = TypeVar("T")

DEFAULT_BASE_URL = "http://localhost:8000"
# Seconds httpx allows each phase of a request (connect, each write, each read, pool), not
# the whole: a big upload on a busy CPU server takes a few seconds.
DEFAULT_TIMEOUT_S = 30.0


def _checked_base_url(base_url: str) -> str:
    """``base_url`` when it names an HTTP(S) server; ValueError at once otherwise (httpx
    would fail each request later, as if the server had not answered)."""
    url = httpx.URL(base_url)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(
            f"base_url must be http:// or https:// and a host (http://host:8000), not {base_url!r}"
        )
    return base_url


def _check_open(http: httpx.Client | httpx.AsyncClient, call: Call[Any]) -> None:
    if http.is_closed:
        raise VisionError(f"{call.method} {call.path}: this client is closed")


def _headers(api_key: str | None) -> dict[str, str]:
    """The key's header; ValueError, at construction, for a key no header of httpx's can
    carry (a control character or one outside ASCII), which would otherwise fail each
    request as if the server had not answered, or with a UnicodeEncodeError."""
    if not api_key:
        return {}
    if not all(" " <= char <= "~" for char in api_key):
        raise ValueError("api_key must be printable ASCII: an HTTP header carries it")
    return {"X-API-Key": api_key}


def _request_args(call: Call[Any], extra_headers: Mapping[str, str]) -> dict[str, Any]:
    headers = {**extra_headers, **(call.headers or {})}
    return {
        "params": call.params,
        "files": call.files,
        "data": call.data,
        "content": call.content,
        "headers": headers or None,
    }


def _result(call: Call[T], response: httpx.Response) -> T:
    if response.is_redirect:
        # The service redirects nowhere its clients should follow a POST to: a redirect is
        # a proxy's (http to https, a path prefix), so the base URL is the thing to fix.
        raise UnexpectedResponse(
            f"{call.method} {call.path}: redirected ({response.status_code}) to "
            f"{response.headers.get('location', '?')}; check the base URL"
        )
    if response.is_error and response.status_code not in call.accept:
        raise error_from_response(response)
    try:
        return call.parse(response)
    # Not JSON, pydantic's ValidationError, or JSON of another shape (a list for a dict, a
    # number for an output): the body is not this endpoint's.
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UnexpectedResponse(
            f"{call.method} {call.path}: {response.status_code} with a body this client "
            f"cannot read ({type(exc).__name__}: {str(exc)[:200]})"
        ) from exc


@contextmanager
def _answered(call: Call[Any]) -> Iterator[None]:
    """httpx's failures to get or read an answer as this client's errors (sync and async)."""
    try:
        yield
    except httpx.TransportError as exc:
        raise TransportError(
            f"{call.method} {call.path}: no answer ({type(exc).__name__}: {exc})"
        ) from exc
    except httpx.DecodingError as exc:  # a Content-Encoding the body does not follow
        raise UnexpectedResponse(f"{call.method} {call.path}: {exc}") from exc


class VisionClient:
    """Blocking client. ``http_client`` replaces the httpx.Client it would create (its
    base URL and headers are then the caller's)."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        http_client: httpx.Client | None = None,
    ) -> None:
        self._owned = http_client is None
        self._http = http_client or httpx.Client(
            base_url=_checked_base_url(base_url), headers=_headers(api_key), timeout=timeout
        )
        # A caller's client is left as it is: the key goes with each request instead.
        self._auth = _headers(api_key) if http_client is not None else {}

    def _send(self, call: Call[T]) -> T:
        _check_open(self._http, call)
        with _answered(call):
            response = self._http.request(call.method, call.path, **_request_args(call, self._auth))
        return _result(call, response)

    def close(self) -> None:
        if self._owned:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def recognize(
        self, image: ImageInput, *, min_score: float | None = None, filename: str | None = None
    ) -> RecognizeResponse:
        """``POST /recognize``: landmarks with class, score and point in image pixels."""
        return self._send(_calls.recognize(image, min_score, filename))

    def attention(self, image: ImageInput, *, filename: str | None = None) -> AttentionResponse:
        """``POST /attention``: class, attention-branch class and the attention map."""
        return self._send(_calls.attention(image, filename))

    def attention_correct(
        self,
        image: ImageInput,
        mask: ImageInput,
        *,
        label: str | None = None,
        save: bool = False,
        filename: str | None = None,
    ) -> CorrectionResponse:
        """``POST /attention/correct``: re-classify with an edited map (``mask``)."""
        return self._send(_calls.attention_correct(image, mask, label, save, filename))

    def gender(
        self, image: ImageInput, *, contour: bool = False, filename: str | None = None
    ) -> GenderResponse:
        """``POST /gender``: female/male probabilities, with ``contour`` the contour map."""
        return self._send(_calls.gender(image, contour, filename))

    def occlusion(self, image: ImageInput, *, filename: str | None = None) -> OcclusionResponse:
        """``POST /occlusion``: the occlusion pattern (blocks, box in image pixels), embedding."""
        return self._send(_calls.occlusion(image, filename))

    def verify_faces(self, image_a: ImageInput, image_b: ImageInput) -> VerifyResponse:
        """``POST /faces/verify``: cosine similarity, same-person decision, both occlusions."""
        return self._send(_calls.verify_faces(image_a, image_b))

    def attention_feedback(self) -> FeedbackResponse:
        """``GET /attention/feedback``: counts of stored teacher records."""
        return self._send(_calls.attention_feedback())

    def reload_model(self, name: str) -> ModelInfo:
        """``POST /models/{name}/reload``: swap in the version the repository designates."""
        return self._send(_calls.reload_model(name))

    def health_live(self) -> LiveResponse:
        """``GET /health/live``."""
        return self._send(_calls.health_live())

    def health_ready(self) -> ReadyResponse:
        """``GET /health/ready``; raises ServiceUnavailable (with the reasons) when not ready."""
        return self._send(_calls.health_ready())

    def models(self) -> ModelsResponse:
        """``GET /models``."""
        return self._send(_calls.models())

    def metrics(self) -> str:
        """``GET /metrics``: Prometheus text."""
        return self._send(_calls.metrics())

    def v2_server_metadata(self) -> dict[str, Any]:
        """``GET /v2``: name, version, extensions."""
        return self._send(_calls.v2_server_metadata())

    def v2_live(self) -> bool:
        """``GET /v2/health/live``."""
        return self._send(_calls.v2_live())

    def v2_ready(self) -> bool:
        """``GET /v2/health/ready``: False while not ready."""
        return self._send(_calls.v2_ready())

    def v2_model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        """``GET /v2/models/{name}[/versions/{version}]``."""
        return self._send(_calls.v2_model_metadata(name, version))

    def v2_model_ready(self, name: str, version: str | None = None) -> bool:
        """``GET /v2/models/{name}[/versions/{version}]/ready``; raises NotFound if unknown."""
        return self._send(_calls.v2_model_ready(name, version))

    def v2_infer(
        self,
        name: str,
        inputs: Mapping[str, npt.ArrayLike],
        *,
        outputs: Sequence[str] | None = None,
        binary: bool = True,
        version: str | None = None,
        request_id: str | None = None,
    ) -> InferResult:
        """``POST /v2/models/{name}[/versions/{version}]/infer`` on numpy arrays."""
        return self._send(_calls.v2_infer(name, inputs, outputs, binary, version, request_id))


class AsyncVisionClient:
    """The same methods as :class:`VisionClient`, awaitable."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self._owned = http_client is None
        self._http = http_client or httpx.AsyncClient(
            base_url=_checked_base_url(base_url), headers=_headers(api_key), timeout=timeout
        )
        # A caller's client is left as it is: the key goes with each request instead.
        self._auth = _headers(api_key) if http_client is not None else {}

    async def _send(self, call: Call[T]) -> T:
        _check_open(self._http, call)
        with _answered(call):
            response = await self._http.request(
                call.method, call.path, **_request_args(call, self._auth)
            )
        return _result(call, response)

    async def aclose(self) -> None:
        if self._owned:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def recognize(
        self, image: ImageInput, *, min_score: float | None = None, filename: str | None = None
    ) -> RecognizeResponse:
        """``POST /recognize``."""
        return await self._send(_calls.recognize(image, min_score, filename))

    async def attention(
        self, image: ImageInput, *, filename: str | None = None
    ) -> AttentionResponse:
        """``POST /attention``."""
        return await self._send(_calls.attention(image, filename))

    async def attention_correct(
        self,
        image: ImageInput,
        mask: ImageInput,
        *,
        label: str | None = None,
        save: bool = False,
        filename: str | None = None,
    ) -> CorrectionResponse:
        """``POST /attention/correct``."""
        return await self._send(_calls.attention_correct(image, mask, label, save, filename))

    async def gender(
        self, image: ImageInput, *, contour: bool = False, filename: str | None = None
    ) -> GenderResponse:
        """``POST /gender``."""
        return await self._send(_calls.gender(image, contour, filename))

    async def occlusion(
        self, image: ImageInput, *, filename: str | None = None
    ) -> OcclusionResponse:
        """``POST /occlusion``."""
        return await self._send(_calls.occlusion(image, filename))

    async def verify_faces(self, image_a: ImageInput, image_b: ImageInput) -> VerifyResponse:
        """``POST /faces/verify``."""
        return await self._send(_calls.verify_faces(image_a, image_b))

    async def attention_feedback(self) -> FeedbackResponse:
        """``GET /attention/feedback``."""
        return await self._send(_calls.attention_feedback())

    async def reload_model(self, name: str) -> ModelInfo:
        """``POST /models/{name}/reload``."""
        return await self._send(_calls.reload_model(name))

    async def health_live(self) -> LiveResponse:
        """``GET /health/live``."""
        return await self._send(_calls.health_live())

    async def health_ready(self) -> ReadyResponse:
        """``GET /health/ready``; raises ServiceUnavailable when not ready."""
        return await self._send(_calls.health_ready())

    async def models(self) -> ModelsResponse:
        """``GET /models``."""
        return await self._send(_calls.models())

    async def metrics(self) -> str:
        """``GET /metrics``."""
        return await self._send(_calls.metrics())

    async def v2_server_metadata(self) -> dict[str, Any]:
        """``GET /v2``."""
        return await self._send(_calls.v2_server_metadata())

    async def v2_live(self) -> bool:
        """``GET /v2/health/live``."""
        return await self._send(_calls.v2_live())

    async def v2_ready(self) -> bool:
        """``GET /v2/health/ready``."""
        return await self._send(_calls.v2_ready())

    async def v2_model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        """``GET /v2/models/{name}[/versions/{version}]``."""
        return await self._send(_calls.v2_model_metadata(name, version))

    async def v2_model_ready(self, name: str, version: str | None = None) -> bool:
        """``GET /v2/models/{name}[/versions/{version}]/ready``."""
        return await self._send(_calls.v2_model_ready(name, version))

    async def v2_infer(
        self,
        name: str,
        inputs: Mapping[str, npt.ArrayLike],
        *,
        outputs: Sequence[str] | None = None,
        binary: bool = True,
        version: str | None = None,
        request_id: str | None = None,
    ) -> InferResult:
        """``POST /v2/models/{name}[/versions/{version}]/infer``."""
        call = _calls.v2_infer(name, inputs, outputs, binary, version, request_id)
        return await self._send(call)
