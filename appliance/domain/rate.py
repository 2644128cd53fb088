"""A token bucket: at most `burst` events at once and `per_second` on average after that. Pure: the caller
passes the time (a monotonic clock), so it is tested without sleeping."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


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
