"""Merkle-sum proof of liabilities: the tree against an independent reference, proofs, tampering, limits, privacy."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.domain import liabilities as lia
from appliance.domain.liabilities import LiabilityTree, verify_proof
from appliance.errors import InvalidInput, NotFound, VerificationFailed

SECRET = b"test-liabilities-secret"


def reference(holders: dict[str, int], secret: bytes) -> tuple[bytes, int]:
    """The tree as the module docstring defines it, written the slow and obvious way (RFC 9162 recursion)."""
    leaves = []
    for account, balance in holders.items():
        salt = hmac.new(secret, b"liability-salt" + account.encode(), hashlib.sha256).digest()
        leaves.append((hashlib.sha256(b"\x00liability-leaf" + salt + account.encode()).digest(), balance))
    leaves.sort()
    nodes = [(hashlib.sha256(b"\x00" + c + b.to_bytes(16, "big")).digest(), b) for c, b in leaves]

    def subtree(lo: int, hi: int) -> tuple[bytes, int]:
        if hi - lo == 1:
            return nodes[lo]
        k = 1
        while 2 * k < hi - lo:  # the largest power of two smaller than the size
            k *= 2
        (lh, ls), (rh, rs) = subtree(lo, lo + k), subtree(lo + k, hi)
        return hashlib.sha256(b"\x01" + lh + ls.to_bytes(16, "big") + rh + rs.to_bytes(16, "big")).digest(), ls + rs

    return subtree(0, len(nodes))


accounts = st.text(st.characters(codec="utf-8"), min_size=1, max_size=16)  # no lone surrogates
holder_sets = st.dictionaries(accounts, st.integers(0, 10**30), min_size=1, max_size=200)


@settings(max_examples=60, deadline=None)
@given(holder_sets)
def test_every_holders_proof_verifies_and_the_tree_is_the_reference(holders: dict[str, int]) -> None:
    tree = LiabilityTree.build(holders.items(), SECRET)
    assert (tree.root, tree.total) == reference(holders, SECRET)
    assert tree.leaves == len(holders)
    assert tree.summary() == {"root": tree.root.hex(), "total": str(sum(holders.values())), "leaves": len(holders)}
    for account, balance in holders.items():
        proof = tree.proof(account)
        assert proof["account"] == account and proof["balance"] == str(balance)
        assert proof["salt"] == lia.salt_for(SECRET, account).hex()
        json.dumps(proof)  # JSON-safe
        verify_proof(proof, tree.root.hex(), tree.total, tree.leaves)


@settings(max_examples=60, deadline=None)
@given(holder_sets, st.data())
def test_changing_or_omitting_any_holder_changes_the_root_or_the_total(holders: dict[str, int],
                                                                       data: st.DataObject) -> None:
    tree = LiabilityTree.build(holders.items(), SECRET)
    victim = data.draw(st.sampled_from(sorted(holders)))
    changed = dict(holders)
    changed[victim] = data.draw(st.integers(0, 10**30).filter(lambda b: b != holders[victim]))
    other = LiabilityTree.build(changed.items(), SECRET)
    assert other.root != tree.root
    if len(holders) > 1:
        smaller = LiabilityTree.build([(a, b) for a, b in holders.items() if a != victim], SECRET)
        assert (smaller.root, smaller.total, smaller.leaves) != (tree.root, tree.total, tree.leaves)
        assert smaller.root != tree.root


def test_input_order_does_not_matter_and_streams_give_the_same_tree() -> None:
    holders = [(f"holder-{i}", i * 1000) for i in range(5000)]
    tree = LiabilityTree.build(holders, SECRET)
    shuffled = list(holders)
    random.Random(3).shuffle(shuffled)
    streamed = LiabilityTree.build(iter(shuffled), SECRET)  # no length: another bucket count, same tree
    assert (streamed.root, streamed.total) == (tree.root, tree.total) == reference(dict(holders), SECRET)


def test_proof_shapes_for_every_position_of_small_trees() -> None:
    for n in range(1, 34):
        holders = {f"h{i}": i for i in range(n)}
        tree = LiabilityTree.build(holders.items(), SECRET)
        assert (tree.root, tree.total) == reference(holders, SECRET)
        for index in range(n):
            proof = tree.proof_at(index)
            expected, i, size = 0, index, n
            while size > 1:  # a sibling at each level where one exists, none where the node is promoted
                expected += (i ^ 1) < size
                i, size = i >> 1, (size + 1) >> 1
            assert len(proof["path"]) == expected
            verify_proof(proof, tree.root.hex(), tree.total, tree.leaves, account_required=False)


def test_a_single_holder_tree_is_its_leaf() -> None:
    tree = LiabilityTree.build([("only", 42)], SECRET)
    commitment = lia.commitment_for(lia.salt_for(SECRET, "only"), "only")
    assert tree.root == lia.leaf_hash(commitment, 42) and tree.total == 42 and tree.leaves == 1
    proof = tree.proof("only")
    assert proof["path"] == [] and proof["index"] == 0
    verify_proof(proof, tree.root.hex(), 42, 1)


def test_the_fast_hmac_is_hmac() -> None:
    for secret in (b"k", b"x" * 64, b"y" * 65, bytes(range(200))):  # short, block-sized and hashed-down keys
        tree = LiabilityTree.build([("alice", 1), ("bob", 2)], secret)
        assert tree.proof("alice")["salt"] == hmac.new(secret, b"liability-salt" + b"alice", "sha256").hexdigest()


# -- tampering -------------------------------------------------------------------------------------------------------

TREE = LiabilityTree.build({f"holder-{i:03d}": 1000 + i for i in range(13)}.items(), SECRET)


def flip_hex(value: str) -> str:
    return ("1" if value[0] == "0" else "0") + value[1:]


@pytest.mark.parametrize("tamper", [
    lambda p: p.update(balance=str(int(p["balance"]) + 1)),
    lambda p: p.update(balance=str(int(p["balance"]) - 1)),
    lambda p: p.update(balance=int(p["balance"])),
    lambda p: p.update(balance="-" + p["balance"]),
    lambda p: p.update(salt=flip_hex(p["salt"])),
    lambda p: p.update(salt=p["salt"][:-2]),
    lambda p: p.update(account=p["account"] + "x"),
    lambda p: p.update(account="holder-001"),
    lambda p: p.pop("account"),
    lambda p: p.update(commitment="00" * 32),
    lambda p: p["path"][0].update(hash=flip_hex(p["path"][0]["hash"])),
    lambda p: p["path"][-1].update(hash=flip_hex(p["path"][-1]["hash"])),
    lambda p: p["path"][0].update(sum=str(int(p["path"][0]["sum"]) + 1)),
    lambda p: p["path"][-1].update(sum=str(int(p["path"][-1]["sum"]) - 1)),
    lambda p: p["path"][0].update(sum="-1"),
    lambda p: p["path"][0].update(sum=str(2**128)),
    lambda p: p["path"][0].update(side="left" if p["path"][0]["side"] == "right" else "right"),
    lambda p: p.update(index=(p["index"] + 1) % p["leaves"]),
    lambda p: p.update(index=p["leaves"]),
    lambda p: p.update(index=True),
    lambda p: p.update(leaves=p["leaves"] + 1),
    lambda p: p.update(root="00" * 32),
    lambda p: p.update(total=str(int(p["total"]) + 1)),
    lambda p: p.update(version=2),
    lambda p: p["path"].pop(),
    lambda p: p["path"].append(p["path"][0]),
    lambda p: p["path"].reverse(),
    lambda p: p.update(path=None),
])
def test_a_tampered_proof_fails(tamper: Callable[[dict[str, Any]], Any]) -> None:
    proof = TREE.proof("holder-005")
    verify_proof(proof, TREE.root.hex(), TREE.total, TREE.leaves)
    tamper(proof)
    with pytest.raises(VerificationFailed):
        verify_proof(proof, TREE.root.hex(), TREE.total, TREE.leaves)


def test_a_proof_against_other_attested_figures_fails() -> None:
    proof = TREE.proof("holder-005")
    proof.update(attestation=7)  # extra members (the service adds this one) are ignored
    verify_proof(proof, TREE.root.hex(), TREE.total, TREE.leaves)
    for root, total, leaves in ((flip_hex(TREE.root.hex()), TREE.total, TREE.leaves),
                                (TREE.root.hex(), TREE.total + 1, TREE.leaves),
                                (TREE.root.hex(), TREE.total, TREE.leaves + 1)):
        with pytest.raises(VerificationFailed):
            verify_proof(proof, root, total, leaves)


def test_an_anonymous_proof_needs_to_be_asked_for() -> None:
    index = TREE.index_of("holder-005")
    anonymous = TREE.proof_at(index)
    assert "account" not in anonymous and "salt" not in anonymous
    with pytest.raises(VerificationFailed, match="account"):
        verify_proof(anonymous, TREE.root.hex(), TREE.total, TREE.leaves)
    verify_proof(anonymous, TREE.root.hex(), TREE.total, TREE.leaves, account_required=False)
    assert TREE.proof("holder-005")["path"] == anonymous["path"]


def test_a_sibling_sum_that_overflows_is_refused_by_the_verifier() -> None:
    tree = LiabilityTree.build([("a", 2**128 - 2), ("b", 1)], SECRET)
    proof = tree.proof("a")
    verify_proof(proof, tree.root.hex(), tree.total, tree.leaves)
    proof["path"][0]["sum"] = "2"  # the sum of the two reaches 2**128
    with pytest.raises(VerificationFailed, match="2\\*\\*128"):
        verify_proof(proof, tree.root.hex(), tree.total, tree.leaves)


# -- limits and refusals ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("holders", "error"), [
    ([("a", 2**128)], InvalidInput),
    ([("a", -1)], InvalidInput),
    ([("a", 2**127), ("b", 2**127)], InvalidInput),  # each fits, the total does not
    ([("a", 2**128 - 1), ("b", 1)], InvalidInput),
    ([("a", 1), ("b", 2), ("a", 2)], InvalidInput),  # an account twice, even with another balance
    ([("a", 1), ("a", 1)], InvalidInput),
    ([], InvalidInput),
    ([("", 1)], InvalidInput),
    ([("\ud800", 1)], InvalidInput),  # not encodable as UTF-8
    ([("a", True)], TypeError),
    ([("a", 1.0)], TypeError),
    ([(b"a", 1)], TypeError),
])
def test_refused_holder_sets(holders: list[tuple[Any, Any]], error: type[Exception]) -> None:
    with pytest.raises(error):
        LiabilityTree.build(holders, SECRET)
    with pytest.raises(error):
        LiabilityTree.build(iter(holders), SECRET)


def test_the_largest_total_is_accepted_and_the_secret_must_not_be_empty() -> None:
    tree = LiabilityTree.build([("a", 2**128 - 2), ("b", 1)], SECRET)
    assert tree.total == 2**128 - 1
    with pytest.raises(ValueError):
        LiabilityTree.build([("a", 1)], b"")


def test_a_duplicate_among_many_is_found() -> None:
    holders = [(f"h{i}", i) for i in range(3000)] + [("h1234", 5)]
    with pytest.raises(InvalidInput, match="twice"):
        LiabilityTree.build(holders, SECRET)
    with pytest.raises(InvalidInput, match="twice"):
        LiabilityTree.build(iter(holders), SECRET)


# -- privacy and lookups ----------------------------------------------------------------------------------------------

def test_a_proof_reveals_no_other_account_and_the_secret_decides_the_salts() -> None:
    tree = LiabilityTree.build([("alice", 5), ("bob", 7), ("carol", 9)], SECRET)
    text = json.dumps(tree.proof("alice"))
    assert "bob" not in text and "carol" not in text  # (the leaf-level sibling's sum is its balance, unnamed)
    other = LiabilityTree.build([("alice", 5), ("bob", 7), ("carol", 9)], b"another secret")
    assert other.root != tree.root and other.total == tree.total
    assert other.proof("alice")["salt"] != tree.proof("alice")["salt"]


def test_lookups() -> None:
    tree = LiabilityTree.build([(f"h{i}", i) for i in range(100)], SECRET)
    indexes = sorted(tree.index_of(f"h{i}") for i in range(100))
    assert indexes == list(range(100))
    with pytest.raises(NotFound):
        tree.proof("h100")
    with pytest.raises(NotFound):
        tree.proof_at(100)
    with pytest.raises(NotFound):
        tree.proof_at(-1)
    paths = list(tree.iter_paths())
    assert [i for i, _ in paths] == list(range(100))
    assert all(path == tree.path(i) for i, path in paths)


def test_a_streamed_csv_builds_the_tree_and_its_problems_keep_their_lines() -> None:
    from appliance.domain import reserves

    text = "account,balance\n" + "".join(f"h{i},{i}\n" for i in range(50))
    tree = LiabilityTree.build(reserves.iter_holders_csv(text, check_duplicates=False), SECRET)
    assert (tree.root, tree.total) == reference({f"h{i}": i for i in range(50)}, SECRET)
    with pytest.raises(InvalidInput) as caught:
        LiabilityTree.build(reserves.iter_holders_csv(text + "x,-1\n", check_duplicates=False), SECRET)
    assert [p.location for p in caught.value.problems] == ["holders.csv: line 52"]
    with pytest.raises(InvalidInput, match="twice"):
        LiabilityTree.build(reserves.iter_holders_csv(text + "h7,1\n", check_duplicates=False), SECRET)
