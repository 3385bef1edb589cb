"""The farm's settings: which gateways, how many workers, which client ids, timeouts, retries.

``FarmConfig`` is every setting in one dataclass (``FarmConfig.from_env()`` reads them from the
environment); ``RetryPolicy`` says how a request IB answered with a transient error is tried
again; ``GatewayAddress`` is one gateway of the farm with the client ids its workers may use.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ibfarm.errors import ErrorKind, is_retryable
from ibfarm.pacing import PacingPolicy

_RNG = random.Random()


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


def parse_port(text: str | int) -> int:
    """A TCP port number from ``text``.

    Raises:
        ValueError: not a whole number from 1 to 65535.
    """
    try:
        port = int(str(text).strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a port number (1-65535)") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"{port} is not a port number (1-65535)")
    return port


@dataclass(frozen=True)
class GatewayAddress:
    """One gateway (TWS or IB Gateway) and the client ids the farm's workers use on it."""

    host: str
    port: int
    client_ids: range

    @property
    def key(self) -> str:
        """``"host:port"``: names the gateway (and its shared pacer)."""
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str, client_ids: range) -> GatewayAddress:
        """``"host:port"`` or ``"host:port/10-20"`` (its own client ids).

        Raises:
            ValueError: not in that form (the message shows it).
        """
        spec, _, ids = str(text).strip().partition("/")
        host, sep, port = spec.rpartition(":")
        if not sep or not host:
            raise ValueError(f"bad gateway {text!r}; use host:port, e.g. 127.0.0.1:4002 "
                             f"(optionally /10-20 for its client ids)")
        return cls(host.strip("[]"), parse_port(port),
                   parse_client_ids(ids) if ids else client_ids)


@dataclass(frozen=True)
class RetryPolicy:
    """When to try a failed request again.

    Retryable kinds wait ``base_delay * 2 ** (attempt - 1)``, capped at ``max_delay``; a pacing
    violation waits ``pacing_delay`` doubling the same way, capped at ``max_pacing_delay`` (IB's
    longest pacing window is 10 minutes, so waiting longer never helps). Every delay is then
    shortened by up to ``jitter`` of itself, at random, so retries spread out and never exceed
    their cap. Every retry, pacing included, counts as an attempt: after ``max_attempts`` attempts
    the request fails. Fatal kinds are never retried, and neither are time-outs (the request's
    budget at IB is spent; the caller decides, e.g. by asking for less).

    Attributes:
        max_attempts: attempts in all, the first one included.
        base_delay: seconds before the second attempt.
        max_delay: the longest wait between attempts (pacing aside).
        jitter: fraction (0-1) of each delay that is random.
        pacing_delay: seconds to wait after the first pacing violation (Lean and ktrdr wait 60).
        max_pacing_delay: the longest wait after a pacing violation.
    """

    max_attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 30.0
    jitter: float = 0.25
    pacing_delay: float = 60.0
    max_pacing_delay: float = 600.0

    def __post_init__(self):
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("jitter must be between 0 and 1")
        if min(self.base_delay, self.max_delay, self.pacing_delay, self.max_pacing_delay) < 0:
            raise ValueError("delays must not be negative")

    def scaled(self, factor: float) -> RetryPolicy:
        """The same policy with every delay divided by ``factor`` (as ``PacingPolicy.scaled``)."""
        if factor <= 0:
            raise ValueError("scale factor must be positive")
        return dataclasses.replace(
            self, base_delay=self.base_delay / factor, max_delay=self.max_delay / factor,
            pacing_delay=self.pacing_delay / factor,
            max_pacing_delay=self.max_pacing_delay / factor)

    def delay(
        self, attempt: int, kind: ErrorKind, rng: random.Random | None = None
    ) -> float | None:
        """Seconds to wait before trying again after attempt number ``attempt`` (1 = the first)
        failed with ``kind``; None when the request must not be retried."""
        if attempt < 1:
            raise ValueError("attempt numbers start at 1")
        kind = ErrorKind(kind)
        if not is_retryable(kind) or attempt >= self.max_attempts:
            return None
        if kind is ErrorKind.PACING:
            first, cap = self.pacing_delay, self.max_pacing_delay
        else:
            first, cap = self.base_delay, self.max_delay
        nominal = min(cap, first * 2.0 ** min(attempt - 1, 64))
        return nominal * (1.0 - self.jitter * (rng or _RNG).random())


@dataclass
class FarmConfig:
    """How an ``IbFarm`` connects and behaves.

    Args:
        host: the gateway's host (the one-gateway form; see ``gateways``).
        port: the gateway's API port (4002: IB Gateway paper; 4001 live; 7497/7496 TWS).
        gateways: several gateways, ``["host:port", "host:port/10-20", ...]`` (a client-id
            range after "/" is that gateway's own; default ``client_ids``); when given,
            ``host``/``port`` are not used. Each gateway (one IB username) has its own pacing
            budget and its own workers.
        max_workers: worker processes at most, per gateway (one connection each).
        client_ids: the client ids workers may use (on each gateway); never two workers on one.
        idle_timeout: seconds without work after which a worker disconnects and exits.
        request_timeout: seconds a request may spend at IB (sent and not yet answered) before
            it fails with ``RequestTimeoutError`` and is cancelled at the gateway. Waiting in
            the farm's queue, for the pacer or for a reconnect does not count, and a request
            resent after a lost connection keeps the time it had already spent.
        connect_timeout: seconds one connection attempt may take.
        pacing: a ``PacingPolicy`` or a preset name ("ib", "conservative", "off").
        pacing_margin: seconds added to every pacing window at least: the gateway times a
            request when it reads it, a little after the pacer granted it.
        pacing_margin_ratio: fraction of each window added to it when that is more than
            ``pacing_margin`` (keeps scaled-down windows safe on a loaded machine).
        max_retries: times a request is sent again after the worker it was on died.
        max_resends: times the gateway may close the connection right after a request was
            sent alone before it fails as one the gateway cannot read
            (``InvalidRequestError``). A request goes alone after the second close that
            happened just after it was sent with others (which blames them all), so it never
            takes other requests down with it.
        outage_timeout: seconds queued work waits for a gateway that went down (or for IB's
            maintenance to end) before it fails with ``IbConnectionError`` (default 90 min,
            IB's longest daily maintenance window).
        retry: how a request IB answered with a transient error (pacing violation, too many
            open requests, a farm or connection outage) is tried again: back-off and attempts.
            None: ``RetryPolicy()`` with its delays scaled like the pacing policy's windows.
        readonly: connect read-only (faster: no order state to synchronise).
        backend: the IB client library, "ib_async" or "ib_insync" (default: ``IBFARM_BACKEND``,
            else whichever is installed, ib_async first).
    """

    host: str = "127.0.0.1"
    port: int = 4002
    gateways: Sequence[str] | None = None
    max_workers: int = 2
    client_ids: range = field(default_factory=lambda: range(1, 33))
    idle_timeout: float = 180.0
    request_timeout: float = 60.0
    connect_timeout: float = 10.0
    pacing: PacingPolicy | str = "ib"
    pacing_margin: float = 0.05
    pacing_margin_ratio: float = 0.02
    max_retries: int = 3
    max_resends: int = 3
    outage_timeout: float = 5400.0
    retry: RetryPolicy | None = None
    readonly: bool = True
    backend: str | None = None

    def __post_init__(self):
        if not isinstance(self.client_ids, range):
            self.client_ids = range(int(self.client_ids), int(self.client_ids) + 1) \
                if isinstance(self.client_ids, int) else _as_range(self.client_ids)
        if self.max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        if len(self.client_ids) < 1:
            raise ValueError("client_ids must not be empty")
        for name in ("idle_timeout", "request_timeout", "connect_timeout", "outage_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.max_retries < 0 or self.max_resends < 1:
            raise ValueError("max_retries must not be negative and max_resends at least 1")
        if self.pacing_margin < 0 or not 0 <= self.pacing_margin_ratio < 1:
            raise ValueError("pacing_margin must not be negative; pacing_margin_ratio is 0-1")
        self.port = parse_port(self.port)
        if isinstance(self.gateways, str):
            self.gateways = [g for g in self.gateways.split(",") if g.strip()]
        if self.gateways is not None:
            self.gateways = tuple(self.gateways)
            if not self.gateways:
                raise ValueError("gateways must name at least one host:port")
            self.addresses  # noqa: B018 - parse now: a bad entry fails at construction

    @property
    def addresses(self) -> list[GatewayAddress]:
        """The gateways: ``gateways`` parsed, else ``host:port``."""
        if not self.gateways:
            return [GatewayAddress(self.host, self.port, self.client_ids)]
        out = [GatewayAddress.parse(g, self.client_ids) for g in self.gateways]
        if len({a.key for a in out}) != len(out):
            raise ValueError(f"a gateway is listed twice in {list(self.gateways)}")
        return out

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
        scale = self.pacing_policy.scale
        return RetryPolicy() if scale <= 1 else RetryPolicy().scaled(scale)

    def replace(self, **changes) -> FarmConfig:
        """A copy with ``changes`` applied (unknown names raise ``TypeError``)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> FarmConfig:
        """Settings from ``IB_HOST``, ``IB_PORT``, ``IB_GATEWAYS`` and ``IBFARM_*``, then
        ``overrides``.

        Reads ``IB_GATEWAYS`` (``host:port,host:port``; wins over ``IB_HOST``/``IB_PORT``),
        ``IBFARM_MAX_WORKERS``, ``IBFARM_CLIENT_IDS`` (e.g. ``"10-20"``),
        ``IBFARM_IDLE_TIMEOUT``, ``IBFARM_REQUEST_TIMEOUT``, ``IBFARM_CONNECT_TIMEOUT``,
        ``IBFARM_PACING`` (a preset name), ``IBFARM_PACING_MARGIN``, ``IBFARM_MAX_RETRIES``,
        ``IBFARM_OUTAGE_TIMEOUT``, ``IBFARM_BACKEND`` and ``IBFARM_RETRY_ATTEMPTS`` (attempts
        per request after transient IB errors; 1 turns retries off).

        Args:
            env: the environment to read (default ``os.environ``).
            overrides: fields that win over the environment.

        Raises:
            ValueError: a variable that cannot be read; the message names it.
        """
        env = os.environ if env is None else env
        readers = {
            "host": ("IB_HOST", str),
            "port": ("IB_PORT", parse_port),
            "gateways": ("IB_GATEWAYS", lambda v: [g for g in v.split(",") if g.strip()]),
            "max_workers": ("IBFARM_MAX_WORKERS", int),
            "client_ids": ("IBFARM_CLIENT_IDS", parse_client_ids),
            "idle_timeout": ("IBFARM_IDLE_TIMEOUT", float),
            "request_timeout": ("IBFARM_REQUEST_TIMEOUT", float),
            "connect_timeout": ("IBFARM_CONNECT_TIMEOUT", float),
            "pacing": ("IBFARM_PACING", str),
            "pacing_margin": ("IBFARM_PACING_MARGIN", float),
            "max_retries": ("IBFARM_MAX_RETRIES", int),
            "outage_timeout": ("IBFARM_OUTAGE_TIMEOUT", float),
            "backend": ("IBFARM_BACKEND", str),
            "retry": ("IBFARM_RETRY_ATTEMPTS", lambda v: RetryPolicy(max_attempts=int(v))),
        }
        values = {}
        given = set(overrides)
        if given & {"host", "port"}:
            given.add("gateways")  # a gateway given in code wins over IB_GATEWAYS too
        for name, (var, convert) in readers.items():
            if name in given:
                continue  # not read at all: a bad value there cannot stop an override
            raw = env.get(var)
            if raw not in (None, ""):
                try:
                    values[name] = convert(raw)
                except ValueError as exc:
                    raise ValueError(f"{var}={raw!r}: {exc}") from None
        values.update(overrides)
        try:
            return cls(**values)
        except ValueError as exc:
            raise ValueError(f"farm settings: {exc}") from None


def _as_range(ids) -> range:
    if isinstance(ids, str):
        return parse_client_ids(ids)
    ids = sorted(int(i) for i in ids)
    if not ids or ids != list(range(ids[0], ids[-1] + 1)):
        raise ValueError("client_ids must be a contiguous range")
    return range(ids[0], ids[-1] + 1)


__all__ = ["FarmConfig", "GatewayAddress", "RetryPolicy", "parse_client_ids", "parse_port"]
