"""The token bucket that bounds how many refused requests reach the durable audit log."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.domain.rate import TokenBucket


def test_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(burst=3, per_second=2)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.4) is False  # 0.8 of an event refilled
    assert bucket.take(0.5) is True
    assert bucket.take(0.5) is False
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # never more than the burst


def test_a_clock_going_backwards_refills_nothing() -> None:
    bucket = TokenBucket(burst=1, per_second=1)
    assert bucket.take(10.0) and not bucket.take(5.0) and not bucket.take(10.5) and bucket.take(11.0)


@pytest.mark.parametrize(("burst", "rate"), [(0, 1), (1, 0), (1, -1)])
def test_a_bucket_that_could_allow_nothing_is_refused(burst: float, rate: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(burst=burst, per_second=rate)


@given(st.lists(st.floats(0, 1000, allow_nan=False), max_size=300), st.integers(1, 20), st.floats(0.01, 50))
def test_never_more_than_burst_plus_rate_times_elapsed(times: list[float], burst: int, rate: float) -> None:
    bucket = TokenBucket(burst=burst, per_second=rate)
    times = sorted(times)
    allowed = sum(bucket.take(t) for t in times)
    elapsed = (times[-1] - times[0]) if times else 0.0
    assert allowed <= burst + rate * elapsed + 1e-6


def test_per_client_buckets_are_separate_and_bounded() -> None:
    from appliance.domain.rate import PerClient

    limits = PerClient(burst=2, per_second=1, max_clients=3)
    assert limits.take("a", 0) and limits.take("a", 0) and not limits.take("a", 0)
    assert limits.exhausted("a", 0) and not limits.exhausted("b", 0)
    assert limits.take("b", 0)  # another client is not affected
    assert limits.take("a", 1.0) and not limits.take("a", 1.0)  # one per second refills
    for client in ("c", "d", "e"):
        limits.take(client, 2)
    assert len(limits) == 3  # a flood of addresses costs bounded memory: the least recently seen go first
    assert not limits.exhausted("a", 2)  # forgotten: starts again with a full bucket
    assert TokenBucket(1, 1).peek(0)


def test_a_client_has_a_bounded_number_of_writes_in_progress() -> None:
    from appliance.api.limits import ClientLimits
    from appliance.domain.rate import PerClient
    from appliance.errors import RateLimited

    limits = ClientLimits(PerClient(10, 1), PerClient(10, 1), in_progress=4)
    for _ in range(4):
        limits.enter("a")
    with pytest.raises(RateLimited, match="in progress"):
        limits.enter("a")
    limits.enter("b")  # another client is not affected
    limits.leave("a")
    limits.enter("a")
    for _ in range(4):
        limits.leave("a")
    assert "a" not in limits.in_flight
