"""Run the API with uvicorn (``ktrdr api``)."""

from __future__ import annotations

import logging

from ktrdr.api.settings import ApiSettings

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(host: str = "127.0.0.1", port: int = 8000, *, sim: bool = False,
          log_level: str = "info", settings: ApiSettings | None = None) -> None:
    """Serve the API until SIGINT/SIGTERM, then shut the farm down cleanly.

    Args:
        host: address to bind (loopback by default).
        port: TCP port.
        sim: start an embedded simulated gateway (also ``IB_GATEWAY=sim``).
        log_level: debug, info, warning or error.
        settings: the API's settings (default: from the environment).
    """
    import uvicorn

    from ktrdr.api.app import create_app

    level = getattr(logging, log_level.upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        force=True)
    if settings is None:
        settings = ApiSettings.from_env(host=host, port=port, sim=sim or None)
    if host not in LOOPBACK and not settings.token:
        log.warning("serving on %s without a token: anyone who can reach the port can use the "
                    "API (set KTRDR_API_TOKEN)", host)
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level.lower(),
                timeout_graceful_shutdown=5)
