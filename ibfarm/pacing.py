"""IB's pacing rules as data, and a checker that applies them.

``PacingPolicy`` states the limits. The simulated gateway enforces one (``PacingRules`` tells it
whether a request breaks a rule); the farm's shared-memory pacer (``ibfarm.pacer.SharedPacer``)
keeps every worker of every farm on a host inside the same one, with the same rule code
(``RuleState``). A policy scaled by ``scaled(10)`` runs ten times faster, so tests and
benchmarks exercise the ten-minute rule in a minute, and a scaled farm and a scaled simulator
still agree.

IB's rules (historical_limitations, order_limitations in IB's API docs):

* no identical historical request within 15 s;
* fewer than 6 requests for the same contract, exchange and tick type within 2 s;
* at most 60 requests in any 10 minutes, a BID_ASK request counting twice;
* these three apply to bars of 30 s or less (larger bars were lifted from them), and head
  timestamp requests follow the small-bar limits;
* at most 50 historical requests open at once, and at most 50 messages a second.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import math
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass


class Rule(str, enum.Enum):
    """One of the pacing rules; the value names it in stats and logs."""

    MESSAGE_RATE = "message_rate"
    OPEN_REQUESTS = "open_requests"
    IDENTICAL = "identical"
    SAME_CONTRACT = "same_contract"
    WINDOW = "window"
    MIN_SPACING = "min_spacing"

    def __str__(self) -> str:
        return self.value


#: Rules that hold the whole gateway back (the others hold back one contract or one request).
GLOBAL_RULES = frozenset({Rule.MESSAGE_RATE, Rule.OPEN_REQUESTS, Rule.WINDOW, Rule.MIN_SPACING})


@dataclass(frozen=True)
class PacingPolicy:
    """Every limit and window of IB's pacing rules; ``enabled=False`` turns them all off.

    Attributes:
        message_rate: messages per ``message_window`` seconds to the gateway (IB: 50 per s).
        max_open_requests: historical requests open at once (IB: 50).
        identical_window: seconds in which an identical request is a violation (IB: 15).
        same_contract_max: requests per ``same_contract_window`` for one contract, exchange and
            tick type (IB: fewer than 6 in 2 s, so 5).
        window_max: requests per ``window`` seconds (IB: 60 per 600 s).
        bid_ask_weight: how many requests one BID_ASK request counts as (IB: 2).
        small_bar_max_s: the three historical rules apply to bars this long or shorter (IB: 30).
        min_spacing: seconds between any two historical requests (0 = none; the conservative
            preset's 2 s).
        head_timestamp_counts: head-timestamp requests count against the small-bar rules.
    """

    enabled: bool = True
    message_rate: int = 50
    message_window: float = 1.0
    max_open_requests: int = 50
    identical_window: float = 15.0
    same_contract_max: int = 5
    same_contract_window: float = 2.0
    window_max: int = 60
    window: float = 600.0
    bid_ask_weight: int = 2
    small_bar_max_s: int = 30
    min_spacing: float = 0.0
    head_timestamp_counts: bool = True

    @classmethod
    def preset(cls, name: str) -> PacingPolicy:
        """``"ib"`` (IB's documented rules), ``"conservative"`` (plus 2 s spacing), ``"off"``."""
        if name == "ib":
            return cls()
        if name == "conservative":
            return cls(min_spacing=2.0)
        if name == "off":
            return cls(enabled=False)
        raise ValueError(f"unknown pacing preset {name!r}; use 'ib', 'conservative' or 'off'")

    @classmethod
    def coerce(cls, value: PacingPolicy | str | None) -> PacingPolicy:
        """Accept a policy, a preset name or None (IB's rules)."""
        if value is None:
            return cls()
        return value if isinstance(value, PacingPolicy) else cls.preset(value)

    def scaled(self, factor: float) -> PacingPolicy:
        """The same policy with every time window divided by ``factor``."""
        if factor <= 0:
            raise ValueError("scale factor must be positive")
        return dataclasses.replace(
            self,
            message_window=self.message_window / factor,
            identical_window=self.identical_window / factor,
            same_contract_window=self.same_contract_window / factor,
            window=self.window / factor,
            min_spacing=self.min_spacing / factor,
        )

    @property
    def scale(self) -> float:
        """How much faster than IB's own ten-minute window this policy runs (1 for IB's)."""
        return PacingPolicy.window / self.window

    def applies_to(self, bar_seconds: int | None) -> bool:
        """Whether the three historical rules cover a request (None = head timestamp)."""
        if not self.enabled:
            return False
        if bar_seconds is None:
            return self.head_timestamp_counts
        return bar_seconds <= self.small_bar_max_s

    def weight(self, what_to_show: str) -> int:
        """How many requests one request counts as in the ten-minute window."""
        return self.bid_ask_weight if what_to_show.upper() == "BID_ASK" else 1

    def max_rate(self) -> float:
        """Highest sustained rate of small-bar requests (per second) the rules allow."""
        rate = self.window_max / self.window
        if self.min_spacing > 0:
            rate = min(rate, 1.0 / self.min_spacing)
        return rate


@dataclass(frozen=True)
class PacedRequest:
    """What the historical rules look at in one request."""

    key: Hashable  # everything that makes two requests identical
    contract_key: Hashable  # contract, exchange and tick type
    what_to_show: str
    bar_seconds: int | None  # None for a head-timestamp request


def no_margin(window: float) -> float:
    return 0.0


class RuleState:
    """The three historical rules at one instant ``now``: which a request breaks, for how long.

    Records are ``(stamp, key, contract_key, weight)`` in ascending stamp order; ``add`` records a
    grant at ``now``. A record counts while ``now - stamp < window + margin(window)``: the
    shared pacer widens every window a little (the gateway times a request when it reads it,
    a little after the pacer granted it); the simulator's checker does not.
    """

    def __init__(self, policy: PacingPolicy, records: Iterable[tuple], now: float,
                 margin: Callable[[float], float] = no_margin):
        self.policy, self.now = policy, now
        self._identical_w = policy.identical_window + margin(policy.identical_window)
        self._contract_w = policy.same_contract_window + margin(policy.same_contract_window)
        self._window_w = policy.window + margin(policy.window)
        self._last_identical: dict[Hashable, float] = {}
        self._contract: dict[Hashable, list[float]] = {}
        self._window: list[tuple[float, int]] = []
        self._weight = 0
        for stamp, key, contract, weight in records:
            self.add(key, contract, weight, stamp)

    def add(self, key: Hashable, contract: Hashable, weight: int,
            stamp: float | None = None) -> None:
        stamp = self.now if stamp is None else stamp
        age = self.now - stamp
        if age < self._identical_w:
            self._last_identical[key] = stamp
        if age < self._contract_w:
            self._contract.setdefault(contract, []).append(stamp)
        if age < self._window_w:
            self._window.append((stamp, weight))
            self._weight += weight

    def blocking(self, key: Hashable, contract: Hashable, weight: int) -> list[tuple[Rule, float]]:
        """Each rule the request would break now, with the seconds until it no longer would."""
        policy, now, out = self.policy, self.now, []
        if key in self._last_identical:
            out.append((Rule.IDENTICAL, self._last_identical[key] + self._identical_w - now))
        stamps = self._contract.get(contract, ())
        excess = len(stamps) - policy.same_contract_max + 1
        if excess > 0:
            out.append((Rule.SAME_CONTRACT, stamps[excess - 1] + self._contract_w - now))
        excess = self._weight + weight - policy.window_max
        if excess > 0:
            out.append((Rule.WINDOW, self._window_expiry(excess)))
        return out

    def _window_expiry(self, weight: int) -> float:
        """Seconds until records weighing at least ``weight`` have left the window."""
        expired = 0
        for stamp, w in self._window:
            expired += w
            if expired >= weight:
                return stamp + self._window_w - self.now
        return math.inf  # the request alone outweighs window_max


class PacingRules:
    """Checks requests against a policy's three historical rules (single process, not shared).

    The simulated gateway uses it to decide when to answer with a pacing violation. Only
    accepted requests enter the history, so a client that backs off is not punished twice.
    """

    def __init__(self, policy: PacingPolicy):
        self.policy = policy
        self._history: collections.deque[tuple[float, PacedRequest]] = collections.deque()

    def check(self, request: PacedRequest, now: float) -> Rule | None:
        """Record ``request`` at ``now`` and return None, or the broken rule."""
        policy = self.policy
        if not policy.applies_to(request.bar_seconds):
            return None
        self._expire(now)
        broken = self._broken_rule(request, now)
        if broken is None:
            self._history.append((now, request))
        return broken

    def _broken_rule(self, request: PacedRequest, now: float) -> Rule | None:
        weight = self.policy.weight
        state = RuleState(self.policy, (
            (stamp, seen.key, seen.contract_key, weight(seen.what_to_show))
            for stamp, seen in self._history), now)
        broken = state.blocking(request.key, request.contract_key, weight(request.what_to_show))
        return broken[0][0] if broken else None

    def _expire(self, now: float) -> None:
        policy = self.policy
        horizon = max(policy.window, policy.identical_window, policy.same_contract_window)
        while self._history and now - self._history[0][0] >= horizon:
            self._history.popleft()


__all__ = ["GLOBAL_RULES", "PacedRequest", "PacingPolicy", "PacingRules", "Rule", "RuleState"]
