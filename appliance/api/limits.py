"""Per-client budgets, by the address the server sees: writes (every POST) at a bounded rate, and a small budget
of failed authentications after which that client's writes are refused for a while (429, `rate-limited`). A
flood from one client cannot crowd out the others, and guessing at signatures is slow. Behind a reverse proxy
every client has the proxy's address: size the budgets for it, or rate-limit at the proxy."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from appliance import metrics
from appliance.config import AUTH_FAILURE_REFILL_SECONDS, Settings
from appliance.domain.rate import PerClient
from appliance.errors import RateLimited

WRITE_BURST_SECONDS = 5  # a client may send this many seconds' worth of writes at once


@dataclass
class ClientLimits:
    writes: PerClient
    auth_failures: PerClient
    in_progress: int = 4  # writes one client may have in progress at once in one process
    in_flight: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @staticmethod
    def of(settings: Settings) -> ClientLimits:
        rate = settings.client_writes_per_second
        return ClientLimits(PerClient(max(1.0, rate * WRITE_BURST_SECONDS), rate),
                            PerClient(settings.client_auth_failures_burst, 1 / AUTH_FAILURE_REFILL_SECONDS),
                            settings.client_writes_in_progress)

    def admit(self, client: str, now: float) -> None:
        """Refuse a write from `client` at `now` (RateLimited) when it spent its failed authentications or its
        writes; otherwise spend one write."""
        self.admit_read(client, now)
        if not self.writes.take(client, now):
            metrics.RATE_LIMITED.labels("writes").inc()
            raise RateLimited(f"too many writes from {client}: slow down")

    def admit_read(self, client: str, now: float) -> None:
        """Refuse a private read (or a write) from `client` at `now` (RateLimited) once it spent its failed
        authentications: guessing at read tokens is as slow as guessing at signed writes."""
        if self.auth_failures.exhausted(client, now):
            metrics.RATE_LIMITED.labels("auth-failures").inc()
            raise RateLimited(f"too many failed authentications from {client}: wait "
                              f"{AUTH_FAILURE_REFILL_SECONDS:.0f} s and sign with an enrolled key")

    def enter(self, client: str) -> None:
        """One more write of `client` in progress (RateLimited when it already has `in_progress`): a client
        trickling bodies holds at most that many of the process's threads. Pair with leave()."""
        with self.lock:
            if self.in_flight.get(client, 0) >= self.in_progress:
                metrics.RATE_LIMITED.labels("in-flight").inc()
                raise RateLimited(f"{client} has {self.in_progress} writes in progress already: wait for them")
            self.in_flight[client] = self.in_flight.get(client, 0) + 1

    def leave(self, client: str) -> None:
        with self.lock:
            left = self.in_flight.get(client, 0) - 1
            if left > 0:
                self.in_flight[client] = left
            else:
                self.in_flight.pop(client, None)

    def failed_authentication(self, client: str, now: float) -> None:
        self.auth_failures.take(client, now)
