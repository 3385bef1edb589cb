"""Running ``ibfarm`` and ``ktrdr`` as real processes, as a person at a shell would: what they
print, how they exit, and that nothing they started is left behind."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from ibfarm.pacer import segment_name

ROOT = Path(__file__).resolve().parents[1]
#: Every wait for a command ends within this many seconds.
WAIT = 60.0


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the IB_*, IBFARM_* and KTRDR_* variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("IB_", "IBFARM_", "KTRDR_"))}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def run(module: str, *args: str, env: dict[str, str] | None = None,
        timeout: float = WAIT) -> subprocess.CompletedProcess:
    """``python -m module args...`` to completion; stdout and stderr as text."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                          text=True, env=env if env is not None else clean_env(),
                          timeout=timeout, stdin=subprocess.DEVNULL)


def free_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def one_error_line(text: str) -> str:
    """``text`` is exactly one ``error: ...`` line (no traceback, no repeated hints)."""
    found = lines(text)
    assert len(found) == 1, f"expected one line, got:\n{text}"
    assert found[0].startswith("error: "), found[0]
    assert "Traceback" not in text
    return found[0]


@dataclass
class Stopped:
    """What an interrupted command left: its exit code and output, the seconds from the
    signal to its exit, and its processes (children included) still alive afterwards."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    left: list[psutil.Process]


def interrupt(command: list[str], ready, signum: int = signal.SIGINT, env=None,
              timeout: float = WAIT) -> Stopped:
    """Start ``command`` in a session of its own, wait until ``ready()`` is true, then send
    ``signum`` to its process group (as a terminal's Ctrl-C does) and wait for it to exit.

    Whatever is still alive 15 s after the exit is reported in ``left``, then killed.
    """
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=env if env is not None else clean_env(),
                            start_new_session=True, text=True)
    family: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"exited ({proc.returncode}) before it was interrupted:\n"
                                     f"{out[-2000:]}\n{err[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("the command never became ready to interrupt")
            time.sleep(0.02)
        family = psutil.Process(proc.pid).children(recursive=True)
        sent = time.monotonic()
        os.killpg(proc.pid, signum)
        out, err = proc.communicate(timeout=timeout)
        seconds = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=10)
    alive = wait_gone(family, 15)
    for child in alive:
        child.kill()
    return Stopped(proc.returncode, out, err, seconds, alive)


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to ``timeout`` s for ``procs`` to exit; those still running then."""
    deadline = time.monotonic() + timeout
    alive = living(procs)
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = living(alive)
    return alive


def living(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``procs`` still running. A zombie has exited: only its parent (here often
    init, which reaps when it gets to it) has yet to collect its status."""
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            continue
    return out


def pacer_segment(port: int, host: str = "127.0.0.1") -> Path:
    """Where the farm's shared pacer for ``host:port`` lives (gone once its last user left)."""
    return Path("/dev/shm") / segment_name(f"{host}:{port}")


@pytest.fixture
def restore_logging():
    """Put the root logger back after a command configured it in this process."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.disable(logging.NOTSET)
