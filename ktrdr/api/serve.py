"""Run the API with uvicorn (``ktrdr api``).

A server on a non-loopback address is reachable from other machines, so it starts only with a
token (``KTRDR_API_TOKEN``: every ``/api/v1`` request and ``/metrics`` then need
``Authorization: Bearer <token>``) or when told ``insecure=True`` (``--insecure``).
"""

from __future__ import annotations

import ipaddress
import logging

from ktrdr.api.settings import ApiSettings

log = logging.getLogger(__name__)


class InsecureBindError(ValueError):
    """A non-loopback address without a token, and ``insecure`` not given."""


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` keeps the server to this machine."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve anywhere
        return False


def check_bind(host: str, token: str | None, insecure: bool = False) -> None:
    """Refuse to listen on a non-loopback ``host`` without a token unless ``insecure``.

    Raises:
        InsecureBindError: the message says what to set.
    """
    if is_loopback(host) or token or insecure:
        return
    raise InsecureBindError(
        f"refusing to listen on {host} without a token: anyone who can reach it could use the "
        f"API. Set KTRDR_API_TOKEN (clients then send 'Authorization: Bearer <token>'), or "
        f"pass --insecure to serve it open")


def serve(host: str = "127.0.0.1", port: int = 8000, *, sim: bool = False,
          log_level: str = "info", settings: ApiSettings | None = None,
          insecure: bool = False) -> None:
    """Serve the API until SIGINT/SIGTERM, then shut the farm down cleanly.

    Args:
        host: address to listen on (loopback by default).
        port: TCP port.
        sim: start an embedded simulated gateway (also ``IB_GATEWAY=sim``).
        log_level: debug, info, warning or error.
        settings: the API's settings (default: from the environment).
        insecure: allow a non-loopback ``host`` without a token.

    Raises:
        InsecureBindError: a non-loopback ``host``, no token and not ``insecure``.
    """
    import uvicorn

    from ktrdr.api.app import create_app

    if settings is None:
        settings = ApiSettings.from_env(host=host, port=port, sim=sim or None)
    check_bind(host, settings.token, insecure)
    level = getattr(logging, log_level.upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        force=True)
    if not is_loopback(host) and not settings.token:
        log.warning("listening on %s without a token (--insecure): anyone who can reach the "
                    "port can use the API", host)
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level.lower(),
                timeout_graceful_shutdown=5)
