"""Merkle-sum proof of liabilities: each holder can check that their balance is inside the attested total.

Hashes (SHA-256; `||` is concatenation; balances and sums are 16-byte big-endian; accounts UTF-8):

    salt       = HMAC-SHA256(secret, "liability-salt" || account)
    commitment = SHA-256(0x00 || "liability-leaf" || salt || account)
    leaf       = SHA-256(0x00 || commitment || balance)                   sum = balance
    node       = SHA-256(0x01 || left || left_sum || right || right_sum)  sum = left_sum + right_sum

Privacy: the tree holds only commitments. The salt comes from a secret only the issuer holds, so nobody can
test a guessed account against a commitment; a holder's proof reveals their own account, salt and balance, and
for each level one sibling (hash, sum) -- an aggregate, never another holder's account or (beyond the leaf
level's sibling) balance. Leaves are sorted by commitment, so the position reveals nothing about the input
order (e.g. signup order) and equal commitments (a repeated account) meet and are refused.

Each node commits to both children's sums, not only to their total: a prover cannot move value between
siblings (the known flaw of the first Merkle-sum-tree designs), and every sum is non-negative by encoding.

Shape: levels pair nodes left to right and an odd last node is promoted unchanged to the next level. This is
exactly the RFC 9162 shape (split at the largest power of two smaller than n), built bottom-up. A proof lists,
from the leaf up, one sibling per level where the node has one; the index and the leaf count fix which levels
have a sibling and on which side, and the verifier checks the proof against that shape.

Domain separation: inner-node inputs are always exactly 97 bytes and leaf inputs exactly 49 bytes, where the
audit log's RFC 9162 nodes are 65 bytes and its leaves 0x00 || an RFC 8785 JSON entry (which starts with "{"
and is far longer than 48 bytes); the commitment itself is tagged "liability-leaf" and the salt
"liability-salt". Leaf and node inputs differ in their first byte and in length.

Limits: every balance and the total are below 2**128 (16-byte sums; checked before building), so no sum in
the tree can overflow.

Scale: 10 million holders. Nothing is kept per holder as a Python object: the sorted leaves are one bytearray
of 48-byte records (commitment || balance) and each upper level one bytearray of 48-byte records (hash || sum),
about 96 bytes per holder in all (~0.96 GB for 10 million). Leaf hashes are not stored: each is recomputed
from its record when a proof needs it (one SHA-256). `index_of` binary-searches the sorted commitments (no
account map: an account -> index dict would cost ~100 bytes more per holder).
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import operator
from collections.abc import Iterable, Iterator, Mapping, Sized
from typing import Any

from appliance.errors import InvalidInput, NotFound, VerificationFailed

VERSION = 1
SUM_BYTES = 16
MAX_SUM = 1 << (8 * SUM_BYTES)  # balances, sums and the total are < 2**128
HASH_BYTES = 32
RECORD = HASH_BYTES + SUM_BYTES  # one node: 32-byte hash (or, for leaves, commitment) || 16-byte sum
SALT_TAG = b"liability-salt"
COMMITMENT_PREFIX = b"\x00liability-leaf"
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"

# Pairs per chunk when summing a level in bulk: large enough that the per-chunk Python calls are noise, small
# enough that the chunk (96 bytes per pair) stays in the CPU cache and the temporary integers stay small.
_SUM_CHUNK = 4096
_COMMITMENT_OF = operator.itemgetter(slice(0, HASH_BYTES))


# -- the hash functions, one call each (what a verifier needs) ------------------------------------------------

def salt_for(secret: bytes, account: str) -> bytes:
    """HMAC-SHA256(secret, "liability-salt" || account): the holder's salt, given to them with their proof."""
    return hmac.new(secret, SALT_TAG + account.encode("utf-8"), hashlib.sha256).digest()


def commitment_for(salt: bytes, account: str) -> bytes:
    """SHA-256(0x00 || "liability-leaf" || salt || account): what the tree holds instead of the account."""
    return hashlib.sha256(COMMITMENT_PREFIX + salt + account.encode("utf-8")).digest()


def leaf_hash(commitment: bytes, balance: int) -> bytes:
    """SHA-256(0x00 || commitment || balance as 16 bytes big-endian). OverflowError if balance is out of range."""
    return hashlib.sha256(LEAF_PREFIX + commitment + balance.to_bytes(SUM_BYTES, "big")).digest()


def node_hash(left: bytes, left_sum: int, right: bytes, right_sum: int) -> bytes:
    """SHA-256(0x01 || left || left_sum || right || right_sum), sums as 16 bytes big-endian."""
    return hashlib.sha256(NODE_PREFIX + left + left_sum.to_bytes(SUM_BYTES, "big") + right
                          + right_sum.to_bytes(SUM_BYTES, "big")).digest()


def _hmac_states(secret: bytes) -> tuple[Any, Any]:
    """SHA-256 states with HMAC's ipad block (and the salt tag) and opad block already absorbed (RFC 2104).

    HMAC(K, m) = H((K ^ opad) || H((K ^ ipad) || m)). Copying these two states per account costs two
    compressions instead of four and avoids the hmac module's per-call Python overhead; salt_for (the plain
    hmac module) is the reference the tests compare against.
    """
    key = hashlib.sha256(secret).digest() if len(secret) > 64 else secret
    key = key.ljust(64, b"\x00")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key) + SALT_TAG)
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    return inner, outer


# -- the tree -------------------------------------------------------------------------------------------------

class _Commitments:
    """The sorted commitments as a read-only sequence, for bisect (no copy)."""

    def __init__(self, records: bytes | bytearray) -> None:
        self._records = records

    def __len__(self) -> int:
        return len(self._records) // RECORD

    def __getitem__(self, i: int) -> bytes:
        return bytes(self._records[RECORD * i:RECORD * i + HASH_BYTES])


class LiabilityTree:
    """A built Merkle-sum tree. Create it with `LiabilityTree.build(holders, secret)`."""

    def __init__(self, records: bytearray, levels: list[bytearray], secret: bytes) -> None:
        self._records = records  # leaves: commitment || balance, sorted by commitment
        self._levels = levels  # level 1 upwards: hash || sum; the last holds the root alone
        self._secret = secret

    @classmethod
    def build(cls, holders: Iterable[tuple[str, int]], secret: bytes) -> LiabilityTree:
        """Build the tree over (account, balance) pairs; balances in base units.

        Raises InvalidInput for no holders, an empty or non-encodable account, a balance outside 0..2**128-1, a
        total of 2**128 or more, or an account that appears twice; TypeError for a non-str account or a
        non-int balance; ValueError for an empty secret. Consumes `holders` once, so a streaming CSV reader is
        read to its end (and raises its own InvalidInput there).

        The secret is the HMAC key of every salt: whoever holds it can test guessed accounts against the
        commitments, so it must be a long random value (32 random bytes) kept like a key. Its strength cannot
        be judged from here beyond refusing an empty one.
        """
        if not isinstance(secret, bytes) or not secret:
            raise ValueError("the liabilities secret must be non-empty bytes")
        records = _sorted_records(holders, secret)
        levels: list[bytearray] = []
        below = records
        while len(below) > RECORD:
            below = _parent_level(below, leaves=not levels)
            levels.append(below)
        return cls(records, levels, secret)

    # -- the summary that goes into the attestation -----------------------------------------------------------

    @property
    def leaves(self) -> int:
        """Number of holders."""
        return len(self._records) // RECORD

    @property
    def root(self) -> bytes:
        """The 32-byte root hash."""
        if not self._levels:
            return _leaf_of(self._records, 0)
        return bytes(self._levels[-1][:HASH_BYTES])

    @property
    def total(self) -> int:
        """Sum of all balances (the root's sum)."""
        top = self._levels[-1] if self._levels else self._records
        return int.from_bytes(top[HASH_BYTES:RECORD], "big")

    def summary(self) -> dict[str, Any]:
        """The attestation's `liabilities` member: {"root": hex, "total": decimal string, "leaves": int}."""
        return {"root": self.root.hex(), "total": str(self.total), "leaves": self.leaves}

    # -- proofs -------------------------------------------------------------------------------------------------

    def index_of(self, account: str) -> int:
        """The leaf position of `account`; NotFound if it is not in the tree.

        Recomputes the account's commitment and binary-searches the sorted leaves: O(log n), no stored map.
        """
        target = commitment_for(salt_for(self._secret, account), account)
        commitments = _Commitments(self._records)
        i = bisect.bisect_left(commitments, target)
        if i == len(commitments) or commitments[i] != target:
            raise NotFound("that account is not among the holders of this attestation")
        return i

    def proof(self, account: str) -> dict[str, Any]:
        """The holder's inclusion proof (JSON-safe), revealing only their own account, salt and balance:

        {"version": 1, "account", "salt": hex, "balance": str, "index", "leaves",
         "path": [{"side": "left"|"right", "hash": hex, "sum": str}, ...], "root": hex, "total": str}

        `side` is where the sibling sits. NotFound if the account is not in the tree.
        """
        index = self.index_of(account)
        anonymous = self.proof_at(index)
        del anonymous["commitment"]
        return {"version": VERSION, "account": account, "salt": salt_for(self._secret, account).hex(),
                **{k: v for k, v in anonymous.items() if k != "version"}}

    def proof_at(self, index: int) -> dict[str, Any]:
        """The proof for the leaf at `index`, naming its commitment instead of an account and salt.

        The tree does not keep accounts, so this form is what can be produced by position (e.g. to publish
        every proof keyed by commitment); a holder who has their salt can check it. verify_proof accepts it
        only with account_required=False. NotFound if index is out of range.
        """
        record = self._record(index)
        return {"version": VERSION, "commitment": record[:HASH_BYTES].hex(),
                "balance": str(int.from_bytes(record[HASH_BYTES:], "big")), "index": index,
                "leaves": self.leaves, "path": self.path(index), "root": self.root.hex(), "total": str(self.total)}

    def path(self, index: int) -> list[dict[str, str]]:
        """Siblings from the leaf up: {"side", "hash", "sum"} for each level where the node has a sibling."""
        self._record(index)  # range check
        out: list[dict[str, str]] = []
        i, size = index, self.leaves
        for depth in range(len(self._levels)):
            if i ^ 1 < size:
                side, hash_hex, sum_text = self._sibling(depth, i ^ 1)
                out.append({"side": side, "hash": hash_hex, "sum": sum_text})
            i, size = i >> 1, (size + 1) >> 1
        return out

    def iter_paths(self) -> Iterator[tuple[int, list[dict[str, str]]]]:
        """(index, path) for every leaf in order: what a publisher writes out for all holders.

        Consecutive leaves share their upper siblings (the sibling at level k changes every 2**k leaves), so each
        sibling's hex and decimal text is computed once, not once per leaf; every path is still fresh dicts.
        """
        height = len(self._levels)
        cached: list[tuple[int, tuple[str, str, str]]] = [(-1, ("", "", ""))] * height
        leaves = self.leaves
        for index in range(leaves):
            out: list[dict[str, str]] = []
            i, size = index, leaves
            for depth in range(height):
                sibling = i ^ 1
                if sibling < size:
                    known, entry = cached[depth]
                    if known != sibling:
                        entry = self._sibling(depth, sibling)
                        cached[depth] = (sibling, entry)
                    out.append({"side": entry[0], "hash": entry[1], "sum": entry[2]})
                i, size = i >> 1, (size + 1) >> 1
            yield index, out

    def _sibling(self, depth: int, sibling: int) -> tuple[str, str, str]:
        """(side, hash hex, sum) of node `sibling` at `depth` (0: leaves), as a proof step names it."""
        # The sibling is on the right of an even node (whose sibling index is odd) and on the left otherwise.
        side = "right" if sibling & 1 else "left"
        node: bytes | bytearray
        if depth == 0:  # leaf hashes are not stored: one SHA-256 of the leaf record
            node = _leaf_of(self._records, sibling)
            node_sum = self._records[RECORD * sibling + HASH_BYTES:RECORD * (sibling + 1)]
        else:
            level = self._levels[depth - 1]
            node = level[RECORD * sibling:RECORD * sibling + HASH_BYTES]
            node_sum = level[RECORD * sibling + HASH_BYTES:RECORD * (sibling + 1)]
        return side, node.hex(), str(int.from_bytes(node_sum, "big"))

    def _record(self, index: int) -> bytes:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.leaves:
            raise NotFound(f"no leaf at index {index!r}")
        return bytes(self._records[RECORD * index:RECORD * index + RECORD])


def _leaf_of(records: bytes | bytearray, i: int) -> bytes:
    h = hashlib.sha256(LEAF_PREFIX)
    h.update(records[RECORD * i:RECORD * i + RECORD])
    return h.digest()


def _bucket_bits(holders: object) -> int:
    """How many leading commitment bits pick a bucket: about 2,000 records per bucket, at most 4096 buckets.

    Measured trade-off: small buckets sort fast (they stay in cache), but appending to many buckets costs cache
    misses of its own. Without a length (a streaming reader) assume a large input; 4096 empty buckets cost
    about a millisecond.
    """
    if isinstance(holders, Sized):
        n = len(holders)
        bits = 0
        while bits < 12 and (n >> bits) > 2048:
            bits += 1
        return bits
    return 12


def _sorted_records(holders: Iterable[tuple[str, int]], secret: bytes) -> bytearray:
    """commitment || balance of every holder, sorted by commitment, in one bytearray; checks the limits.

    Pass 1 hashes each holder and appends its 48-byte record to a bucket chosen by the commitment's leading
    bits (commitments are uniformly distributed, so buckets fill evenly); pass 2 sorts bucket by bucket. This
    is a radix-then-comparison sort: no list of ten million objects is ever built and each sort is small.
    """
    inner, outer = _hmac_states(secret)
    commit = hashlib.sha256(COMMITMENT_PREFIX)
    bits = _bucket_bits(holders)
    shift = 16 - bits
    buckets = [bytearray() for _ in range(1 << bits)]
    total = 0
    # Hot loop, once per holder: only C calls on prepared objects (copying a hash state is cheaper than
    # starting one); no per-holder Python objects survive the iteration except the 48 bytes in a bucket.
    inner_copy, outer_copy, commit_copy = inner.copy, outer.copy, commit.copy
    for account, balance in holders:
        try:
            raw = account.encode("utf-8")
            amount = balance.to_bytes(SUM_BYTES, "big")  # OverflowError when negative or >= 2**128
        except (AttributeError, OverflowError, UnicodeEncodeError) as exc:
            raise _bad_holder(buckets, account, balance) from exc
        if balance.__class__ is not int or not raw:
            raise _bad_holder(buckets, account, balance)
        h = inner_copy()
        h.update(raw)
        salt = outer_copy()
        salt.update(h.digest())
        c = commit_copy()
        c.update(salt.digest())
        c.update(raw)
        commitment = c.digest()
        bucket = buckets[(commitment[0] << 8 | commitment[1]) >> shift]
        bucket += commitment
        bucket += amount
        total += balance
    size = sum(map(len, buckets))
    if size == 0:
        raise InvalidInput("there are no holders: a liabilities tree needs at least one")
    if total >= MAX_SUM:
        raise InvalidInput(f"the balances add up to {total}, which is 2**128 or more")
    records = bytearray(size)
    at = 0
    for b, bucket in enumerate(buckets):
        if not bucket:
            continue
        data = bytes(bucket)
        buckets[b] = bytearray()  # give the bucket's memory back while the sorted copy grows
        items = [data[i:i + RECORD] for i in range(0, len(data), RECORD)]
        items.sort()  # by commitment first (its bytes lead the record)
        if len(set(map(_COMMITMENT_OF, items))) != len(items):
            raise InvalidInput("an account appears twice in the holder balances")
        records[at:at + len(data)] = b"".join(items)
        at += len(data)
    return records


def _bad_holder(buckets: list[bytearray], account: object, balance: object) -> Exception:
    # The position is counted only on this error path, so the hot loop does not count holders.
    where = f"holder #{sum(map(len, buckets)) // RECORD + 1}"
    if not isinstance(account, str):
        return TypeError(f"{where}: the account must be a str, not {type(account).__name__}")
    if isinstance(balance, bool) or not isinstance(balance, int):
        return TypeError(f"{where}: the balance must be an int, not {type(balance).__name__}")
    if not account:
        return InvalidInput(f"{where}: the account is empty")
    if not 0 <= balance < MAX_SUM:
        return InvalidInput(f"{where}: the balance of {account[:40]!r} is outside 0..2**128-1")
    return InvalidInput(f"{where}: the account is not valid Unicode text")


def _pair_sums(level: bytearray, start: int, stop: int) -> bytes:
    """left_sum + right_sum for the pairs start..stop-1 of a level, as 16-byte big-endian fields, in bulk.

    The left sums and the right sums are gathered (strided copies, in C) into two byte strings that are read as
    two big integers and added once: because every sum in the tree is < 2**128 (the total is), no field
    carries into its neighbour, so the big sum *is* the concatenation of the pair sums. This replaces two
    int.from_bytes, an addition and a to_bytes per node.
    """
    segment = level[2 * RECORD * start:2 * RECORD * stop]
    count = stop - start
    lefts, rights = bytearray(SUM_BYTES * count), bytearray(SUM_BYTES * count)
    for k in range(SUM_BYTES):
        lefts[k::SUM_BYTES] = segment[HASH_BYTES + k::2 * RECORD]
        rights[k::SUM_BYTES] = segment[RECORD + HASH_BYTES + k::2 * RECORD]
    return (int.from_bytes(lefts, "big") + int.from_bytes(rights, "big")).to_bytes(SUM_BYTES * count, "big")


def _parent_level(below: bytearray, *, leaves: bool) -> bytearray:
    """The level above `below` (48-byte records). For the leaf level, leaf hashes are computed on the way."""
    count = len(below) // RECORD
    pairs = count // 2
    out = bytearray()
    node_copy = hashlib.sha256(NODE_PREFIX).copy
    leaf_copy = hashlib.sha256(LEAF_PREFIX).copy
    for start in range(0, pairs, _SUM_CHUNK):
        stop = min(pairs, start + _SUM_CHUNK)
        sums = _pair_sums(below, start, stop)
        s = 0
        if leaves:
            # node = H(0x01 || leaf(left) || left_sum || leaf(right) || right_sum), leaf(r) = H(0x00 || r)
            for q in range(2 * RECORD * start, 2 * RECORD * stop, 2 * RECORD):
                left = below[q:q + RECORD]
                right = below[q + RECORD:q + 2 * RECORD]
                a = leaf_copy()
                a.update(left)
                b = leaf_copy()
                b.update(right)
                h = node_copy()
                h.update(a.digest())
                h.update(left[HASH_BYTES:])
                h.update(b.digest())
                h.update(right[HASH_BYTES:])
                out += h.digest()
                out += sums[s:s + SUM_BYTES]
                s += SUM_BYTES
        else:
            # The two children's records are adjacent: hash || sum || hash || sum is one contiguous slice.
            for q in range(2 * RECORD * start, 2 * RECORD * stop, 2 * RECORD):
                h = node_copy()
                h.update(below[q:q + 2 * RECORD])
                out += h.digest()
                out += sums[s:s + SUM_BYTES]
                s += SUM_BYTES
    if count % 2:  # the odd last node is promoted unchanged
        last = below[RECORD * (count - 1):]
        out += _leaf_of(below, count - 1) if leaves else last[:HASH_BYTES]
        out += last[HASH_BYTES:]
    return out


# -- verification -----------------------------------------------------------------------------------------------

def _hex_bytes(value: object, size: int, what: str) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * size:
        raise VerificationFailed(f"the proof's {what} must be {2 * size} hex digits")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise VerificationFailed(f"the proof's {what} must be {2 * size} hex digits") from None


def _units(value: object, what: str) -> int:
    if not isinstance(value, str) or not value.isascii() or not value.isdigit() or len(value) > 39 or (
            value[0] == "0" and len(value) > 1):
        raise VerificationFailed(f"the proof's {what} must be a decimal string of base units")
    amount = int(value)
    if amount >= MAX_SUM:
        raise VerificationFailed(f"the proof's {what} is 2**128 or more")
    return amount


def verify_proof(proof: Mapping[str, Any], root_hex: str, total: int, leaves: int, *,
                 account_required: bool = True) -> None:
    """Check a holder's inclusion proof against the attested liabilities {root, total, leaves}.

    Recomputes the commitment from the proof's account and salt (or, with account_required=False, takes the
    proof's `commitment`), folds the path from the leaf up and requires: the path has exactly the siblings and
    sides that `index` and `leaves` imply; every sum is 0..2**128-1 and no running sum reaches 2**128; the fold
    ends at root_hex with sum `total`; the proof's own root/total/leaves, if given, are the attested ones.
    Unknown members (e.g. "attestation") are ignored. Raises VerificationFailed saying what does not hold.
    """
    if not isinstance(proof, Mapping):
        raise VerificationFailed("the proof must be a JSON object")
    if proof.get("version", VERSION) != VERSION:
        raise VerificationFailed(f"unknown proof version {proof.get('version')!r}")
    if isinstance(leaves, bool) or not isinstance(leaves, int) or leaves < 1:
        raise VerificationFailed("the attested leaf count must be a positive integer")
    if "account" in proof or account_required:
        account = proof.get("account")
        if not isinstance(account, str) or not account:
            raise VerificationFailed("the proof must name the holder's account")
        salt = _hex_bytes(proof.get("salt"), HASH_BYTES, "salt")
        try:
            commitment = commitment_for(salt, account)
        except UnicodeEncodeError:
            raise VerificationFailed("the proof's account is not valid Unicode text") from None
        if "commitment" in proof and _hex_bytes(proof["commitment"], HASH_BYTES, "commitment") != commitment:
            raise VerificationFailed("the proof's commitment is not that of its account and salt")
    else:
        commitment = _hex_bytes(proof.get("commitment"), HASH_BYTES, "commitment")
    balance = _units(proof.get("balance"), "balance")
    index, path = proof.get("index"), proof.get("path")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < leaves:
        raise VerificationFailed(f"the proof's index must be an integer from 0 to {leaves - 1}")
    if proof.get("leaves", leaves) != leaves:
        raise VerificationFailed("the proof is for a tree with another number of leaves")
    if proof.get("root", root_hex) != root_hex or proof.get("total", str(total)) != str(total):
        raise VerificationFailed("the proof names another root or total than the attestation")
    if not isinstance(path, list):
        raise VerificationFailed("the proof's path must be a list")

    node, node_sum = leaf_hash(commitment, balance), balance
    steps = iter(path)
    i, size, depth = index, leaves, 0
    while size > 1:
        if i ^ 1 < size:  # this level has a sibling; otherwise the node is promoted and the path skips it
            step = next(steps, None)
            if not isinstance(step, Mapping):
                raise VerificationFailed(f"the proof's path is too short or malformed at level {depth}")
            expected_side = "left" if i & 1 else "right"
            if step.get("side") != expected_side:
                raise VerificationFailed(f"the proof's sibling at level {depth} must be on the {expected_side}, "
                                         "as the index says")
            sibling = _hex_bytes(step.get("hash"), HASH_BYTES, f"hash at level {depth}")
            sibling_sum = _units(step.get("sum"), f"sum at level {depth}")
            if i & 1:
                node = node_hash(sibling, sibling_sum, node, node_sum)
            else:
                node = node_hash(node, node_sum, sibling, sibling_sum)
            node_sum += sibling_sum
            if node_sum >= MAX_SUM:
                raise VerificationFailed("the proof's sums reach 2**128")
        i, size, depth = i >> 1, (size + 1) >> 1, depth + 1
    if next(steps, None) is not None:
        raise VerificationFailed("the proof's path is longer than the tree is high")
    if node.hex() != root_hex:
        raise VerificationFailed("the proof does not lead to the attested liabilities root")
    if node_sum != total:
        raise VerificationFailed(f"the proof adds up to {node_sum}, not the attested total {total}")
