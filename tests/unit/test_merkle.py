"""RFC 9162 Merkle tree: vectors, an exhaustive comparison with a naive reference, negative cases, compact ranges."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.domain.merkle import (
    EMPTY_ROOT,
    CompactRange,
    LeafHashes,
    consistency_proof,
    first_divergence,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)
from appliance.errors import InvalidInput, VerificationFailed

VECTORS = Path(__file__).parents[1] / "vectors"
EXHAUSTIVE = 300


# -- a deliberately naive reference, straight from the recursive definitions of RFC 9162 §2.1 ------------------------

def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def largest_power_of_two_below(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


class Reference:
    """MTH, PATH and PROOF/SUBPROOF over D[lo:hi] of one fixed list of leaf hashes; MTH is memoized."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.leaves = leaves
        self.memo: dict[tuple[int, int], bytes] = {}

    def mth(self, lo: int, hi: int) -> bytes:
        n = hi - lo
        if n == 0:
            return sha256(b"")
        if n == 1:
            return self.leaves[lo]
        if (lo, hi) not in self.memo:
            k = largest_power_of_two_below(n)
            self.memo[lo, hi] = sha256(b"\x01" + self.mth(lo, lo + k) + self.mth(lo + k, hi))
        return self.memo[lo, hi]

    def path(self, m: int, lo: int, hi: int) -> list[bytes]:
        n = hi - lo
        if n == 1:
            return []
        k = largest_power_of_two_below(n)
        if m < k:
            return self.path(m, lo, lo + k) + [self.mth(lo + k, hi)]
        return self.path(m - k, lo + k, hi) + [self.mth(lo, lo + k)]

    def proof(self, m: int, n: int) -> list[bytes]:
        return self.subproof(m, 0, n, True)

    def subproof(self, m: int, lo: int, hi: int, complete: bool) -> list[bytes]:
        n = hi - lo
        if m == n:
            return [] if complete else [self.mth(lo, hi)]
        k = largest_power_of_two_below(n)
        if m <= k:
            return self.subproof(m, lo, lo + k, complete) + [self.mth(lo + k, hi)]
        return self.subproof(m - k, lo + k, hi, False) + [self.mth(lo, lo + k)]


def make_leaves(count: int, salt: bytes = b"") -> list[bytes]:
    return [sha256(b"\x00" + salt + i.to_bytes(8, "big")) for i in range(count)]


LEAVES = make_leaves(EXHAUSTIVE)
REF = Reference(LEAVES)


def flipped(data: bytes, position: int) -> bytes:
    return data[:position] + bytes([data[position] ^ 0x01]) + data[position + 1:]


# -- vectors ----------------------------------------------------------------------------------------------------------

def load_vectors() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((VECTORS / "rfc9162-tree.json").read_text())
    return loaded


def test_rfc_vectors_roots_for_sizes_1_to_8_and_empty() -> None:
    vectors = load_vectors()
    leaves = [leaf_hash(bytes.fromhex(x)) for x in vectors["leaves_hex"]]
    assert root([]) == EMPTY_ROOT == bytes.fromhex(vectors["empty_tree_root_hex"])
    assert CompactRange.empty().root() == EMPTY_ROOT
    for size_text, expected in vectors["roots_hex_by_size"].items():
        size = int(size_text)
        assert root(leaves[:size]).hex() == expected
        assert Reference(leaves).mth(0, size).hex() == expected
    assert len(vectors["roots_hex_by_size"]) == 8


def test_hash_functions_are_domain_separated() -> None:
    assert leaf_hash(b"abc") == sha256(b"\x00abc")
    assert node_hash(b"l" * 32, b"r" * 32) == sha256(b"\x01" + b"l" * 32 + b"r" * 32)
    assert EMPTY_ROOT == sha256(b"")


# -- exhaustive comparison with the reference ---------------------------------------------------------------------

def test_root_matches_reference_for_every_size_up_to_300() -> None:
    for size in range(0, EXHAUSTIVE + 1):
        assert root(LEAVES[:size]) == REF.mth(0, size), size


@pytest.mark.slow
def test_inclusion_proofs_match_reference_and_verify_for_every_index_up_to_300() -> None:
    for size in range(1, EXHAUSTIVE + 1):
        tree_root = REF.mth(0, size)
        for index in range(size):
            proof = inclusion_proof(LEAVES, index, size)
            assert proof == REF.path(index, 0, size), (index, size)
            verify_inclusion(LEAVES[index], index, size, proof, tree_root)


@pytest.mark.slow
def test_consistency_proofs_match_reference_and_verify_for_every_pair_up_to_300() -> None:
    for new_size in range(1, EXHAUSTIVE + 1):
        new_root = REF.mth(0, new_size)
        for old_size in range(1, new_size + 1):
            proof = consistency_proof(LEAVES, old_size, new_size)
            assert proof == REF.proof(old_size, new_size), (old_size, new_size)
            verify_consistency(old_size, new_size, REF.mth(0, old_size), new_root, proof)


def test_proofs_over_a_longer_list_only_use_the_first_size_leaves() -> None:
    for size in (1, 5, 64, 100):
        assert inclusion_proof(LEAVES, size - 1, size) == inclusion_proof(LEAVES[:size], size - 1, size)
        assert consistency_proof(LEAVES, 1, size) == consistency_proof(LEAVES[:size], 1, size)


@given(st.integers(1, 5000), st.data())
@settings(max_examples=60, deadline=None)
def test_random_large_trees_prove_and_verify(size: int, data: st.DataObject) -> None:
    leaves = make_leaves(size, b"large")
    tree_root = root(leaves)
    index = data.draw(st.integers(0, size - 1))
    verify_inclusion(leaves[index], index, size, inclusion_proof(leaves, index, size), tree_root)
    old = data.draw(st.integers(0, size))
    verify_consistency(old, size, root(leaves[:old]), tree_root, consistency_proof(leaves, old, size))


# -- cost: every root and proof hashes each node at most once ------------------------------------------------------

@pytest.fixture
def hash_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], int]]:
    calls = [0]
    real = hashlib.sha256

    def counting(data: bytes = b"") -> Any:
        calls[0] += 1
        return real(data)

    monkeypatch.setattr(hashlib, "sha256", counting)
    yield lambda: calls[0]


def test_root_costs_one_hash_per_interior_node(hash_calls: Callable[[], int]) -> None:
    leaves = make_leaves(10_000)
    before = hash_calls()
    root(leaves)
    assert hash_calls() - before == 10_000 - 1


def test_one_proof_costs_at_most_one_hash_per_leaf(hash_calls: Callable[[], int]) -> None:
    size = 10_001
    leaves = make_leaves(size)
    for index in (0, 1, 4096, 5000, size - 1):
        before = hash_calls()
        inclusion_proof(leaves, index, size)
        assert hash_calls() - before < size
    for old in (1, 2, 4096, 7777, size - 1):
        before = hash_calls()
        consistency_proof(leaves, old, size)
        assert hash_calls() - before < size


@pytest.mark.slow
def test_a_million_leaves_are_handled_iteratively() -> None:
    size = 1_000_003  # a ragged right edge: 2**19 + 2**18 + ... + 3 leaves
    leaves = make_leaves(size)
    tree_root = root(leaves)
    index = 777_777
    verify_inclusion(leaves[index], index, size, inclusion_proof(leaves, index, size), tree_root)
    old = 999_999
    verify_consistency(old, size, root(leaves[:old]), tree_root, consistency_proof(leaves, old, size))


# -- inclusion: negative cases -----------------------------------------------------------------------------------------

NEGATIVE_SIZES = [*range(1, 40), 63, 64, 65, 127, 128, 129, 255, 256, 257, 300]


def inclusion_cases() -> Iterator[tuple[int, int, list[bytes], bytes]]:
    for size in NEGATIVE_SIZES:
        for index in sorted({0, 1 % size, size // 2, size - 2 if size > 1 else 0, size - 1}):
            yield index, size, inclusion_proof(LEAVES, index, size), REF.mth(0, size)


def test_inclusion_with_a_flipped_byte_anywhere_fails() -> None:
    for index, size, proof, tree_root in inclusion_cases():
        for i, node in enumerate(proof):
            for position in (0, 17, 31):
                bad = [*proof[:i], flipped(node, position), *proof[i + 1:]]
                with pytest.raises(VerificationFailed):
                    verify_inclusion(LEAVES[index], index, size, bad, tree_root)
        with pytest.raises(VerificationFailed):
            verify_inclusion(flipped(LEAVES[index], 5), index, size, proof, tree_root)
        with pytest.raises(VerificationFailed):
            verify_inclusion(LEAVES[index], index, size, proof, flipped(tree_root, 0))


def test_inclusion_at_a_wrong_index_fails() -> None:
    for index, size, proof, tree_root in inclusion_cases():
        for other in range(size + 2):
            if other != index:
                with pytest.raises(VerificationFailed):
                    verify_inclusion(LEAVES[index], other, size, proof, tree_root)


def test_inclusion_in_a_tree_of_another_size_fails() -> None:
    for index, size, proof, _ in inclusion_cases():
        for other in range(index + 1, min(size + 20, EXHAUSTIVE + 1)):
            if other != size:
                with pytest.raises(VerificationFailed):
                    verify_inclusion(LEAVES[index], index, other, proof, REF.mth(0, other))


def test_truncated_or_extended_inclusion_proofs_fail() -> None:
    for index, size, proof, tree_root in inclusion_cases():
        variants = [proof + [LEAVES[0]], [LEAVES[0], *proof]]
        if proof:
            variants += [proof[:-1], proof[1:], proof + proof[-1:]]
        for bad in variants:
            with pytest.raises(VerificationFailed):
                verify_inclusion(LEAVES[index], index, size, bad, tree_root)


def test_inclusion_proof_nodes_that_are_not_hashes_fail() -> None:
    proof = inclusion_proof(LEAVES, 3, 10)
    with pytest.raises(VerificationFailed, match="not a SHA-256 hash"):
        verify_inclusion(LEAVES[3], 3, 10, [proof[0][:31], *proof[1:]], REF.mth(0, 10))


def test_inclusion_rejects_impossible_arguments() -> None:
    proof = inclusion_proof(LEAVES, 0, 4)
    with pytest.raises(InvalidInput):
        verify_inclusion(LEAVES[0], -1, 4, proof, REF.mth(0, 4))
    with pytest.raises(InvalidInput):
        verify_inclusion(LEAVES[0], 0, -4, proof, REF.mth(0, 4))
    with pytest.raises(InvalidInput):
        verify_inclusion(LEAVES[0][:31], 0, 4, proof, REF.mth(0, 4))
    with pytest.raises(InvalidInput):
        verify_inclusion(LEAVES[0], 0, 4, proof, REF.mth(0, 4) + b"\x00")
    with pytest.raises(VerificationFailed):  # RFC 9162: an index at or past the size fails verification
        verify_inclusion(LEAVES[0], 4, 4, proof, REF.mth(0, 4))
    with pytest.raises(VerificationFailed):
        verify_inclusion(LEAVES[0], 0, 0, [], EMPTY_ROOT)
    for index, size in ((0, 0), (4, 4), (-1, 4), (0, 301), (0, -1)):
        with pytest.raises(InvalidInput):
            inclusion_proof(LEAVES, index, size)


def test_single_leaf_tree_has_an_empty_inclusion_proof() -> None:
    assert inclusion_proof(LEAVES, 0, 1) == []
    verify_inclusion(LEAVES[0], 0, 1, [], LEAVES[0])
    with pytest.raises(VerificationFailed):
        verify_inclusion(LEAVES[0], 0, 1, [LEAVES[1]], LEAVES[0])


# -- consistency: negative cases and edge cases -------------------------------------------------------------------

def consistency_cases() -> Iterator[tuple[int, int, list[bytes]]]:
    for new_size in NEGATIVE_SIZES:
        for old_size in sorted({1, new_size // 2 or 1, new_size - 1 or 1, 2, 3, 4, 8}):
            if old_size < new_size:
                yield old_size, new_size, consistency_proof(LEAVES, old_size, new_size)


def test_consistency_with_a_flipped_byte_anywhere_fails() -> None:
    for old, new, proof in consistency_cases():
        old_root, new_root = REF.mth(0, old), REF.mth(0, new)
        for i, node in enumerate(proof):
            for position in (0, 31):
                bad = [*proof[:i], flipped(node, position), *proof[i + 1:]]
                with pytest.raises(VerificationFailed):
                    verify_consistency(old, new, old_root, new_root, bad)
        with pytest.raises(VerificationFailed):
            verify_consistency(old, new, flipped(old_root, 3), new_root, proof)
        with pytest.raises(VerificationFailed):
            verify_consistency(old, new, old_root, flipped(new_root, 3), proof)


def test_consistency_with_swapped_roots_fails() -> None:
    for old, new, proof in consistency_cases():
        with pytest.raises(VerificationFailed):
            verify_consistency(old, new, REF.mth(0, new), REF.mth(0, old), proof)


def test_consistency_for_other_sizes_fails() -> None:
    for old, new, proof in consistency_cases():
        for other_old in range(1, new):
            if other_old != old:
                with pytest.raises(VerificationFailed):
                    verify_consistency(other_old, new, REF.mth(0, other_old), REF.mth(0, new), proof)
        for other_new in range(old + 1, min(new + 10, EXHAUSTIVE + 1)):
            if other_new != new:
                with pytest.raises(VerificationFailed):
                    verify_consistency(old, other_new, REF.mth(0, old), REF.mth(0, other_new), proof)


def test_truncated_or_extended_consistency_proofs_fail() -> None:
    for old, new, proof in consistency_cases():
        old_root, new_root = REF.mth(0, old), REF.mth(0, new)
        for bad in ([], proof[:-1], proof[1:], proof + [LEAVES[0]], [LEAVES[0], *proof], [old_root, *proof]):
            if bad != proof:
                with pytest.raises(VerificationFailed):
                    verify_consistency(old, new, old_root, new_root, bad)


def test_consistency_edge_cases_from_the_rfc() -> None:
    r5, r9 = REF.mth(0, 5), REF.mth(0, 9)
    assert consistency_proof(LEAVES, 5, 5) == []
    verify_consistency(5, 5, r5, r5, [])
    with pytest.raises(VerificationFailed, match="equal tree sizes must be empty"):
        verify_consistency(5, 5, r5, r5, [r5])
    with pytest.raises(VerificationFailed, match="different roots"):
        verify_consistency(5, 5, r5, r9, [])
    assert consistency_proof(LEAVES, 0, 9) == []
    verify_consistency(0, 9, EMPTY_ROOT, r9, [])
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    with pytest.raises(VerificationFailed, match="from the empty tree must be empty"):
        verify_consistency(0, 9, EMPTY_ROOT, r9, [r9])
    with pytest.raises(VerificationFailed, match="empty tree hash"):
        verify_consistency(0, 9, r5, r9, [])
    with pytest.raises(VerificationFailed, match="consistency proof is empty"):
        verify_consistency(5, 9, r5, r9, [])


def test_consistency_rejects_impossible_arguments() -> None:
    r5, r9 = REF.mth(0, 5), REF.mth(0, 9)
    proof = consistency_proof(LEAVES, 5, 9)
    with pytest.raises(InvalidInput):
        verify_consistency(9, 5, r9, r5, proof)
    with pytest.raises(InvalidInput):
        verify_consistency(-1, 9, r5, r9, proof)
    with pytest.raises(InvalidInput):
        verify_consistency(5, 9, r5[:16], r9, proof)
    with pytest.raises(InvalidInput):
        verify_consistency(5, 9, r5, b"", proof)
    with pytest.raises(VerificationFailed, match="not a SHA-256 hash"):
        verify_consistency(5, 9, r5, r9, [*proof[:-1], proof[-1] + b"\x00"])
    for old, new in ((5, 4), (-1, 4), (0, 301), (-2, -1)):
        with pytest.raises(InvalidInput):
            consistency_proof(LEAVES, old, new)


# -- compact range ---------------------------------------------------------------------------------------------------

def test_compact_range_matches_root_after_every_append_up_to_600() -> None:
    leaves = make_leaves(600, b"compact")
    compact = CompactRange.empty()
    assert compact.encode() == "0:"
    for size in range(1, 601):
        compact = compact.append(leaves[size - 1])
        assert compact.size == size
        assert len(compact.hashes) == bin(size).count("1")
        assert compact.root() == root(leaves[:size]), size
        assert CompactRange.decode(compact.encode()) == compact


@given(st.integers(0, 600), st.binary(max_size=8))
@settings(max_examples=150, deadline=None)
def test_compact_range_appends_give_the_root_of_the_list(count: int, salt: bytes) -> None:
    leaves = make_leaves(count, salt)
    compact = CompactRange.empty()
    for leaf in leaves:
        compact = compact.append(leaf)
    assert compact.size == count
    assert compact.root() == root(leaves)
    assert CompactRange.decode(compact.encode()) == compact
    # The hashes are the roots of the perfect subtrees, largest first.
    start, expected = 0, []
    for bit in reversed(range(count.bit_length())):
        if count >> bit & 1:
            expected.append(root(leaves[start:start + (1 << bit)]))
            start += 1 << bit
    assert list(compact.hashes) == expected


@given(st.lists(st.binary(min_size=32, max_size=32), max_size=80))
@settings(max_examples=100, deadline=None)
def test_compact_range_of_arbitrary_leaf_hashes(leaves: list[bytes]) -> None:
    # Arbitrary (also repeated) 32-byte values: nothing may depend on leaves being distinct.
    compact = CompactRange.empty()
    for size, leaf in enumerate(leaves, 1):
        compact = compact.append(leaf)
        assert compact.root() == Reference(leaves).mth(0, size)
    assert compact.root() == root(leaves)


@given(st.integers(0, 2**63 - 1).flatmap(
    lambda size: st.tuples(st.just(size), st.lists(st.binary(min_size=32, max_size=32), min_size=size.bit_count(),
                                                   max_size=size.bit_count()))))
@settings(max_examples=200, deadline=None)
def test_compact_range_encoding_round_trips_for_any_size(value: tuple[int, list[bytes]]) -> None:
    size, hashes = value
    compact = CompactRange(size, tuple(hashes))
    text = compact.encode()
    assert CompactRange.decode(text) == compact
    assert text.split(":")[0] == str(size)
    if hashes:
        with pytest.raises(InvalidInput):  # one hash too few
            CompactRange.decode(text.rpartition(",")[0] if "," in text else f"{size}:")
        with pytest.raises(InvalidInput):  # one hash too many
            CompactRange.decode(text + "," + base64.b64encode(hashes[0]).decode())
        with pytest.raises(InvalidInput):  # a 31-byte hash
            CompactRange.decode(text.replace(base64.b64encode(hashes[-1]).decode(),
                                             base64.b64encode(hashes[-1][:31]).decode()))
    other = size + 1
    if other <= 2**63 - 1 and other.bit_count() != len(hashes):
        with pytest.raises(InvalidInput):  # the hashes under a size that needs another number of them
            CompactRange.decode(f"{other}:" + text.partition(":")[2])


@given(st.binary(max_size=60))
@settings(max_examples=300, deadline=None)
def test_garbage_compact_range_encodings_are_invalid_input(data: bytes) -> None:
    text = data.decode("latin-1")
    try:
        decoded = CompactRange.decode(text)
    except InvalidInput:
        return
    assert decoded.encode() == text  # whatever is accepted is the one canonical spelling


def test_compact_range_encoding_is_size_and_base64_hashes() -> None:
    a, b, c = make_leaves(3, b"enc")
    compact = CompactRange.empty().append(a).append(b).append(c)
    b64 = [base64.b64encode(h).decode() for h in (node_hash(a, b), c)]
    assert compact.encode() == f"3:{b64[0]},{b64[1]}"


def bad_compact_encodings() -> list[str]:
    h = base64.b64encode(LEAVES[0]).decode()
    short = base64.b64encode(LEAVES[0][:31]).decode()
    loose = h[:-2] + chr(ord(h[-2]) + 1) + "="  # same bytes, non-zero padding bits
    return [
        "", ":", "0", "1", "0:" + h, "1:", f"1:{h},{h}", f"2:{h},{h}", f"3:{h}", f"1:{short}", f"01:{h}",
        f"-1:{h}", f"+1:{h}", f" 1:{h}", f"1 :{h}", f"1: {h}", f"1:{h},", f"1:,{h}", f"1:{h}\n", f"1:{h[:-1]}",
        f"1:{loose}", f"\u0661:{h}", f"1_0:{h}", f"1;{h}", f"1:{h.replace('=', '')}", f"1:{h}:{h}",
        f"3:{h};{h}", "9" * 5000 + ":", f"{2**63}:" + ",".join([h] * 1),
    ]


@pytest.mark.parametrize("text", bad_compact_encodings())
def test_bad_compact_range_encodings_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        CompactRange.decode(text)


def test_compact_range_refuses_inconsistent_values() -> None:
    with pytest.raises(InvalidInput):
        CompactRange(1, ())
    with pytest.raises(InvalidInput):
        CompactRange(2, (LEAVES[0], LEAVES[1]))
    with pytest.raises(InvalidInput):
        CompactRange(1, (LEAVES[0][:31],))
    with pytest.raises(InvalidInput):
        CompactRange(-1, ())
    with pytest.raises(InvalidInput):
        CompactRange.empty().append(b"short")
    assert CompactRange(1, [LEAVES[0]]).hashes == (LEAVES[0],)  # type: ignore[arg-type]


def test_compact_range_is_immutable() -> None:
    empty = CompactRange.empty()
    grown = empty.append(LEAVES[0])
    assert empty.size == 0 and grown.size == 1
    with pytest.raises(AttributeError):
        grown.size = 5  # type: ignore[misc]


# -- first divergence ---------------------------------------------------------------------------------------------

@given(st.lists(st.binary(min_size=1, max_size=2), max_size=20), st.data())
@settings(max_examples=200, deadline=None)
def test_first_divergence_properties(old: list[bytes], data: st.DataObject) -> None:
    assert first_divergence(old, old) is None
    extra = data.draw(st.lists(st.binary(min_size=3, max_size=3), max_size=5))
    assert first_divergence(old, old + extra) is None
    if old:
        cut = data.draw(st.integers(0, len(old) - 1))
        assert first_divergence(old, old[:cut]) == cut  # truncation
        edited = [*old[:cut], old[cut] + b"!", *old[cut + 1:]]
        assert first_divergence(old, edited) == cut  # edit
        assert first_divergence(old, edited + extra) == cut
        assert first_divergence(old, edited[:cut + 1]) == cut  # edit then truncation: the edit comes first


def test_first_divergence() -> None:
    a = make_leaves(10, b"div")
    assert first_divergence(a, a) is None
    assert first_divergence(a[:4], a) is None
    assert first_divergence([], a) is None
    assert first_divergence([], []) is None
    assert first_divergence(a, a[:7]) == 7
    assert first_divergence(a, []) == 0
    changed = [*a[:3], LEAVES[0], *a[4:]]
    assert first_divergence(a, changed) == 3
    assert first_divergence(a, changed[:2]) == 2
    assert first_divergence(a, changed[:5]) == 3
    assert first_divergence(a, [a[1], a[0], *a[2:]]) == 0



# -- LeafHashes: remembered perfect subtrees give the same roots and proofs ----------------------------------------

class SmallMemo(LeafHashes):
    MEMO_MIN = 2  # remember subtrees from 4 leaves up, so that small trees exercise the memo


@pytest.mark.parametrize("cls", [LeafHashes, SmallMemo])
def test_leaf_hashes_match_the_reference_for_every_size_index_and_pair_up_to_300(cls: type[LeafHashes]) -> None:
    tree = cls(LEAVES)
    for new_size in range(0, EXHAUSTIVE + 1):
        assert tree.root_of(new_size) == REF.mth(0, new_size), new_size
    for size in range(1, EXHAUSTIVE + 1, 7):
        for index in range(size):
            assert inclusion_proof(tree, index, size) == REF.path(index, 0, size), (index, size)
        for old_size in range(1, size + 1):
            assert consistency_proof(tree, old_size, size) == REF.proof(old_size, size), (old_size, size)


def test_leaf_hashes_grown_one_at_a_time_never_serve_a_stale_subtree() -> None:
    tree = SmallMemo()
    for size in range(1, 130):
        tree.extend([LEAVES[size - 1]])
        assert tree.root_of(size) == REF.mth(0, size)
        assert inclusion_proof(tree, size // 2, size) == REF.path(size // 2, 0, size)


def test_truncated_leaf_hashes_forget_what_they_no_longer_hold() -> None:
    tree = SmallMemo(LEAVES[:200])
    tree.root_of(200)
    tree.truncate(100)
    other = make_leaves(100, salt=b"other")
    tree.extend(other)
    expected = Reference(LEAVES[:100] + other)
    assert tree.root_of(200) == expected.mth(0, 200)
    assert inclusion_proof(tree, 150, 200) == expected.path(150, 0, 200)


def test_leaf_hashes_answer_from_memory_after_the_first_proof(hash_calls: Callable[[], int]) -> None:
    size = 1 << 14
    tree = LeafHashes(make_leaves(size + 5))
    tree.root_of(size + 5)  # the first use hashes the tree once
    before = hash_calls()
    inclusion_proof(tree, 12345, size + 5)
    consistency_proof(tree, 9999, size + 5)
    tree.root_of(size)
    assert hash_calls() - before < 4 * LeafHashes.MEMO_MIN * 20  # a few small subtrees, not the whole tree


def test_leaf_hashes_refuse_what_is_not_a_hash() -> None:
    with pytest.raises(InvalidInput):
        LeafHashes([b"short"])
    with pytest.raises(InvalidInput):
        LeafHashes(LEAVES[:3]).root_of(4)
