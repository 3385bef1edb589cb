"""Fixtures for the HTTP API: a simulated gateway in this process and the real server
(``ktrdr api`` under uvicorn) in a subprocess pointed at it.

Every server runs in a session of its own; stopping it sends SIGTERM to the server, then
SIGKILL to whatever is left of its session (farm workers, forkserver), so nothing outlives
the fixture.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from ibfarm.sim import SimGateway
from tests.cli_helpers import clean_env, free_port, living
from tests.conftest import gateways
from tests.conftest import wait_until as poll_until

ROOT = Path(__file__).resolve().parents[2]
#: Every wait in these tests ends within this many seconds.
WAIT = 30.0


def wait_until(predicate: Callable[[], object], timeout: float = WAIT, every: float = 0.05,
               what: str = "condition") -> object:
    """``tests.conftest.wait_until`` with this suite's longer wait (a server in a subprocess)."""
    return poll_until(predicate, timeout, every, what)


class ApiServer:
    """``ktrdr api`` (or ``tests.api.launch``) in a subprocess, and an httpx client for it."""

    def __init__(self, gateway_port: int, data_dir: Path, log_path: Path,
                 token: str | None = None, command: tuple[str, ...] = ("-m", "ktrdr.cli", "api"),
                 **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.log_path = log_path
        self.token = token
        environ = clean_env(IB_HOST="127.0.0.1", IB_PORT=str(gateway_port),
                            KTRDR_DATA_DIR=str(data_dir))
        environ.update(env)
        if token:
            environ["KTRDR_API_TOKEN"] = token
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, *command, "--port", str(self.port), "--log-level", "info"],
            cwd=ROOT, env=environ, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=self.url + "/api/v1", headers=headers, timeout=WAIT)

    def wait_ready(self, timeout: float = WAIT) -> None:
        def answered() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n"
                                     f"{self.log()}")
            try:
                self.client.get("/health", timeout=2)
                return True
            except httpx.TransportError:
                return False
        wait_until(answered, timeout, every=0.1, what="the API server to answer")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def session_processes(self) -> list[psutil.Process]:
        """The server's session still running (zombies waiting for init to reap them have
        exited and are left out)."""
        out = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if os.getsid(proc.pid) == self.process.pid:
                    out.append(proc)
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        return living(out)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM the server, wait for a clean exit, then kill what is left of its session."""
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        code = self.process.returncode
        try:
            wait_until(lambda: not self.session_processes(), timeout=10, what="workers to exit")
        except AssertionError:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._log.close()
        return code

    # ------------------------------------------------------------------ helpers

    def operation(self, op_id: str) -> dict:
        response = self.client.get(f"/operations/{op_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_operation(self, op_id: str, timeout: float = WAIT) -> dict:
        """Poll until the operation has finished; returns its final state."""
        def finished():
            op = self.operation(op_id)
            return op if op["status"] in ("succeeded", "failed", "cancelled") else None
        return wait_until(finished, timeout, every=0.1, what=f"operation {op_id}")

    def start(self, path: str, body: dict) -> dict:
        response = self.client.post(path, json=body)
        assert response.status_code == 202, response.text
        assert response.headers["location"].endswith(response.json()["id"])
        return response.json()


@pytest.fixture(scope="module")
def make_server(tmp_path_factory) -> Iterator[Callable[..., ApiServer]]:
    """Start API servers (module scope); all are stopped when the module is done."""
    servers: list[ApiServer] = []

    def make(gateway: SimGateway, token: str | None = None, no_retry: bool = False,
             **env: str) -> ApiServer:
        base = tmp_path_factory.mktemp("api")
        command = ("-m", "tests.api.launch", "--no-retry") if no_retry else (
            "-m", "ktrdr.cli", "api")
        server = ApiServer(gateway.port, base / "data", base / "server.log", token, command,
                           **env)
        servers.append(server)
        try:
            server.wait_ready()
        except BaseException:
            server.stop()
            raise
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def make_gateway() -> Iterator[Callable[..., SimGateway]]:
    """Simulated gateways (fixed clock, IB's pacing unless told) for one test module."""
    with gateways() as make:
        yield make


def assert_problem(response: httpx.Response, status: int, kind: str,
                   ib_code: int | None = None) -> dict:
    """The response is an RFC 9457 problem with this status and kind; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    assert body["kind"] == kind
    assert body["type"].endswith("/problems/" + kind)
    assert body["title"] and body["detail"] and body["hint"]
    assert body["instance"] == response.request.url.path
    if ib_code is not None:
        assert body["ib_code"] == ib_code
    return body
