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
            self._refill(now)
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            return False

    def peek(self, now: float) -> bool:
        """Whether an event would be allowed at `now`, spending nothing."""
        with self._lock:
            self._refill(now)
            return self._tokens >= 1

    def _refill(self, now: float) -> None:
        if self._at is not None and now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.per_second)
        self._at = now if self._at is None else max(self._at, now)


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


class PerClient:
    """One token bucket per client (an address), for at most `max_clients` clients at once: the least recently
    seen is forgotten first, so a flood from many addresses costs bounded memory (a forgotten client starts again
    with a full bucket, which is what a new client gets anyway)."""

    def __init__(self, burst: float, per_second: float, max_clients: int = 10_000) -> None:
        TokenBucket(burst, per_second)  # the same checks of the parameters
        self.burst, self.per_second, self.max_clients = burst, per_second, max_clients
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def _bucket(self, client: str) -> TokenBucket:
        with self._lock:
            bucket = self._buckets.pop(client, None) or TokenBucket(self.burst, self.per_second)
            self._buckets[client] = bucket  # most recently seen last
            while len(self._buckets) > self.max_clients:
                del self._buckets[next(iter(self._buckets))]
            return bucket

    def take(self, client: str, now: float) -> bool:
        """Whether `client` may make one more event at `now` (spending it)."""
        return self._bucket(client).take(now)

    def exhausted(self, client: str, now: float) -> bool:
        """Whether `client`'s bucket is empty at `now`, without spending anything."""
        with self._lock:
            bucket = self._buckets.get(client)
        return bucket is not None and not bucket.peek(now)

    def __len__(self) -> int:
        return len(self._buckets)
