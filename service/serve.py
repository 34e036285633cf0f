"""The container's entry command: ``python -m service.serve``.

One uvicorn worker per process (scale with replicas, not workers: each worker would load
every model again). Read from the environment besides the ``VISION_*`` settings:

| variable | default | meaning |
|---|---|---|
| ``HOST`` | ``0.0.0.0`` | interface to listen on |
| ``PORT`` | ``8000`` | port to listen on |
| ``GRACEFUL_SHUTDOWN_S`` | ``20`` | after SIGTERM, seconds in-flight requests get to finish |
| ``FORWARDED_ALLOW_IPS`` | ``127.0.0.1`` | proxies whose X-Forwarded-* headers are trusted |
| ``KEEP_ALIVE_S`` | ``5`` | idle connections between requests are closed after this |
| ``ROOT_PATH`` | (empty) | the path prefix a proxy serves the service under (``/docs``) |

``KEEP_ALIVE_S`` bounds an idle connection between requests (bytes that start no request,
such as CRLFs, do not extend it); ``VISION_HEADER_TIMEOUT_S`` bounds a request's head,
from the connection's start or the request's first byte, and ``VISION_SEND_TIMEOUT_S`` an
answer the client takes nothing of (service/protocol.py). Behind a
proxy that keeps idle upstream connections open (nginx-ingress: 60 s), set ``KEEP_ALIVE_S``
above its idle timeout: a connection the service closes just as the proxy reuses it fails
that request (a 502), and a proxy does not retry a ``POST``.

Before the app is built, CUDA/cuDNN from the ``nvidia-*`` wheels are preloaded when they
are installed (the GPU image) and CUDA is wanted (``cuda``, or ``auto`` with a GPU visible).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import uvicorn

from service.logs import uvicorn_log_config
from service.protocol import header_timeout_protocol
from service.runtime import gpu_visible, preload_cuda_libraries, wants_cuda
from service.settings import get_settings

DEFAULT_HOST = "0.0.0.0"  # a container listens on every interface
DEFAULT_PORT = 8000
# Shorter than the Kubernetes termination grace period minus the preStop pause (see
# deploy/kubernetes/deployment.yaml), so a draining pod is never killed mid-request.
DEFAULT_GRACEFUL_SHUTDOWN_S = 20
# uvicorn's own default: a direct client's idle connection costs a socket and its buffers.
DEFAULT_KEEP_ALIVE_S = 5

# The variables above, besides the VISION_* settings (the deployment files may set them).
ENVIRONMENT = (
    "HOST",
    "PORT",
    "GRACEFUL_SHUTDOWN_S",
    "FORWARDED_ALLOW_IPS",
    "KEEP_ALIVE_S",
    "ROOT_PATH",
)

logger = logging.getLogger("service")


def main(argv: list[str] | None = None) -> None:
    # No options: the environment configures everything; this gives --help a page.
    argparse.ArgumentParser(
        prog="python -m service.serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Settings: VISION_* environment variables (README, 'Configuration').",
    ).parse_args(sys.argv[1:] if argv is None else argv)
    settings = get_settings()
    if wants_cuda(settings.providers, gpu_visible()) and preload_cuda_libraries():
        logger.info("preloaded CUDA and cuDNN from the nvidia wheels")
    uvicorn.run(
        "service.main:create_app",
        factory=True,
        host=os.environ.get("HOST", DEFAULT_HOST),
        port=int(os.environ.get("PORT", DEFAULT_PORT)),
        workers=1,
        # httptools with deadlines on request heads and on answers left untaken
        # (VISION_HEADER_TIMEOUT_S, VISION_SEND_TIMEOUT_S).
        http=header_timeout_protocol(
            settings.header_timeout_s, settings.max_header_bytes, settings.send_timeout_s
        ),
        timeout_graceful_shutdown=int(
            os.environ.get("GRACEFUL_SHUTDOWN_S", DEFAULT_GRACEFUL_SHUTDOWN_S)
        ),
        proxy_headers=True,
        forwarded_allow_ips=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
        timeout_keep_alive=int(os.environ.get("KEEP_ALIVE_S", DEFAULT_KEEP_ALIVE_S)),
        root_path=os.environ.get("ROOT_PATH", ""),
        log_level=settings.log_level.lower(),
        # uvicorn's loggers write through the service's formatter (VISION_LOG_FORMAT); the
        # access line comes from RequestIdMiddleware, with the request ID.
        log_config=uvicorn_log_config(settings.log_format, settings.log_level),
        access_log=False,
    )


if __name__ == "__main__":
    main()
