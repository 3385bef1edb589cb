"""Every setting of the simulated gateway, in one dataclass that serves both faces of it.

``SimGateway(**settings)`` takes these fields as keywords and ``ibfarm gateway`` derives one
flag per field from them (``cli_parameters``), so a setting is written down once::

    SimSettings ──► SimGateway(port=0, latency="ib", ...)      (Python, tests, benchmarks)
        │  fields + metadata (help, flag type, parser)
        └────────► ibfarm gateway --latency ib --latency-scale 10 ...   (command line)

Settings may change while the gateway runs (``gw.latency = 0.2``): they are read when a
request is served. ``pacing`` is the exception: its rules are built when the gateway starts.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

from ibfarm.pacing import PacingPolicy
from ibfarm.sim.latency import check_latency
from ibfarm.sim.texts import PACING_TEXTS


def _opt(help: str, *, flag: str | None = None, kind: Any = None, parse: Callable | None = None,
         cli_default: Any = dataclasses.MISSING, cli: bool = True) -> dict:
    """Field metadata: the flag's help, its name and type, how its text becomes the value."""
    return {"help": help, "flag": flag, "kind": kind, "parse": parse, "cli": cli,
            "cli_default": cli_default}


def parse_when(text: str | None) -> datetime | None:
    """An ISO 8601 instant (``2024-06-03T20:00Z``; naive means UTC), or None."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO 8601 time: {text!r} (e.g. 2024-06-03T20:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@dataclass
class SimSettings:
    """The simulated gateway's settings (see the README's knobs table)."""

    host: str = field(default="127.0.0.1", metadata=_opt("Address to bind (loopback by "
                                                          "default)."))
    port: int = field(default=0, metadata=_opt("TCP port (0 picks a free one).",
                                               cli_default=4002))
    seed: int = field(default=0, metadata=_opt("Seed of the market model."))
    pacing: PacingPolicy | str = field(default="ib", metadata=_opt(
        "Pacing rules to enforce: ib, conservative or off.", kind=str))
    pacing_scale: float = field(default=1.0, metadata=_opt(
        "Divide every pacing window by this factor."))
    pacing_text: str = field(default=PACING_TEXTS[0], metadata=_opt(
        "Suffix of the 162 pacing-violation text (IB's variants: " + "; ".join(PACING_TEXTS)
        + ")."))
    latency: float | str = field(default=0.0, metadata=_opt(
        "Seconds before each historical answer, or 'ib' for the model fitted to the real "
        "gateway's published times.", kind=str, parse=check_latency))
    latency_scale: float = field(default=1.0, metadata=_opt(
        "Divide the latency (fixed or 'ib') by this factor."))
    latency_per_bar: float = field(default=0.0, metadata=_opt(
        "Extra seconds per bar in an answer."))
    latency_end_factor: float = field(default=1.0, metadata=_opt(
        "Multiply the delay of requests with an explicit endDateTime by this."))
    hmds_concurrency: int = field(default=0, metadata=_opt(
        "Serve at most this many historical requests at once; the rest queue (0: no limit)."))
    stall_symbols: tuple[str, ...] = field(default=(), metadata=_opt(
        "Never answer historical requests for this symbol.", flag="--stall-symbol"))
    no_permission_symbols: tuple[str, ...] = field(default=(), metadata=_opt(
        "Answer bars for this symbol with 162 'No market data permissions'.",
        flag="--no-permission-symbol"))
    poison_symbols: tuple[str, ...] = field(default=(), metadata=_opt(
        "Drop the connection whenever a request names this symbol.", flag="--poison-symbol"))
    drop_after: Optional[int] = field(default=None, metadata=_opt(  # noqa: UP045 (typer)
        "Drop a connection when it sends bar request N+1."))
    drop_rate: float = field(default=0.0, metadata=_opt(
        "Probability that a bar request drops its connection."))
    fault_seed: int = field(default=0, metadata=_opt("Seed of the random faults."))
    now: datetime | Callable[[], datetime] | None = field(default=None, metadata=_opt(
        "The gateway's clock: start at this ISO 8601 time (e.g. 2024-06-03T20:00Z); real "
        "time if not given.", kind=Optional[str], parse=parse_when))  # noqa: UP045
    clock_speed: float = field(default=0.0, metadata=_opt(
        "How fast a clock given by --now runs (0: frozen, 1: real time)."))
    time_zone: str = field(default="US/Eastern", metadata=_opt(
        "The TWS login zone: dates in formatDate=1 answers and implied end zones."))
    accounts: tuple[str, ...] = field(default=("DU123456",), metadata=_opt(
        "Managed account reported to clients.", flag="--account"))
    maintenance_refusals: bool = field(default=False, metadata=_opt(
        "During a maintenance window answer valid symbols with a spurious 200 instead of "
        "holding the requests until it ends."))
    client_id_hold: float = field(default=0.0, metadata=_opt(
        "After a restart the old sessions keep their client ids this many seconds (326)."))
    hmds_outage_after: Optional[float] = field(default=None, metadata=_opt(  # noqa: UP045
        "Start a historical-farm outage (2105 ... 2106) this many seconds after start."))
    hmds_outage_for: float = field(default=5.0, metadata=_opt("Length of that outage (s)."))
    maintenance_after: Optional[float] = field(default=None, metadata=_opt(  # noqa: UP045
        "Start a maintenance window (1100 ... 1102) this many seconds after start."))
    maintenance_for: float = field(default=30.0, metadata=_opt(
        "Length of that window (s)."))
    restart_after: Optional[float] = field(default=None, metadata=_opt(  # noqa: UP045
        "Restart the gateway (drop every connection, close the port) this many seconds after "
        "start."))
    restart_for: float = field(default=5.0, metadata=_opt("How long the port stays closed."))

    def __post_init__(self) -> None:
        self.latency = check_latency(self.latency)
        for name in ("stall_symbols", "no_permission_symbols", "poison_symbols", "accounts"):
            value = getattr(self, name)
            setattr(self, name, (value,) if isinstance(value, str) else tuple(value))
        for name in ("pacing_scale", "latency_scale"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if not 0 <= self.drop_rate <= 1:
            raise ValueError("drop_rate must be between 0 and 1")

    def policy(self) -> PacingPolicy:
        """The pacing policy these settings ask for (``pacing`` scaled by ``pacing_scale``)."""
        policy = PacingPolicy.coerce(self.pacing)
        return policy.scaled(self.pacing_scale) if self.pacing_scale != 1.0 else policy

    def clock(self) -> Callable[[], datetime]:
        """The clock: ``now`` if it is one, a clock starting at ``now`` (running at
        ``clock_speed``) if it is a datetime, the system clock otherwise."""
        now = self.now
        if callable(now):
            return now
        if now is None:
            return lambda: datetime.now(timezone.utc)
        start, origin, speed = now, time.monotonic(), self.clock_speed
        if not speed:
            return lambda: start
        return lambda: start + timedelta(seconds=(time.monotonic() - origin) * speed)

NAMES = frozenset(f.name for f in dataclasses.fields(SimSettings))


def cli_parameters() -> list[inspect.Parameter]:
    """One keyword parameter per setting, with a ``typer.Option`` default (``ibfarm gateway``)."""
    import typer

    params = []
    for f in dataclasses.fields(SimSettings):
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        kind = meta["kind"] or f.type
        default = meta["cli_default"] if meta["cli_default"] is not dataclasses.MISSING \
            else f.default
        if isinstance(default, tuple):
            kind, default = list[str], list(default)
        if kind in ("int", "float", "str", "bool"):
            kind = {"int": int, "float": float, "str": str, "bool": bool}[kind]
        elif isinstance(kind, str):
            kind = {"Optional[int]": Optional[int], "Optional[float]": Optional[float]  # noqa: UP045
                    }.get(kind, str)
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        decls = [flag] if kind is not bool else [f"{flag}/{flag.replace('--', '--no-', 1)}"]
        params.append(inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, annotation=kind,
            default=typer.Option(default, *decls, help=meta["help"])))
    return params


def from_cli(values: dict[str, Any]) -> SimSettings:
    """Settings from the flags' values (each through its field's parser).

    Raises:
        ValueError: a value the setting does not take, with what to give instead.
    """
    kwargs = {}
    for f in dataclasses.fields(SimSettings):
        if f.name not in values:
            continue
        value = values[f.name]
        parse = f.metadata.get("parse")
        kwargs[f.name] = parse(value) if parse and value is not None else value
    return SimSettings(**kwargs)
