"""``GET /metrics``: the farm and the API in Prometheus' text format (``prometheus-client``).

::

    scrape ──► ApiMetrics.render()  (on a thread: status() takes locks and asks psutil)
                 ├─ FarmCollector ── IbDataAdapter.farm_status() (the farm's status(), read
                 │     now) ──► ibfarm_* families
                 │     requests by kind and outcome, IB errors by code, pacer waits by rule,
                 │     workers by state, spawns / restarts / crashes, RSS per worker
                 ├─ OperationsCollector ── the registry's operations now ──► ktrdr_operations
                 ├─ counters and a histogram the registry feeds as operations finish
                 │     ktrdr_operations_finished_total, ktrdr_operation_duration_seconds,
                 │     ktrdr_bars_stored_total
                 └─ ProcessCollector: this server process (process_resident_memory_bytes, ...)

Every ``ibfarm_*`` sample has a ``gateway`` label. ``status()`` is read defensively: a key the
farm does not report yet is left out instead of failing the scrape. The keys read:

* ``farm.requests``: ``{kind: {outcome: count}}``; without it, one ``kind="all"`` row from the
  totals (``completed`` -> ok, ``failed`` less ``timed_out`` -> error, ``timed_out`` -> timeout);
* ``farm.ib_errors``: ``{code: count}``;
* ``farm``: ``submitted``, ``retried``, ``ib_retries`` (by kind), ``spawned``, ``restarts``
  (else ``crashed``), ``crashed``, ``idle_exits``, ``in_flight``, ``pending``;
* ``workers[]``: ``state``, ``worker_id``, ``client_id``, ``rss_bytes``;
* ``pacer``: ``rule_waits`` (by rule), ``waits``, ``wait_seconds``, ``granted``, ``open``,
  ``waiting``;
* ``gateways``: one entry per gateway (``gateway``, ``in_flight``, ``pacer``), and
  ``workers[].gateway``; with several gateways the farm-wide counters are labelled
  ``gateway="*"``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
#: The farm's request outcomes as ``ibfarm_requests{outcome}`` labels.
OUTCOMES = {"completed": "ok", "failed": "error", "timed_out": "timeout",
            "cancelled": "cancelled"}
#: Buckets of ``ktrdr_operation_duration_seconds``: a cached load to a long backfill.
DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


def _gateways(status: dict, default: str) -> list[tuple[str, dict]]:
    """``(gateway label, status-shaped dict)`` for each set of samples.

    One gateway: the whole status under its address. Several: per gateway its pacer, its
    workers and what it has in flight, under its address; the farm-wide counters (requests,
    IB errors, retries, spawns) under ``gateway="*"``.
    """
    entries = [e for e in status.get("gateways") or [] if isinstance(e, dict)]
    if len(entries) <= 1:
        name = entries[0].get("gateway", default) if entries else default
        return [(str(name), status)]
    workers = [w for w in status.get("workers") or [] if isinstance(w, dict)]
    out = [(str(e.get("gateway")), {
        "farm": {"in_flight": e.get("in_flight")},
        "pacer": e.get("pacer") if isinstance(e.get("pacer"), dict) else {},
        "workers": [w for w in workers if w.get("gateway") == e.get("gateway")],
    }) for e in entries]
    farm = dict(status.get("farm") or {})
    farm.pop("in_flight", None)
    out.append(("*", {"farm": farm}))
    return out


class FarmCollector(Collector):
    """``ibfarm_*`` from ``status()`` at scrape time.

    Args:
        status: the farm's ``status`` method.
        gateway: the address to label samples with when the farm reports one gateway.
    """

    def __init__(self, status: Callable[[], dict], gateway: str):
        self._status = status
        self.gateway = gateway

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("ibfarm_up", "1 when the farm's status could be read")
        try:
            status = self._status() or {}
        except Exception as exc:  # a farm shutting down: say so, keep the scrape
            log.warning("farm status unavailable for /metrics: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from self.families(_gateways(status, self.gateway))

    def families(self, gateways: list[tuple[str, dict]]) -> Iterable[Metric]:
        g = ["gateway"]
        requests = CounterMetricFamily("ibfarm_requests", "Requests the farm finished, by kind "
                                       "and outcome", labels=[*g, "kind", "outcome"])
        submitted = CounterMetricFamily("ibfarm_requests_submitted", "Requests submitted",
                                        labels=g)
        errors = CounterMetricFamily("ibfarm_ib_errors", "IB errors, by IB error code",
                                     labels=[*g, "code"])
        retries = CounterMetricFamily("ibfarm_ib_retries", "Retries after transient IB "
                                      "errors, by error kind", labels=[*g, "kind"])
        moved = CounterMetricFamily("ibfarm_requests_retried", "Requests retried on another "
                                    "worker after theirs died", labels=g)
        in_flight = GaugeMetricFamily("ibfarm_requests_in_flight", "Requests at a worker",
                                      labels=g)
        pending = GaugeMetricFamily("ibfarm_requests_pending", "Requests waiting for a worker",
                                    labels=g)
        waits = CounterMetricFamily("ibfarm_pacer_waits", "Pacer waits, by the rule that held "
                                    "the request", labels=[*g, "rule"])
        wait_s = CounterMetricFamily("ibfarm_pacer_wait_seconds", "Seconds requests waited "
                                     "for the pacer", labels=g)
        granted = CounterMetricFamily("ibfarm_pacer_granted", "Requests the pacer let through",
                                      labels=g)
        open_now = GaugeMetricFamily("ibfarm_pacer_open_requests", "Historical requests open "
                                     "at the gateway", labels=g)
        waiting = GaugeMetricFamily("ibfarm_pacer_waiting", "Requests waiting for the pacer",
                                    labels=g)
        workers = GaugeMetricFamily("ibfarm_workers", "Worker processes, by state",
                                    labels=[*g, "state"])
        rss = GaugeMetricFamily("ibfarm_worker_rss_bytes", "Resident memory of a worker",
                                labels=[*g, "worker", "client_id"])
        spawns = CounterMetricFamily("ibfarm_worker_spawns", "Worker processes started",
                                     labels=g)
        restarts = CounterMetricFamily("ibfarm_worker_restarts", "Workers started again after "
                                       "one died", labels=g)
        crashes = CounterMetricFamily("ibfarm_worker_crashes", "Workers that died (not an idle "
                                      "or requested exit)", labels=g)
        idle = CounterMetricFamily("ibfarm_worker_idle_exits", "Workers that exited idle",
                                   labels=g)
        for name, status in gateways:
            farm = status.get("farm") if isinstance(status.get("farm"), dict) else {}
            by_kind = farm.get("requests")
            if isinstance(by_kind, dict) and by_kind:
                for kind, outcomes in by_kind.items():
                    if isinstance(outcomes, dict):
                        for outcome, count in outcomes.items():
                            if _number(count) is not None:
                                label = OUTCOMES.get(str(outcome), str(outcome))
                                requests.add_metric([name, str(kind), label], count)
            else:
                done, failed = _number(farm.get("completed")), _number(farm.get("failed"))
                timed_out = _number(farm.get("timed_out")) or 0.0
                if done is not None:
                    requests.add_metric([name, "all", "ok"], done)
                if failed is not None:
                    requests.add_metric([name, "all", "error"], max(0.0, failed - timed_out))
                    requests.add_metric([name, "all", "timeout"], timed_out)
            for family, key in ((submitted, "submitted"), (moved, "retried"),
                                (spawns, "spawned"), (crashes, "crashed"),
                                (idle, "idle_exits"), (in_flight, "in_flight"),
                                (pending, "pending")):
                value = _number(farm.get(key))
                if value is not None:
                    family.add_metric([name], value)
            value = _number(farm.get("restarts", farm.get("crashed")))
            if value is not None:
                restarts.add_metric([name], value)
            for family, key in ((errors, "ib_errors"), (retries, "ib_retries")):
                table = farm.get(key)
                if isinstance(table, dict):
                    for label, count in table.items():
                        if _number(count) is not None:
                            family.add_metric([name, str(label)], count)
            pacer = status.get("pacer") if isinstance(status.get("pacer"), dict) else {}
            rules = pacer.get("rule_waits")
            if isinstance(rules, dict):
                for rule, count in rules.items():
                    if _number(count) is not None:
                        waits.add_metric([name, str(rule)], count)
            for family, key in ((wait_s, "wait_seconds"), (granted, "granted"),
                                (open_now, "open"), (waiting, "waiting")):
                value = _number(pacer.get(key))
                if value is not None:
                    family.add_metric([name], value)
            states: dict[str, int] = {}
            for worker in status.get("workers") or []:
                if not isinstance(worker, dict):
                    continue
                state = str(worker.get("state", "unknown"))
                states[state] = states.get(state, 0) + 1
                memory = _number(worker.get("rss_bytes"))
                if memory is not None:
                    rss.add_metric([name, str(worker.get("worker_id", "")),
                                    str(worker.get("client_id", ""))], memory)
            for state, count in sorted(states.items()):
                workers.add_metric([name, state], count)
        yield from (requests, submitted, errors, retries, moved, in_flight, pending, waits,
                    wait_s, granted, open_now, waiting, workers, rss, spawns, restarts,
                    crashes, idle)


class OperationsCollector(Collector):
    """``ktrdr_operations{kind,state}``: the registry's operations now (finished ones as long
    as the registry keeps them)."""

    def __init__(self, counts: Callable[[], dict[tuple[str, str], int]]):
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("ktrdr_operations", "Operations the server knows, by kind "
                                   "and state", labels=["kind", "state"])
        for (kind, state), count in sorted(self._counts().items()):
            family.add_metric([kind, state], count)
        yield family


class ApiMetrics:
    """The API's metrics: one registry per app (two apps in a process do not collide).

    Args:
        farm_status: the farm's ``status`` method.
        gateway: the farm's gateway address (``host:port``), the default ``gateway`` label.
    """

    def __init__(self, farm_status: Callable[[], dict], gateway: str):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(FarmCollector(farm_status, gateway))
        ProcessCollector(registry=self.registry)
        self.finished = Counter("ktrdr_operations_finished", "Operations that finished, by "
                                "kind and final state", ["kind", "state"],
                                registry=self.registry)
        self.duration = Histogram("ktrdr_operation_duration_seconds", "How long finished "
                                  "operations ran, by kind and final state",
                                  ["kind", "state"], buckets=DURATION_BUCKETS,
                                  registry=self.registry)
        self.bars = Counter("ktrdr_bars_stored", "Bars fetched and stored by operations, by "
                            "timeframe", ["timeframe"], registry=self.registry)

    def watch_operations(self, counts: Callable[[], dict[tuple[str, str], int]]) -> None:
        """Report the registry's operations by state at each scrape."""
        self.registry.register(OperationsCollector(counts))

    def operation_finished(self, kind: str, state: str, seconds: float | None,
                           result: Any = None) -> None:
        """Count a finished operation, its duration and the bars it stored."""
        self.finished.labels(kind, state).inc()
        if seconds is not None:
            self.duration.labels(kind, state).observe(max(0.0, seconds))
        for report in getattr(result, "symbols", None) or []:
            rows = getattr(report, "fetched_rows", None)
            if rows:
                timeframe = getattr(report.timeframe, "value", report.timeframe)
                self.bars.labels(str(timeframe)).inc(rows)

    def render(self) -> bytes:
        """The text exposition (blocking: call it on a thread)."""
        return generate_latest(self.registry)


__all__ = ["CONTENT_TYPE", "ApiMetrics", "FarmCollector", "OperationsCollector"]
