"""The benchmark harness's smallest runs, so it cannot rot: real contenders on real simulated
gateways, every scenario's smallest form; figures are not asserted (the machine is shared),
only that every request was answered, within the rules, and reported."""

from __future__ import annotations

import dataclasses
import json

import pytest

from benchmarks import chart
from benchmarks.__main__ import main, parse_args
from benchmarks.bounds import ib_bound
from benchmarks.scenarios import SIM_NOW
from benchmarks.scenarios.base import minutely, weekly
from ibfarm.pacing import PacingPolicy


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


def test_bound_follows_each_rule():
    ib = PacingPolicy()
    hourly = weekly(250, SIM_NOW, "1 hour", "1 W", use_rth=True)
    b = ib_bound(hourly, ib, 0.3)
    # 50 messages a second: requests 200-249 leave at 4 s; answer k waits for answer k - 50
    assert (b.message_s, b.open_s, b.small_bar_s) == (4.0, 4 * 0.3, 0.0)
    assert b.total_s == pytest.approx(4.3) and b.binding == "message rate"
    slow = ib_bound(hourly, ib, 2.0)
    assert slow.binding == "open requests" and slow.total_s == pytest.approx(4 * 2.0 + 2.0)

    scaled = ib.scaled(120)  # 60 small-bar requests per 5 s
    seconds = minutely(180, SIM_NOW, "1 secs", "60 S")
    small = ib_bound(seconds, scaled, 0.0)
    assert small.small_bar_s == pytest.approx(2 * scaled.window)
    assert small.binding == "small-bar rules"
    twice = ib_bound(seconds[:1] * 3, scaled, 0.0)  # the same request thrice
    assert twice.small_bar_s == pytest.approx(2 * scaled.identical_window)
    bid_ask = [dataclasses.replace(r, what_to_show="BID_ASK") for r in seconds[:60]]
    assert ib_bound(bid_ask, scaled, 0.0).small_bar_s == pytest.approx(scaled.window)
    assert ib_bound([], ib, 0.3).total_s == 0.0


def test_real_gateway_needs_confirmation():
    with pytest.raises(SystemExit):
        parse_args(["--host", "127.0.0.1", "--port", "4002"])
    args = parse_args(["--port", "4002", "--i-understand-this-uses-my-account"])
    assert args.confirm and args.port == 4002


def test_unknown_names_are_refused_with_status_2(capsys):
    for argv in (["--scenarios", "scale,nope"], ["--contenders", "farm-3"]):
        with pytest.raises(SystemExit) as exit_info:
            parse_args(argv)
        assert exit_info.value.code == 2
        assert "choose from" in capsys.readouterr().err
    args = parse_args(["--scenarios", "all"])
    assert {"backfill", "gateway", "large"} <= set(args.scenario_names)
    assert "backfill" not in parse_args([]).scenario_names
