"""Per-user request quota (fixed or sliding window), forced pauses and foreign spending."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

Clock = Callable[[], float]
QuotaMode = Literal["fixed", "sliding"]


@dataclass(frozen=True, slots=True)
class QuotaStatus:
    """A user's quota as reported to clients."""

    limit: int
    remaining: int
    reset: float

    @property
    def reset_epoch_s(self) -> int:
        """Reset time rounded up, so waiting until it is always enough."""
        return math.ceil(self.reset)


@dataclass(frozen=True, slots=True)
class QuotaDecision:
    """Whether a request was admitted, and the quota after it."""

    allowed: bool
    status: QuotaStatus


class _Window(Protocol):
    def used(self, user: str, now: float) -> int: ...
    def add(self, user: str, now: float, n: int) -> None: ...
    def reset_at(self, user: str, now: float, limit: int) -> float: ...
    def users(self) -> set[str]: ...


class _FixedWindow:
    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._counts: dict[str, tuple[float, int]] = {}

    def _start(self, now: float) -> float:
        return math.floor(now / self._window_s) * self._window_s

    def used(self, user: str, now: float) -> int:
        start, count = self._counts.get(user, (math.nan, 0))
        return count if start == self._start(now) else 0

    def add(self, user: str, now: float, n: int) -> None:
        self._counts[user] = (self._start(now), self.used(user, now) + n)

    def reset_at(self, user: str, now: float, limit: int) -> float:
        return self._start(now) + self._window_s

    def users(self) -> set[str]:
        return set(self._counts)


class _SlidingWindow:
    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._events: dict[str, deque[tuple[float, int]]] = {}
        self._totals: dict[str, int] = {}

    def _prune(self, user: str, now: float) -> deque[tuple[float, int]]:
        events = self._events.setdefault(user, deque())
        total = self._totals.get(user, 0)
        cutoff = now - self._window_s
        while events and events[0][0] <= cutoff:
            total -= events.popleft()[1]
        self._totals[user] = total
        return events

    def used(self, user: str, now: float) -> int:
        self._prune(user, now)
        return self._totals[user]

    def add(self, user: str, now: float, n: int) -> None:
        self._prune(user, now).append((now, n))
        self._totals[user] += n

    def reset_at(self, user: str, now: float, limit: int) -> float:
        """When the next unit frees up; when exhausted, when a request fits again."""
        events = self._prune(user, now)
        needed = max(1, self._totals[user] - limit + 1)
        freed = 0
        for made_at, n in events:
            freed += n
            if freed >= needed:
                return made_at + self._window_s
        return now + self._window_s

    def users(self) -> set[str]:
        return set(self._events)


def _window(mode: QuotaMode, window_s: float) -> _Window:
    return _FixedWindow(window_s) if mode == "fixed" else _SlidingWindow(window_s)


class Quota:
    """In-memory per-user quota; all times are Unix epoch seconds from `clock`."""

    def __init__(
        self, limit: int, window_s: float, mode: QuotaMode, clock: Clock = time.time
    ) -> None:
        self._clock = clock
        self._limit = limit
        self._window_s = window_s
        self._mode: QuotaMode = mode
        self._window = _window(mode, window_s)
        self._paused: dict[str, float] = {}
        #: Units each user was charged, across windows (a bulk call may cost many).
        self.charged: dict[str, int] = {}

    def configure(self, limit: int, window_s: float, mode: QuotaMode) -> None:
        """Change the limits; counts survive unless the window shape changes."""
        if (window_s, mode) != (self._window_s, self._mode):
            self._window = _window(mode, window_s)
        self._limit, self._window_s, self._mode = limit, window_s, mode

    def clear(self) -> None:
        """Forget every count and pause."""
        self._window = _window(self._mode, self._window_s)
        self._paused.clear()
        self.charged.clear()

    def hit(self, user: str, cost: int = 1) -> QuotaDecision:
        """Admit one request of `user` if the quota allows it; refused ones are not counted.
        A request costing more than one unit (a bulk call charged per record) is admitted
        while anything remains and may overdraw the window."""
        now = self._clock()
        status = self._status(user, now)
        if status.remaining <= 0:
            return QuotaDecision(allowed=False, status=status)
        self._window.add(user, now, cost)
        self.charged[user] = self.charged.get(user, 0) + cost
        return QuotaDecision(allowed=True, status=self._status(user, now))

    def spend(self, user: str, n: int) -> QuotaStatus:
        """Another integration acting as `user` spends `n` requests."""
        now = self._clock()
        self._window.add(user, now, n)
        return self._status(user, now)

    def force_429(self, user: str, reset_at_epoch_s: float) -> QuotaStatus:
        """Refuse every request of `user` until `reset_at_epoch_s`."""
        self._paused[user] = reset_at_epoch_s
        return self._status(user, self._clock())

    def status(self, user: str) -> QuotaStatus:
        """Limit, remaining and reset time of `user` right now."""
        return self._status(user, self._clock())

    def users(self) -> set[str]:
        """Every user with counted requests or a pause."""
        return self._window.users() | set(self._paused)

    def _status(self, user: str, now: float) -> QuotaStatus:
        paused_until = self._paused.get(user)
        if paused_until is not None:
            if now < paused_until:
                return QuotaStatus(self._limit, 0, paused_until)
            del self._paused[user]
        remaining = max(0, self._limit - self._window.used(user, now))
        return QuotaStatus(self._limit, remaining, self._window.reset_at(user, now, self._limit))
