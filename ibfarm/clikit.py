"""What ``ibfarm``'s and ``ktrdr``'s command lines share: one grammar, one way to fail, one way
to stop.

::

    argv ──► CommandLine (the root group): -v/--verbose taken from anywhere on the line,
        │    --version; typer parses the rest
        ▼
    command: dates.parse_when (--start/--end), gateway_address (--host/--port/--sim, IB_HOST,
        │    IB_PORT, IB_GATEWAY=sim) ── bad input ──► UsageError ──► "error: ..." exit 2
        │    probe(host, port) before any farm starts ── refused ──► unreachable() exit 1
        ▼
    StopOnSignal.run(work): the work runs on a thread, the main thread waits for it or for
        │    SIGINT/SIGTERM; the first signal runs the cancel hooks, gives the work GRACE s
        │    to stop, then raises Interrupted (the command prints one line, cleans up and
        │    exits 128 + signal: 130 for SIGINT, 143 for SIGTERM); a second signal, or
        │    cleanup past HARD_DEADLINE s, exits at once
        ▼
    failed work ──► one line on stderr, exit 1

Exit codes: 0 done, 1 the work failed, 2 bad input (nothing was done), 130/143 stopped by
SIGINT/SIGTERM (what was saved is kept; a re-run resumes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import click
import typer
from typer.core import TyperGroup

log = logging.getLogger(__name__)
T = TypeVar("T")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: Seconds the work gets to stop after the first signal before the command reports and exits.
GRACE = 1.5
#: Seconds after the first signal by which the process has exited, cleanup finished or not.
HARD_DEADLINE = 6.0
#: Where both command lines look for the gateway when nothing says otherwise.
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 4002
VERBOSE_FLAGS = ("-v", "--verbose")

HOST_HELP = "IB Gateway / TWS host to fetch from."
PORTS = "4002 IB Gateway paper, 4001 live, 7497 TWS paper, 7496 live"
PORT_HELP = f"Its API port ({PORTS})."
SIM_HELP = "Start an embedded simulated IB Gateway and fetch from it (also: IB_GATEWAY=sim)."
HOST_DEFAULT = f"IB_HOST or {DEFAULT_HOST}"
PORT_DEFAULT = f"IB_PORT or {DEFAULT_PORT}"
VERBOSE_HELP = "Log more (accepted anywhere on the line)."


class UsageError(ValueError):
    """Bad input: the command prints the message and exits 2 without doing anything."""


# --------------------------------------------------------------------------- the grammar


class CommandLine(TyperGroup):
    """A root command group that takes ``-v``/``--verbose`` anywhere on the line (before a
    ``--``), not only before the subcommand."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        args = list(args)
        cut = args.index("--") if "--" in args else len(args)
        head, tail = args[:cut], args[cut:]
        verbose = any(a in VERBOSE_FLAGS for a in head)
        head = [a for a in head if a not in VERBOSE_FLAGS]
        return super().parse_args(ctx, ["--verbose"] * verbose + head + tail)


def version_option(program: str) -> Any:
    """A ``--version`` option (eager: it prints ``program <version>`` and exits)."""
    def show(value: bool) -> None:
        if value:
            typer.echo(f"{program} {package_version()}")
            raise typer.Exit()
    return typer.Option(False, "--version", callback=show, is_eager=True,
                        help="Print the version and exit.")


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ibfarm")
    except PackageNotFoundError:
        return "0+unknown"


def setup_logging(verbose: bool, console: Any = None) -> None:
    """Log records through rich's handler on ``console`` (stderr by default), so that they are
    printed above live progress bars instead of through them."""
    from rich.console import Console
    from rich.logging import RichHandler

    console = console if console is not None else Console(stderr=True)
    handler = RichHandler(console=console, show_path=False, markup=False,
                          rich_tracebacks=False, log_time_format="%H:%M:%S")
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    handler.set_name("clikit")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "clikit"]:
        root.removeHandler(old)  # one per process, whichever command ran last
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    """Print ``error: message`` on stderr; returns the ``typer.Exit`` to raise."""
    click.echo(f"error: {message}", err=True)
    return typer.Exit(code)


# --------------------------------------------------------------------------- the gateway


@dataclass(frozen=True)
class Gateway:
    """Where a command fetches from, and what said so (for error messages)."""

    host: str
    port: int
    sim: bool = False
    source: str = "default"  # "--host/--port", "IB_HOST/IB_PORT", "IB_GATEWAYS" or "default"
    gateways: tuple[str, ...] = ()  # every "host:port" of IB_GATEWAYS (host, port: the first)

    @property
    def address(self) -> str:
        return ", ".join(self.gateways) if self.gateways else f"{self.host}:{self.port}"

    def addresses(self) -> list[tuple[str, int]]:
        """Every gateway as ``(host, port)``."""
        if not self.gateways:
            return [(self.host, self.port)]
        return [(key.rpartition(":")[0], int(key.rpartition(":")[2])) for key in self.gateways]

    def named(self) -> str:
        """The address and where it came from: ``127.0.0.1:4002 (IB_HOST:IB_PORT)``."""
        names = {"--host/--port": "--host/--port", "IB_HOST/IB_PORT": "IB_HOST:IB_PORT",
                 "IB_GATEWAYS": "IB_GATEWAYS",
                 "default": "the default; set IB_HOST/IB_PORT or --host/--port"}
        return f"{self.address} ({names.get(self.source, self.source)})"

    def farm_options(self) -> dict:
        """The ``FarmConfig`` fields that name this gateway (or these gateways)."""
        if self.gateways:
            return {"gateways": list(self.gateways)}
        return {"host": self.host, "port": self.port}


def sim_requested(flag: bool = False, env: Mapping[str, str] | None = None) -> bool:
    """``--sim`` given, or ``IB_GATEWAY=sim`` in the environment."""
    env = os.environ if env is None else env
    return flag or env.get("IB_GATEWAY", "").strip().lower() == "sim"


def parse_port(text: str, what: str) -> int:
    """A TCP port (1-65535) from text.

    Raises:
        UsageError: anything else, naming ``what`` (``"IB_PORT"``, ``"--port"``).
    """
    try:
        port = int(str(text).strip())
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise UsageError(f"{what}={text!r} is not a port number (1-65535); give the gateway's "
                         f"API port ({PORTS})")
    return port


def gateway_address(host: str | None = None, port: int | None = None, sim: bool = False,
                    env: Mapping[str, str] | None = None) -> Gateway:
    """The gateway a command talks to: ``--host/--port``, else ``IB_HOST``/``IB_PORT``, else
    127.0.0.1:4002; or the embedded simulator (``--sim`` or ``IB_GATEWAY=sim``).

    Raises:
        UsageError: a malformed ``IB_PORT``/``IB_HOST``/``--port``, or ``--host/--port``
            together with ``--sim``.
    """
    env = os.environ if env is None else env
    if sim_requested(sim, env):
        if host is not None or port is not None:
            why = "--sim" if sim else "IB_GATEWAY=sim"
            raise UsageError(f"--host/--port name a gateway to connect to, but {why} starts "
                             f"its own; drop one of them")
        return Gateway("127.0.0.1", 0, sim=True, source="--sim")
    env_host = env.get("IB_HOST", "").strip()
    env_port = env.get("IB_PORT", "").strip()
    if env_port:
        parse_port(env_port, "IB_PORT")  # a bad one is an error even under --port
    if env.get("IB_HOST") is not None and not env_host:
        raise UsageError("IB_HOST is set but empty; unset it or give the gateway's host name")
    if port is not None:
        port = parse_port(str(port), "--port")
    if host is not None and not host.strip():
        raise UsageError("--host is empty; give the gateway's host name or address")
    listed = env.get("IB_GATEWAYS", "").strip()
    if listed and host is None and port is None:
        from ibfarm.config import GatewayAddress

        try:
            found = [GatewayAddress.parse(g, range(1, 2)) for g in listed.split(",") if g.strip()]
        except ValueError as exc:
            raise UsageError(f"IB_GATEWAYS={listed!r}: {exc}") from None
        if not found:
            raise UsageError("IB_GATEWAYS is set but names no gateway; use host:port,host:port")
        return Gateway(found[0].host, found[0].port, source="IB_GATEWAYS",
                       gateways=tuple(g.strip() for g in listed.split(",") if g.strip()))
    source = "--host/--port" if host is not None or port is not None else (
        "IB_HOST/IB_PORT" if env_host or env_port else "default")
    return Gateway(host.strip() if host else env_host or DEFAULT_HOST,
                   port if port is not None else int(env_port or DEFAULT_PORT),
                   source=source)


def probe(host: str, port: int, timeout: float = 2.0) -> str | None:
    """Open and close a TCP connection to ``host:port`` (no API handshake, so no client id
    is used); None when it connected, else why not ("connection refused", ...)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except ConnectionRefusedError:
        return "connection refused"
    except socket.gaierror as exc:
        return f"unknown host ({exc.strerror or exc})"
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return (exc.strerror or str(exc) or type(exc).__name__).lower()


def probe_gateway(gateway: Gateway, timeout: float = 2.0) -> str | None:
    """``probe`` of every address of ``gateway``: None when one of them connected (a farm over
    several gateways works while one is up), else the first one's reason."""
    reasons = [probe(host, port, timeout) for host, port in gateway.addresses()]
    return None if any(r is None for r in reasons) else reasons[0]


def connection_gist(message: str) -> str:
    """The gist of a connection error: "connection refused", or its first sentence."""
    if "refused" in message.lower():
        return "connection refused"
    return message.split(". ", 1)[0].rstrip(".")


def unreachable(gateway: Gateway, reason: str) -> str:
    """The one line for a gateway that cannot be reached."""
    ports = ", ".join(str(port) for _, port in gateway.addresses())
    return (f"cannot connect to IB Gateway/TWS at {gateway.named()}: {reason}. Check that it "
            f"is running and logged in with its API enabled on port {ports}, or pass "
            f"--sim to use the simulated gateway")


# --------------------------------------------------------------------------- stopping


class Interrupted(Exception):
    """Raised by ``StopOnSignal.run`` after SIGINT/SIGTERM; ``exit_code`` is 128 + signal."""

    def __init__(self, signum: int):
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {self.name}")


class StopOnSignal:
    """Run a command's work so that SIGINT/SIGTERM stop it promptly (see the module docstring).

    Args:
        grace: seconds the work gets to stop after the cancel hooks ran.
        deadline: seconds after the first signal by which the process exits regardless.
        signals: the signals handled.

    Use as a context manager in the main thread (elsewhere it only runs the work).
    """

    def __init__(self, grace: float = GRACE, deadline: float = HARD_DEADLINE,
                 signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)):
        self.grace = grace
        self.deadline = deadline
        self.signals = signals
        self.signum: int | None = None
        self.signalled_at: float | None = None
        self._hooks: list[Callable[[], object]] = []
        self._previous: dict[int, Any] = {}
        self._wake = threading.Event()
        self._lock = threading.Lock()

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @property
    def signalled(self) -> bool:
        return self.signum is not None

    def on_stop(self, hook: Callable[[], object]) -> None:
        """Call ``hook`` (on a thread of its own) at the first signal; at once if it came."""
        with self._lock:
            self._hooks.append(hook)
            late = self.signalled
        if late:
            _spawn(hook)

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.signum is not None:  # the second one: leave now
            exit_now(128 + self.signum)
        with self._lock:
            self.signum = signum
            self.signalled_at = time.monotonic()
            hooks = list(self._hooks)
        # From here on the command says one line; the library's warnings about requests it
        # cancelled (and their tracebacks) are noise.
        logging.disable(logging.CRITICAL)
        timer = threading.Timer(self.deadline, exit_now, (128 + signum,))
        timer.daemon = True
        timer.start()
        for hook in hooks:
            _spawn(hook)
        self._wake.set()

    def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on a thread; its result or exception.

        Raises:
            Interrupted: a signal came (before or while ``fn`` ran); ``fn`` had ``grace``
                seconds after the cancel hooks to stop.
        """
        if self.signalled:
            raise Interrupted(self.signum)
        box: dict[str, Any] = {}
        done = threading.Event()

        def work() -> None:
            try:
                box["value"] = fn(*args, **kwargs)
            except BaseException as exc:  # handed to the caller's thread
                box["error"] = exc
            finally:
                done.set()
                self._wake.set()

        thread = threading.Thread(target=work, name="cli-work", daemon=True)
        thread.start()
        while not done.is_set() and not self.signalled:
            self._wake.wait(0.2)
            self._wake.clear()
        if self.signalled:
            done.wait(max(0.0, self.signalled_at + self.grace - time.monotonic()))
            raise Interrupted(self.signum)
        if "error" in box:
            raise box["error"]
        return box["value"]


def _spawn(hook: Callable[[], object]) -> None:
    def call() -> None:
        with contextlib.suppress(Exception):
            hook()
    threading.Thread(target=call, name="cli-stop", daemon=True).start()


def exit_now(code: int) -> None:
    """Flush stdout and stderr and leave without the interpreter's teardown (whose daemon
    threads and half-finished event loops have nothing left to say)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


__all__ = ["CommandLine", "EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "Gateway", "Interrupted",
           "StopOnSignal", "UsageError", "exit_now", "fail", "gateway_address", "probe",
           "setup_logging", "sim_requested", "unreachable", "version_option", "connection_gist"]
