"""The farm's settings: where the gateway is, how many workers, which client ids, and timeouts."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from ibfarm.errors import RetryPolicy
from ibfarm.pacing import PacingPolicy


def parse_client_ids(text: str) -> range:
    """Parse ``"10-20"`` (inclusive), ``"7"`` or ``"10:20"`` (Python-style) into a range.

    Raises:
        ValueError: the text is none of those forms, or the range is empty.
    """
    text = text.strip()
    try:
        if "-" in text:
            first, last = (int(part) for part in text.split("-", 1))
            ids = range(first, last + 1)
        elif ":" in text:
            first, stop = (int(part) for part in text.split(":", 1))
            ids = range(first, stop)
        else:
            ids = range(int(text), int(text) + 1)
    except ValueError:
        raise ValueError(f"bad client id range {text!r}; use e.g. '10-20'") from None
    if not ids or ids.start < 0:
        raise ValueError(f"empty or negative client id range {text!r}")
    return ids


@dataclass
class FarmConfig:
    """How an ``IbFarm`` connects and behaves.

    Args:
        host: the gateway's host.
        port: the gateway's API port (4002: IB Gateway paper; 4001 live; 7497/7496 TWS).
        max_workers: worker processes at most (one connection each).
        client_ids: the client ids workers may use; never two workers on one id.
        idle_timeout: seconds without work after which a worker disconnects and exits.
        request_timeout: seconds a request may take (one attempt) before it fails with
            ``RequestTimeoutError`` and is cancelled at the gateway.
        connect_timeout: seconds one connection attempt may take.
        pacing: a ``PacingPolicy`` or a preset name ("ib", "conservative", "off").
        pacing_margin: seconds added to every pacing window: the gateway times a request when
            it reads it, a little after the pacer granted it (raise it on a loaded machine
            or with heavily scaled-down windows).
        max_retries: times a request is retried on another worker after its worker died.
        retry: how a worker retries a request IB answered with a transient error (pacing
            violation, too many open requests, a farm or connection outage): back-off and
            attempts; fatal errors (unknown contract, invalid request, ...) never retry.
            None: ``RetryPolicy()`` with its delays scaled like the pacing policy's windows.
        readonly: connect read-only (faster: no order state to synchronise).
    """

    host: str = "127.0.0.1"
    port: int = 4002
    max_workers: int = 2
    client_ids: range = field(default_factory=lambda: range(1, 33))
    idle_timeout: float = 180.0
    request_timeout: float = 60.0
    connect_timeout: float = 10.0
    pacing: PacingPolicy | str = "ib"
    pacing_margin: float = 0.05
    max_retries: int = 3
    retry: RetryPolicy | None = None
    readonly: bool = True

    def __post_init__(self):
        if not isinstance(self.client_ids, range):
            self.client_ids = range(int(self.client_ids), int(self.client_ids) + 1) \
                if isinstance(self.client_ids, int) else _as_range(self.client_ids)
        if self.max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        if len(self.client_ids) < 1:
            raise ValueError("client_ids must not be empty")
        for name in ("idle_timeout", "request_timeout", "connect_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.max_retries < 0:
            raise ValueError("max_retries must not be negative")
        self.port = int(self.port)

    @property
    def pacing_policy(self) -> PacingPolicy:
        """``pacing`` as a policy object."""
        return PacingPolicy.coerce(self.pacing)

    @property
    def retry_policy(self) -> RetryPolicy:
        """``retry``, or the default back-off scaled as the pacing windows are (a policy
        scaled by 60 backs off a pacing violation for one second instead of sixty)."""
        if self.retry is not None:
            return self.retry
        scale = PacingPolicy().window / self.pacing_policy.window
        return RetryPolicy() if scale <= 1 else RetryPolicy().scaled(scale)

    def replace(self, **changes) -> FarmConfig:
        """A copy with ``changes`` applied (unknown names raise ``TypeError``)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> FarmConfig:
        """Settings from ``IB_HOST``, ``IB_PORT`` and ``IBFARM_*``, then ``overrides``.

        Reads ``IBFARM_MAX_WORKERS``, ``IBFARM_CLIENT_IDS`` (e.g. ``"10-20"``),
        ``IBFARM_IDLE_TIMEOUT``, ``IBFARM_REQUEST_TIMEOUT``, ``IBFARM_CONNECT_TIMEOUT``,
        ``IBFARM_PACING`` (a preset name), ``IBFARM_PACING_MARGIN``, ``IBFARM_MAX_RETRIES`` and
        ``IBFARM_RETRY_ATTEMPTS`` (attempts per request after transient IB errors; 1 turns
        retries off).

        Args:
            env: the environment to read (default ``os.environ``).
            overrides: fields that win over the environment.
        """
        env = os.environ if env is None else env
        readers = {
            "host": ("IB_HOST", str),
            "port": ("IB_PORT", int),
            "max_workers": ("IBFARM_MAX_WORKERS", int),
            "client_ids": ("IBFARM_CLIENT_IDS", parse_client_ids),
            "idle_timeout": ("IBFARM_IDLE_TIMEOUT", float),
            "request_timeout": ("IBFARM_REQUEST_TIMEOUT", float),
            "connect_timeout": ("IBFARM_CONNECT_TIMEOUT", float),
            "pacing": ("IBFARM_PACING", str),
            "pacing_margin": ("IBFARM_PACING_MARGIN", float),
            "max_retries": ("IBFARM_MAX_RETRIES", int),
            "retry": ("IBFARM_RETRY_ATTEMPTS", lambda v: RetryPolicy(max_attempts=int(v))),
        }
        values = {}
        for name, (var, convert) in readers.items():
            raw = env.get(var)
            if raw not in (None, ""):
                try:
                    values[name] = convert(raw)
                except ValueError as exc:
                    raise ValueError(f"{var}={raw!r}: {exc}") from None
        values.update(overrides)
        return cls(**values)


def _as_range(ids) -> range:
    if isinstance(ids, str):
        return parse_client_ids(ids)
    ids = sorted(int(i) for i in ids)
    if not ids or ids != list(range(ids[0], ids[-1] + 1)):
        raise ValueError("client_ids must be a contiguous range")
    return range(ids[0], ids[-1] + 1)
