"""Bounding what anyone can make the appliance do: a token bucket (at most `burst` events at once and
`per_second` on average after that) and a recent result reused for a while. Both take their time from the
caller or an injected clock, so they are tested without sleeping."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class TokenBucket:
    burst: float
    per_second: float
    _tokens: float = field(init=False)
    _at: float | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.burst < 1 or self.per_second <= 0:
            raise ValueError("a bucket holds at least one event and refills at a positive rate")
        self._tokens = self.burst

    def take(self, now: float) -> bool:
        """True (and one event spent) if an event is allowed at `now`; False otherwise. A clock that goes
        backwards refills nothing."""
        with self._lock:
            if self._at is not None and now > self._at:
                self._tokens = min(self.burst, self._tokens + (now - self._at) * self.per_second)
            self._at = now if self._at is None else max(self._at, now)
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            return False


class Recent(Generic[T]):
    """The result of an expensive check, reused for `seconds`; one caller computes it at a time (the others wait
    and get that result). `clock` is monotonic seconds."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds, self.clock = seconds, clock
        self._lock = threading.Lock()
        self._value: T | None = None
        self._at: float | None = None

    def get(self, compute: Callable[[], T]) -> T:
        with self._lock:
            now = self.clock()
            if self._at is None or not 0 <= now - self._at < self.seconds:
                self._value, self._at = compute(), now
            return self._value  # type: ignore[return-value]

    def forget(self) -> None:
        """The next get() computes afresh (something just showed the result may be out of date)."""
        with self._lock:
            self._at = None
