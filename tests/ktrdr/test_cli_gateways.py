"""The command line with several gateways (IB_GATEWAYS): the farm uses every one, a refused
one among them is worked around, and all refused is one line naming them."""

from __future__ import annotations

import socket

from typer.testing import CliRunner

from ibfarm.sim import SimGateway
from ktrdr.cli import app
from ktrdr.data.store import BarStore

from .conftest import NOW

runner = CliRunner()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ib_gateways_are_used_and_a_refused_one_is_worked_around(tmp_path):
    dead = free_port()
    with SimGateway(port=0, now=lambda: NOW, pacing="off") as gw:
        env = {"IB_GATEWAYS": f"127.0.0.1:{gw.port},127.0.0.1:{dead}", "IB_GATEWAY": "",
               "IB_HOST": None, "IB_PORT": None, "IBFARM_CONNECT_TIMEOUT": "2"}
        result = runner.invoke(app, ["data", "load", "MSFT", "1d", "--start", "2024-01-02",
                                     "--end", "2024-06-01", "--mode", "full", "--data-dir",
                                     str(tmp_path)], env=env)
        assert result.exit_code == 0, result.output
        assert "0 gaps left" in result.output
        assert gw.stats()["requests"].get("historical", 0) >= 1
    assert len(BarStore(tmp_path, source="ib").read("MSFT", "1d").frame) > 100


def test_every_gateway_refused_is_one_line_naming_ib_gateways(tmp_path):
    a, b = free_port(), free_port()
    env = {"IB_GATEWAYS": f"127.0.0.1:{a},127.0.0.1:{b}", "IB_GATEWAY": "", "IB_HOST": None,
           "IB_PORT": None}
    result = runner.invoke(app, ["data", "load", "MSFT", "1d", "--mode", "full", "--data-dir",
                                 str(tmp_path)], env=env)
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot connect")
    assert f"127.0.0.1:{a}, 127.0.0.1:{b} (IB_GATEWAYS)" in lines[0]
    assert "connection refused" in lines[0] and "--sim" in lines[0]
