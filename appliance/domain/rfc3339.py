"""The appliance's one time format: RFC 3339 in UTC to the second, "2026-11-24T16:00:00Z".

Payloads (attestations), audit entries and responses write times this way; `parse_utc` reads exactly this form
back. Reserve reports and supply snapshots may carry any RFC 3339 offset: domain.reserves reads those inputs.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def utc(moment: datetime) -> str:
    """An aware datetime as UTC, whole seconds. Fractions of a second are dropped. ValueError for a naive
    datetime, which would silently mean the machine's local time."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("a naive datetime has no defined instant; pass an aware one")
    t = moment.astimezone(UTC)
    # Formatted by hand: strftime("%Y") does not pad years before 1000 to four digits on every platform.
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}Z"


def utc_of_timestamp(ts: float) -> str:
    """utc() of a Unix time (seconds; the fraction is dropped)."""
    return utc(datetime.fromtimestamp(int(ts), UTC))


def parse_utc(text: object) -> datetime | None:
    """The aware datetime of a time written by utc(), or None if `text` is not one."""
    if not isinstance(text, str) or not _TIME.fullmatch(text):
        return None
    try:
        return datetime.strptime(text, _FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None
