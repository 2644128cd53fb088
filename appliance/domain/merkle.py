"""RFC 9162 (Certificate Transparency v2) Merkle tree: roots, inclusion and consistency proofs, compact ranges.

Leaf hash SHA-256(0x00 || entry), node hash SHA-256(0x01 || left || right), and SHA-256 of the empty string for
the empty tree. Every function works on already-hashed leaves and is iterative: a log of millions of entries needs
no recursion depth, and no subtree is hashed twice while building one root or one proof. LeafHashes (recursion
depth at most 63) remembers perfect subtrees across calls, so a server answers each proof in O(log n).

Blame follows appliance.errors: arguments that cannot describe any tree (negative sizes, an index or size beyond
the leaves held, a root that is not a SHA-256 hash) raise InvalidInput; a proof that does not hold raises
VerificationFailed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from appliance.domain import patterns
from appliance.errors import InvalidInput, VerificationFailed

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

# The domain-separation prefixes of RFC 9162 §2.1.1: a leaf can never be mistaken for an interior node.
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

# Tree sizes are signed 64-bit integers in the Go and Trillian tooling auditors use; refusing anything larger keeps
# every encoding we accept readable by them.
MAX_TREE_SIZE = 2**63 - 1

_MAX_COMPACT_TEXT = 4096  # 63 hashes of 44 characters plus the size fit easily; bounds the work decode() does


def leaf_hash(entry: bytes) -> bytes:
    """The RFC 9162 leaf hash SHA-256(0x00 || entry). Raises nothing."""
    return hashlib.sha256(_LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The RFC 9162 interior node hash SHA-256(0x01 || left || right). Raises nothing."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split_point(n: int) -> int:
    """RFC 9162's k for n > 1: the largest power of two strictly smaller than n."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """The Merkle tree hash MTH of already-hashed leaves (EMPTY_ROOT for none). Raises nothing.

    Works level by level, one SHA-256 per interior node.
    """
    if not leaf_hashes:
        return EMPTY_ROOT
    sha256 = hashlib.sha256  # bound once: this loop is the hot path for million-leaf logs
    level = list(leaf_hashes)
    while len(level) > 1:
        pairs = iter(level)
        # Pairing from the left builds exactly the perfect subtrees that MTH's power-of-two split produces. A node
        # left over at the end of a level is the root of the ragged right edge; MTH combines it only higher up,
        # so it is carried to the next level unchanged.
        upper = [sha256(_NODE_PREFIX + left + right).digest() for left, right in zip(pairs, pairs, strict=False)]
        if len(level) % 2:
            upper.append(level[-1])
        level = upper
    return level[0]


def _subtree_root(leaf_hashes: Sequence[bytes], start: int, end: int) -> bytes:
    """MTH(D[start:end]) for a non-empty range (memoized when the leaves are a LeafHashes)."""
    if isinstance(leaf_hashes, LeafHashes):
        return leaf_hashes.subtree_root(start, end)
    return root(leaf_hashes[start:end])


class LeafHashes(Sequence[bytes]):
    """An append-only list of leaf hashes that remembers the roots of its large perfect subtrees.

    Leaves never change once appended, so the root of a perfect subtree of them never does either. With those
    remembered, the root of any prefix and every proof cost O(log n) hashes after the first use (which costs
    O(n)), instead of O(n) each time: what a log server needs to answer proof requests for a large log.
    Subtrees of at most MEMO_MIN leaves are hashed directly (remembering them would cost more memory than time).
    Passed to inclusion_proof and consistency_proof, it is used as their leaves. Pure; no I/O.
    """

    MEMO_MIN = 64

    def __init__(self, leaves: Sequence[bytes] = ()) -> None:
        self._leaves: list[bytes] = []
        self._memo: dict[tuple[int, int], bytes] = {}
        self.extend(leaves)

    def __len__(self) -> int:
        return len(self._leaves)

    def __getitem__(self, index: int | slice) -> Any:
        return self._leaves[index]

    def extend(self, leaves: Sequence[bytes]) -> None:
        """Append leaf hashes. Raises InvalidInput for one that is not 32 bytes (nothing is appended then)."""
        for leaf in leaves:
            _check_hash(leaf, "a leaf hash")
        self._leaves.extend(leaves)

    def truncate(self, size: int) -> None:
        """Keep only the first `size` leaves (and what is remembered about them)."""
        del self._leaves[size:]
        self._memo = {key: value for key, value in self._memo.items() if key[0] + key[1] <= size}

    def subtree_root(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for 0 <= start < end <= len(self). Raises nothing for such a range."""
        count = end - start
        if count <= self.MEMO_MIN:
            return root(self._leaves[start:end])
        split = start + _split_point(count)
        if count & (count - 1):  # not perfect: it can still grow, so it is not remembered
            return node_hash(self.subtree_root(start, split), self.subtree_root(split, end))
        key = (start, count)
        known = self._memo.get(key)
        if known is None:
            known = self._memo[key] = node_hash(self.subtree_root(start, split), self.subtree_root(split, end))
        return known

    def root_of(self, size: int) -> bytes:
        """The root of the tree of the first `size` leaves. Raises InvalidInput unless 0 <= size <= len(self)."""
        _check_tree_size(size, len(self))
        return EMPTY_ROOT if size == 0 else self.subtree_root(0, size)


def _check_tree_size(size: int, available: int) -> None:
    if size < 0:
        raise InvalidInput(f"tree size {size} is negative")
    if size > available:
        raise InvalidInput(f"tree size {size} exceeds the {available} leaves held")


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise InvalidInput(f"{what} is {len(value)} bytes, not a {HASH_SIZE}-byte SHA-256 hash")


def _check_proof_hashes(proof: Sequence[bytes], kind: str) -> None:
    # The proof comes from whoever is being checked, so a malformed node is a failed verification, not bad input.
    for position, node in enumerate(proof):
        if len(node) != HASH_SIZE:
            raise VerificationFailed(f"{kind} proof node {position} is {len(node)} bytes, not a SHA-256 hash")


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int, size: int) -> list[bytes]:
    """The RFC 9162 §2.1.3.1 inclusion proof PATH(index, D[0:size]), ordered from the leaf up.

    Hashes each leaf of the tree at most once (the sibling subtrees are disjoint), so one proof costs O(size).
    Raises InvalidInput unless 0 <= index < size <= len(leaf_hashes).
    """
    _check_tree_size(size, len(leaf_hashes))
    if not 0 <= index < size:
        raise InvalidInput(f"leaf index {index} is not in a tree of size {size}")
    siblings: list[tuple[int, int]] = []  # found top-down while descending towards the leaf
    start, end = 0, size
    while end - start > 1:
        middle = start + _split_point(end - start)
        if index < middle:
            siblings.append((middle, end))
            end = middle
        else:
            siblings.append((start, middle))
            start = middle
    return [_subtree_root(leaf_hashes, a, b) for a, b in reversed(siblings)]


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Check that `leaf` is at `index` in the tree of `size` leaves with hash `root` (RFC 9162 §2.1.3.2).

    Raises InvalidInput for a negative index or size or a leaf or root that is not a SHA-256 hash, and
    VerificationFailed when the proof does not hold (including index >= size, as the RFC prescribes).
    """
    if index < 0 or size < 0:
        raise InvalidInput("the leaf index and tree size must not be negative")
    _check_hash(leaf, "the leaf hash")
    _check_hash(root, "the root hash")
    if index >= size:
        raise VerificationFailed(f"inclusion proof for leaf {index} in a tree of only {size} leaves")
    _check_proof_hashes(proof, "inclusion")
    fn, sn, computed = index, size - 1, leaf
    for node in proof:
        if sn == 0:
            raise VerificationFailed(f"inclusion proof is longer than a tree of size {size} allows")
        if fn & 1 or fn == sn:
            computed = node_hash(node, computed)
            # On the right edge of a ragged tree the path skips levels where this node has no sibling.
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            computed = node_hash(computed, node)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise VerificationFailed(f"inclusion proof is shorter than a tree of size {size} needs")
    if computed != root:
        raise VerificationFailed(f"inclusion proof for leaf {index} does not lead to the root of size {size}")


def _check_sizes(old_size: int, new_size: int) -> None:
    if old_size < 0:
        raise InvalidInput(f"old tree size {old_size} is negative")
    if old_size > new_size:
        raise InvalidInput(f"old tree size {old_size} is larger than new tree size {new_size}")


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int, new_size: int) -> list[bytes]:
    """The RFC 9162 §2.1.4.1 consistency proof PROOF(old_size, D[0:new_size]); empty for old 0 or equal sizes.

    The proof's subtrees are disjoint, so one proof costs O(new_size) hashes at most.
    Raises InvalidInput unless 0 <= old_size <= new_size <= len(leaf_hashes).
    """
    _check_sizes(old_size, new_size)
    _check_tree_size(new_size, len(leaf_hashes))
    if old_size in (0, new_size):
        return []
    # SUBPROOF(m, D[start:end], complete) unrolled; each step appends the node the recursion would emit after
    # its inner call returns, so the list comes out outermost first and is reversed at the end.
    outer_first: list[bytes] = []
    start, end, complete = 0, new_size, True
    while old_size != end:
        middle = start + _split_point(end - start)
        if old_size <= middle:
            outer_first.append(_subtree_root(leaf_hashes, middle, end))
            end = middle
        else:
            outer_first.append(_subtree_root(leaf_hashes, start, middle))
            start, complete = middle, False
    if not complete:
        # The old tree's edge is a subtree the verifier cannot rebuild from the old root alone.
        outer_first.append(_subtree_root(leaf_hashes, start, end))
    outer_first.reverse()
    return outer_first


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> None:
    """Check that the tree (new_size, new_root) extends the tree (old_size, old_root) (RFC 9162 §2.1.4.2).

    Equal sizes need an empty proof and equal roots; an empty old tree (whose root must be EMPTY_ROOT) is
    consistent with any tree through an empty proof. Raises InvalidInput for impossible sizes (negative, or
    old larger than new) or roots that are not SHA-256 hashes, VerificationFailed when the proof does not hold.
    """
    _check_sizes(old_size, new_size)
    _check_hash(old_root, "the old root hash")
    _check_hash(new_root, "the new root hash")
    if old_size == new_size:
        if proof:
            raise VerificationFailed("a consistency proof between equal tree sizes must be empty")
        if old_root != new_root:
            raise VerificationFailed(f"two different roots for the same tree size {old_size}: not consistent")
        return
    if old_size == 0:
        if proof:
            raise VerificationFailed("a consistency proof from the empty tree must be empty")
        if old_root != EMPTY_ROOT:
            raise VerificationFailed("the old root of an empty tree is not the empty tree hash: not consistent")
        return
    if not proof:
        raise VerificationFailed("the consistency proof is empty")
    _check_proof_hashes(proof, "consistency")
    _fold_consistency(old_size, new_size, old_root, new_root, proof)


def _fold_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                      proof: Sequence[bytes]) -> None:
    """Steps 2 to 7 of RFC 9162 §2.1.4.2 for 0 < old_size < new_size and a non-empty proof."""
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        # A perfect old tree is itself a node of the new tree, so the proof leaves it out.
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    old_computed = new_computed = path[0]
    for node in path[1:]:
        if sn == 0:
            raise VerificationFailed(f"consistency proof is longer than sizes {old_size} and {new_size} allow")
        if fn & 1 or fn == sn:
            old_computed = node_hash(node, old_computed)
            new_computed = node_hash(node, new_computed)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            new_computed = node_hash(new_computed, node)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise VerificationFailed(f"consistency proof is shorter than sizes {old_size} and {new_size} need")
    if old_computed != old_root:
        raise VerificationFailed(f"consistency proof does not lead to the old root of size {old_size}")
    if new_computed != new_root:
        raise VerificationFailed(f"consistency proof does not lead to the new root of size {new_size}")


def _decode_hash(text: str) -> bytes:
    """A canonical standard-base64 SHA-256 hash, or InvalidInput."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{text!r} is not standard base64") from exc
    # Re-encoding rejects the non-canonical spellings b64decode tolerates, so each range has exactly one text.
    if len(raw) != HASH_SIZE or base64.b64encode(raw).decode("ascii") != text:
        raise InvalidInput(f"{text!r} is not the canonical base64 of a {HASH_SIZE}-byte hash")
    return raw


@dataclass(frozen=True)
class CompactRange:
    """The right edge of a tree of `size` leaves: the roots of its perfect subtrees, largest first.

    A tree of size n splits into one perfect subtree per set bit of n, so `hashes` has popcount(size) entries.
    That is all an append-only log must keep to append in O(log n) and know its root without the leaves.
    Construction raises InvalidInput if the hashes do not fit the size.
    """

    size: int
    hashes: tuple[bytes, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "hashes", tuple(self.hashes))  # a list would make the frozen value unhashable
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 0 <= self.size <= MAX_TREE_SIZE:
            raise InvalidInput(f"compact range size {self.size} is out of range")
        if len(self.hashes) != self.size.bit_count():
            raise InvalidInput(f"a compact range of size {self.size} has {self.size.bit_count()} hashes, "
                               f"not {len(self.hashes)}")
        for node in self.hashes:
            _check_hash(node, "a compact range hash")

    @staticmethod
    def empty() -> CompactRange:
        """The compact range of the empty tree. Raises nothing."""
        return CompactRange(0, ())

    def append(self, leaf: bytes) -> CompactRange:
        """The range after appending one leaf hash, in O(log size). Raises InvalidInput if it is not 32 bytes."""
        _check_hash(leaf, "the appended leaf hash")
        if self.size == MAX_TREE_SIZE:
            raise InvalidInput("the tree is full")
        hashes = list(self.hashes)
        node, size = leaf, self.size
        # Like a binary counter's carry: each trailing 1 bit of the size is a perfect subtree as large as the one
        # being pushed, so the two merge into one twice as large.
        while size & 1:
            node = node_hash(hashes.pop(), node)
            size >>= 1
        hashes.append(node)
        return CompactRange(self.size + 1, tuple(hashes))

    def root(self) -> bytes:
        """The tree's root: the subtree roots folded right to left (EMPTY_ROOT when empty). Raises nothing."""
        if not self.hashes:
            return EMPTY_ROOT
        node = self.hashes[-1]
        for left in reversed(self.hashes[:-1]):
            node = node_hash(left, node)
        return node

    def encode(self) -> str:
        """Text form "size:base64,base64,..." ("0:" when empty), safe in JSON and SQL text. Raises nothing."""
        return f"{self.size}:" + ",".join(base64.b64encode(node).decode("ascii") for node in self.hashes)

    @staticmethod
    def decode(text: str) -> CompactRange:
        """Parse the text form of encode(), strictly.

        Raises InvalidInput unless the size is a canonical decimal and the hashes are exactly popcount(size)
        canonical base64 SHA-256 hashes.
        """
        if len(text) > _MAX_COMPACT_TEXT:
            raise InvalidInput("encoded compact range is too long")
        size_text, colon, hashes_text = text.partition(":")
        if not colon or not patterns.DECIMAL.fullmatch(size_text):
            raise InvalidInput(f"{text[:40]!r} is not an encoded compact range (size:base64,...)")
        hashes = tuple(_decode_hash(part) for part in hashes_text.split(",")) if hashes_text else ()
        return CompactRange(int(size_text), hashes)


def first_divergence(old: Sequence[bytes], new: Sequence[bytes]) -> int | None:
    """Where `new` stops extending `old` unchanged. Raises nothing.

    The index of the first differing leaf hash within the common length, else len(new) if `new` is shorter
    (a truncation), else None (`new` is `old` plus possibly more leaves).
    """
    for position, (before, after) in enumerate(zip(old, new, strict=False)):
        if before != after:
            return position
    if len(new) < len(old):
        return len(new)
    return None
