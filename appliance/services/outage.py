"""Store outages, remembered until the audit log can take them: while the store refuses writes nothing can be
audited (and nothing is signed: fail closed), so the process counts the failed writes and the background tick
records one `store.unavailable` entry once a write succeeds again."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Outage:
    """Writes this process saw fail since the last `store.unavailable` entry."""

    first: float | None = None
    last: float | None = None
    failed: int = 0
    operations: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def note(self, operation: str, now: float) -> None:
        with self.lock:
            self.first = now if self.first is None else min(self.first, now)
            self.last = now if self.last is None else max(self.last, now)
            self.failed += 1
            if operation in self.operations or len(self.operations) < 16:  # bounded: operations are a fixed set
                self.operations[operation] = self.operations.get(operation, 0) + 1

    def take(self) -> dict[str, Any] | None:
        """The outage so far as audit details (and forget it), or None when no write failed."""
        with self.lock:
            if self.first is None or self.last is None:
                return None
            details = {"first_failure": int(self.first), "last_failure": int(self.last),
                       "failed_writes": self.failed, "operations": dict(sorted(self.operations.items()))}
            self.first = self.last = None
            self.failed, self.operations = 0, {}
            return details

    def give_back(self, details: dict[str, Any]) -> None:
        """Recording `details` failed: keep them for the next attempt (merged with what failed since)."""
        with self.lock:
            self.first = min(details["first_failure"], self.first if self.first is not None else float("inf"))
            self.last = max(details["last_failure"], self.last if self.last is not None else 0.0)
            self.failed += details["failed_writes"]
            for operation, count in details["operations"].items():
                self.operations[operation] = self.operations.get(operation, 0) + count
