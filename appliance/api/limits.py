"""Per-client budgets, by the address the server sees: writes (every POST) at a bounded rate, and a small budget
of failed authentications after which that client's writes are refused for a while (429, `rate-limited`). A
flood from one client cannot crowd out the others, and guessing at signatures is slow. Behind a reverse proxy
every client has the proxy's address: size the budgets for it, or rate-limit at the proxy."""

from __future__ import annotations

from dataclasses import dataclass

from appliance import metrics
from appliance.config import AUTH_FAILURE_REFILL_SECONDS, Settings
from appliance.domain.rate import PerClient
from appliance.errors import RateLimited

WRITE_BURST_SECONDS = 5  # a client may send this many seconds' worth of writes at once


@dataclass
class ClientLimits:
    writes: PerClient
    auth_failures: PerClient

    @staticmethod
    def of(settings: Settings) -> ClientLimits:
        rate = settings.client_writes_per_second
        return ClientLimits(PerClient(max(1.0, rate * WRITE_BURST_SECONDS), rate),
                            PerClient(settings.client_auth_failures_burst, 1 / AUTH_FAILURE_REFILL_SECONDS))

    def admit(self, client: str, now: float) -> None:
        """Refuse a write from `client` at `now` (RateLimited) when it spent its failed authentications or its
        writes; otherwise spend one write."""
        if self.auth_failures.exhausted(client, now):
            metrics.RATE_LIMITED.labels("auth-failures").inc()
            raise RateLimited(f"too many failed authentications from {client}: wait "
                              f"{AUTH_FAILURE_REFILL_SECONDS:.0f} s and sign with an enrolled key")
        if not self.writes.take(client, now):
            metrics.RATE_LIMITED.labels("writes").inc()
            raise RateLimited(f"too many writes from {client}: slow down")

    def failed_authentication(self, client: str, now: float) -> None:
        self.auth_failures.take(client, now)
