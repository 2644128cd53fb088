"""The token's heads: the encoding round-trips and refuses anything else, and the rules by which a head moves
refuse every rollback and fork (property tests against the Merkle tree itself)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.domain import heads
from appliance.domain.heads import AttestationHead, CheckpointHead, Heads, HeadsInvalid, PolicyHead, RollbackDetected
from appliance.domain.merkle import LeafHashes, leaf_hash

HEX64 = st.text("0123456789abcdef", min_size=64, max_size=64)
ROOTS = st.binary(min_size=32, max_size=32)


@st.composite
def any_heads(draw: st.DrawFn) -> Heads:
    att_seq = draw(st.integers(0, 10**6))
    return Heads(
        version=draw(st.integers(0, 10**9)),
        policy=draw(st.none() | st.builds(PolicyHead, st.integers(1, 10**6), HEX64)),
        checkpoint=draw(st.none() | st.builds(CheckpointHead, st.integers(0, 10**9), ROOTS)),
        attestation=AttestationHead(att_seq, None if att_seq == 0 else draw(HEX64),
                                    draw(st.none() | st.text(max_size=200))))


@given(any_heads())
def test_heads_round_trip_through_their_encoding(value: Heads) -> None:
    assert Heads.from_bytes(value.to_bytes()) == value


@given(any_heads(), st.integers(1, 5))
def test_newer_only_ever_raises_the_version(value: Heads, steps: int) -> None:
    later = value
    for _ in range(steps):
        later = later.newer()
    assert later.version == value.version + steps
    assert (later.policy, later.checkpoint, later.attestation) == (value.policy, value.checkpoint, value.attestation)


GOOD = Heads(3, PolicyHead(2, "a" * 64), CheckpointHead(5, b"\x01" * 32), AttestationHead(1, "b" * 64)).to_bytes()


@pytest.mark.parametrize("data", [
    b"", b"not json", b"[]", b"{}",
    GOOD.replace(b'"format":1', b'"format":2'),
    GOOD.replace(b'"version":3', b'"version":-1'),
    GOOD.replace(b'"version":3', b'"version":true'),
    GOOD.replace(b'"seq":2', b'"seq":0'),  # the policy head starts at activation 1
    GOOD.replace(b"a" * 64, b"A" * 64),
    GOOD.replace(b"a" * 64, b"a" * 63),
    GOOD.replace(b'"seq":1', b'"seq":0'),  # attestation seq 0 carries no hash
    GOOD.replace(b'"hash":"' + b"b" * 64 + b'"', b'"hash":null'),  # and seq 1 must
    GOOD.replace(b'"pending":null', b'"pending":7'),
    GOOD.replace(b"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=", b"AQEB"),  # a root of 3 bytes
    GOOD.replace(b"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=", b"!!!"),
    GOOD + b" ",
], ids=lambda d: d[:40].decode(errors="replace"))
def test_anything_but_an_encoded_heads_is_refused(data: bytes) -> None:
    assert Heads.from_bytes(GOOD).version == 3  # the unmodified object reads
    with pytest.raises(HeadsInvalid):
        Heads.from_bytes(data)


def test_the_newest_object_wins_and_two_of_one_version_are_refused() -> None:
    old, new = Heads.empty(), Heads.empty().newer().newer()
    assert heads.newest([]) is None
    assert heads.newest([old.to_bytes(), new.to_bytes()]) == new
    assert heads.newest([new.to_bytes(), old.to_bytes()]) == new
    with pytest.raises(HeadsInvalid):
        heads.newest([new.to_bytes(), new.to_bytes()])
    with pytest.raises(HeadsInvalid):
        heads.newest([new.to_bytes(), b"garbage"])


def tree(entries: list[bytes]) -> LeafHashes:
    return LeafHashes([leaf_hash(e) for e in entries])


ENTRIES = st.lists(st.binary(max_size=8), max_size=24)


@given(ENTRIES, ENTRIES, st.data())
def test_a_checkpoint_head_accepts_exactly_the_logs_that_extend_it(log: list[bytes], more: list[bytes],
                                                                    data: st.DataObject) -> None:
    size = data.draw(st.integers(0, len(log)))
    head = CheckpointHead(size, tree(log).root_of(size))
    heads.check_extends(head, tree(log + more))  # appended entries: fine
    advanced = heads.advance_checkpoint(head, tree(log + more))
    assert advanced == CheckpointHead(len(log) + len(more), tree(log + more).root_of(len(log) + len(more)))
    if size > 0:
        with pytest.raises(RollbackDetected, match="deleted"):
            heads.check_extends(head, tree(log[: size - 1]))  # the tail deleted
        at = data.draw(st.integers(0, size - 1))
        rewritten = [*log[:at], log[at] + b"x", *log[at + 1:]]
        with pytest.raises(RollbackDetected, match="rewritten"):
            heads.advance_checkpoint(head, tree(rewritten))  # one entry the head covers changed


@given(ENTRIES)
def test_no_head_means_any_log_extends_it(log: list[bytes]) -> None:
    heads.check_extends(None, tree(log))
    assert heads.advance_checkpoint(None, tree(log)).size == len(log)


def bundle_hashes(n: int, salt: str = "") -> list[str]:
    return [hashlib.sha256(f"{salt}{i}".encode()).hexdigest() for i in range(n)]


@given(st.integers(1, 20), st.integers(0, 5))
def test_the_policy_head_accepts_its_history_and_any_longer_one(seq: int, later: int) -> None:
    history = bundle_hashes(seq + later)
    heads.check_policy(PolicyHead(seq, history[seq - 1]), history)


@given(st.integers(1, 20), st.data())
def test_the_policy_head_refuses_a_shortened_or_forked_history(seq: int, data: st.DataObject) -> None:
    history = bundle_hashes(seq)
    head = PolicyHead(seq, history[-1])
    with pytest.raises(RollbackDetected, match="rolled back"):
        heads.check_policy(head, history[: data.draw(st.integers(0, seq - 1))])
    forked = [*history[:-1], *bundle_hashes(1, salt="other")]  # the same length, another bundle at the head
    with pytest.raises(RollbackDetected, match="forked"):
        heads.check_policy(head, forked + history[:1])


def test_a_token_without_a_policy_head_is_not_trusted() -> None:
    with pytest.raises(HeadsInvalid, match="appliance init"):
        heads.check_policy(None, bundle_hashes(1))


def test_the_problems_are_named() -> None:
    assert (RollbackDetected.slug, HeadsInvalid.slug) == ("rollback-detected", "token-state-invalid")
