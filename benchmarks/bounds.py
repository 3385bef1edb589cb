"""The shortest wall time IB's rules and the gateway's answer time allow for a batch.

A batch of N historical requests (each one message), sent by a client that loses no time, under
a ``PacingPolicy`` to a gateway that answers each request ``latency`` seconds after reading it.
Requests are numbered k = 0 .. N-1 in the order they leave; every rule alone delays the last::

    message rate   request k leaves no earlier than  (k // message_rate) x message_window
    open requests  request k waits for answer k - max_open:  (k // max_open_requests) x latency
    small bars     (bars of small_bar_max_s or less; weights: BID_ASK counts bid_ask_weight)
      ten-minute window   ((total weight - 1) // window_max) x window
      same contract       per contract, ((its requests - 1) // same_contract_max)
                          x same_contract_window; the longest contract
      identical           per request key, (its copies - 1) x identical_window
    spacing        (N - 1) x min_spacing (a policy with min_spacing, e.g. "conservative")

    bound = max(the terms) + latency (the last answer)

The first window of every rule is free (a burst), hence the floor divisions: 250 requests at 50
messages a second need four seconds of sending, not five. Each term is a lower bound on its
own; together they can only take longer, so the bound is a lower bound: a wall time below it
means a rule was broken. ``wall / bound`` is then how much longer than the rules and the
answer time force a contender took; the pacer's safety margin on each window alone makes it
at least 1 + margin / window.

When every request has an answer time of its own (the simulator's model of IB's, which grows
with the bars in the answer), ``answer_bound`` replaces the open-request term by what 50 open
requests allow for those answer times::

    answers a_0 .. a_{N-1} (seconds from send to answer; any order)
    open requests  at most max_open_requests answers under way at once:  sum(a) / max_open
    longest        one answer alone:                                       max(a)
    message rate   the last request leaves at ((N - 1) // message_rate) x message_window
                   and its answer takes at least min(a):                   that + min(a)
    (small-bar rules and spacing likewise, + min(a))

    bound = max(the terms)

Answer times of their own leave a gap between that bound and what even a client that loses no
time can do: 50 slots of unequal answers do not pack perfectly. ``in_order_s`` is that
client's time when it sends the requests in the order given (each as soon as a slot is free
and the message rate allows; not a bound: another order may do better), for telling that gap
from a contender's own overhead.
"""

from __future__ import annotations

import collections
import heapq
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ibfarm import BarRequest
from ibfarm.bars import bar_seconds, normalize_bar_size
from ibfarm.pacing import PacingPolicy


@dataclass(frozen=True)
class Bound:
    """The terms of the bound (seconds) and its total."""

    requests: int
    latency: float
    message_s: float
    open_s: float
    small_bar_s: float
    spacing_s: float

    @property
    def sending_s(self) -> float:
        return max(self.message_s, self.open_s, self.small_bar_s, self.spacing_s)

    @property
    def total_s(self) -> float:
        return self.sending_s + self.latency if self.requests else 0.0

    @property
    def binding(self) -> str:
        """The rule behind the largest term."""
        terms = {"message rate": self.message_s, "open requests": self.open_s,
                 "small-bar rules": self.small_bar_s, "spacing": self.spacing_s}
        return max(terms, key=terms.get)

    def as_dict(self) -> dict:
        return asdict(self) | {"total_s": self.total_s, "binding": self.binding}


def ib_bound(requests: Sequence[BarRequest], policy: PacingPolicy, latency: float) -> Bound:
    """The bound for sending ``requests`` under ``policy`` to a gateway answering after
    ``latency`` seconds (see the module docstring)."""
    n = len(requests)
    if n == 0 or not policy.enabled:
        return Bound(n, latency, 0.0, 0.0, 0.0, 0.0)
    last = n - 1
    message_s = last // policy.message_rate * policy.message_window
    open_s = last // policy.max_open_requests * latency
    spacing_s = last * policy.min_spacing
    small = [r for r in requests
             if policy.applies_to(bar_seconds(normalize_bar_size(r.bar_size)))]
    small_bar_s = 0.0
    if small:
        weight = sum(policy.weight(r.what_to_show) for r in small)
        contracts = collections.Counter(
            (r.symbol, r.sec_type, r.exchange, r.currency, r.what_to_show.upper())
            for r in small)
        keys = collections.Counter(
            (r.symbol, r.sec_type, r.exchange, r.currency, r.what_to_show.upper(),
             normalize_bar_size(r.bar_size), r.duration, r.ib_end(), r.use_rth) for r in small)
        small_bar_s = max(
            (weight - 1) // policy.window_max * policy.window,
            (max(contracts.values()) - 1) // policy.same_contract_max
            * policy.same_contract_window,
            (max(keys.values()) - 1) * policy.identical_window)
    return Bound(n, latency, message_s, open_s, small_bar_s, spacing_s)


@dataclass(frozen=True)
class AnswerBound:
    """The terms of the bound for answer times of their own (seconds) and its total."""

    requests: int
    answers_s: float  # the sum of the answer times
    shortest_s: float
    longest_s: float
    message_s: float  # the message-rate term, the shortest answer included
    open_s: float  # sum of the answer times / max_open_requests
    small_bar_s: float  # the small-bar and spacing terms, the shortest answer included

    @property
    def total_s(self) -> float:
        return max(self.message_s, self.open_s, self.longest_s, self.small_bar_s)

    @property
    def binding(self) -> str:
        terms = {"message rate": self.message_s, "open requests": self.open_s,
                 "longest answer": self.longest_s, "small-bar rules": self.small_bar_s}
        return max(terms, key=terms.get)

    def as_dict(self) -> dict:
        return asdict(self) | {"total_s": self.total_s, "binding": self.binding}


def answer_bound(requests: Sequence[BarRequest], policy: PacingPolicy,
                 answers: Sequence[float]) -> AnswerBound:
    """The bound for sending ``requests`` under ``policy`` to a gateway that answers request
    k after ``answers[k]`` seconds (see the module docstring)."""
    if len(answers) != len(requests):
        raise ValueError(f"{len(answers)} answer times for {len(requests)} requests")
    n = len(requests)
    if n == 0:
        return AnswerBound(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    rules = ib_bound(requests, policy, 0.0)  # the sending terms alone
    shortest, total = min(answers), float(sum(answers))
    limit = policy.max_open_requests if policy.enabled else n
    return AnswerBound(
        n, total, shortest, max(answers), message_s=rules.message_s + shortest,
        open_s=total / max(1, min(limit, n)),
        small_bar_s=max(rules.small_bar_s, rules.spacing_s) + shortest)


def in_order_s(answers: Sequence[float], policy: PacingPolicy) -> float:
    """The time a client that loses no time takes for answers ``answers`` sent in that order:
    request k leaves as soon as one of ``max_open_requests`` slots is free and it is at
    least ``message_window`` after request k - ``message_rate``; the last answer ends it."""
    if not answers:
        return 0.0
    limit = policy.max_open_requests if policy.enabled else len(answers)
    open_until: list[float] = []  # a heap of the open requests' answer times
    sent: list[float] = []
    end = 0.0
    for k, answer in enumerate(answers):
        at = 0.0
        if len(open_until) >= limit:
            at = heapq.heappop(open_until)
        if policy.enabled and k >= policy.message_rate:
            at = max(at, sent[k - policy.message_rate] + policy.message_window)
        at = max(at, sent[-1] if sent else 0.0)  # in order
        sent.append(at)
        heapq.heappush(open_until, at + answer)
        end = max(end, at + answer)
    return end


__all__ = ["AnswerBound", "Bound", "answer_bound", "ib_bound", "in_order_s"]
