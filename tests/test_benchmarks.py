"""The benchmark harness's smallest run, so it cannot rot: two scenarios, two contenders."""

from __future__ import annotations

import json

import pytest

from benchmarks import chart
from benchmarks.__main__ import main, parse_args


def test_harness_smallest_run(tmp_path, capsys):
    results = main(["--quick", "--scenarios", "large,tiny,recovery",
                    "--contenders", "farm-1,gather", "--repeats", "1", "--out", str(tmp_path),
                    "--no-chart"])
    saved = json.loads((tmp_path / "latest.json").read_text())
    assert saved["scenarios"].keys() == {"large", "tiny", "recovery"}
    for name, scenario in saved["scenarios"].items():
        assert "error" not in scenario, (name, scenario["error"])
        assert set(scenario["contenders"]) == {"farm-1", "gather"}
        for row in scenario["contenders"].values():
            assert len(row["runs"]) == 1 and "error" not in row["runs"][0], row
    large = saved["scenarios"]["large"]["contenders"]
    assert large["farm-1"]["runs"][0]["bars"] == large["gather"]["runs"][0]["bars"] > 0
    assert saved["scenarios"]["recovery"]["contenders"]["farm-1"]["summary"]["kill_after_s"]
    assert any(c["target"].startswith("added latency") for c in saved["checks"])
    printed = capsys.readouterr().out
    assert "1. Large responses" in printed and "Targets" in printed

    pytest.importorskip("matplotlib")
    png = chart.draw(results, tmp_path / "chart.png")
    assert png is not None and png.stat().st_size > 1000


def test_real_gateway_needs_confirmation():
    with pytest.raises(SystemExit):
        parse_args(["--host", "127.0.0.1", "--port", "4002"])
    args = parse_args(["--port", "4002", "--i-understand-this-uses-my-account"])
    assert args.confirm and args.port == 4002
