"""The command line with several gateways (IB_GATEWAYS): the farm uses every one, a refused
one among them is worked around, and all refused is one line naming them."""

from __future__ import annotations

from typer.testing import CliRunner

from ibfarm.sim import SimGateway
from ktrdr.cli import app
from ktrdr.data.store import BarStore
from tests.cli_helpers import free_port, one_error_line

from .conftest import NOW

runner = CliRunner()


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
    line = one_error_line(result.output)
    assert line.startswith("error: cannot connect")
    assert f"127.0.0.1:{a}, 127.0.0.1:{b} (IB_GATEWAYS)" in line
    assert "connection refused" in line and "--sim" in line
