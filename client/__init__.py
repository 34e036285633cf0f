"""A small typed client for the vision service, sync and async, built on httpx.

    from client import VisionClient
    with VisionClient("http://localhost:8000") as vision:
        result = vision.recognize("examples/scene.png", min_score=0.5)

Every endpoint has one method; error statuses raise :mod:`client.errors` (``BadRequest``,
``PayloadTooLarge``, ``ServiceUnavailable`` with ``retry_after``...) carrying the
problem+json fields. It needs httpx, numpy and pydantic; README.md, "Python client", says
how to install it without the server's packages. It does not retry: a 503
(``ServiceUnavailable``) is the caller's to send again after its ``retry_after``.
"""

from client._calls import ImageInput, InferResult
from client._client import AsyncVisionClient, VisionClient
from client.errors import (
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    ServerError,
    ServiceUnavailable,
    StoreFull,
    TransportError,
    Unauthorized,
    UnexpectedResponse,
    UnsupportedMediaType,
    VisionError,
)

__all__ = [
    "ApiError",
    "AsyncVisionClient",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "ImageInput",
    "InferResult",
    "InvalidRequest",
    "NotFound",
    "PayloadTooLarge",
    "RequestTimeout",
    "ServerError",
    "ServiceUnavailable",
    "StoreFull",
    "TransportError",
    "Unauthorized",
    "UnexpectedResponse",
    "UnsupportedMediaType",
    "VisionClient",
    "VisionError",
]
