"""What the HSM token holds so that whoever writes the database cannot roll it back: the heads of the histories.

The database stores the policy history, the audit log and the attestation chain; the token stores, in one private
data object, how far each of them had come when the appliance last advanced it:

- the policy head: the activation sequence number and hash of the bundle in force;
- the checkpoint head: the size and root of the last audit tree the appliance signed a checkpoint of;
- the attestation head: the seq and SHA-256 of the last attestation signed, and the payload of one being signed
  (so that a crash between the HSM's signature and storing it never leads to a second, different attestation of
  the same seq).

Pure: the value, its encoding, and the rules by which a head may move (only forward, and only consistently).
The shell (services.token_state) reads and writes it under one cross-process lock.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, replace
from typing import Any

from appliance.domain import patterns
from appliance.domain.canonical import canonical_json, parse_json_strict
from appliance.domain.merkle import LeafHashes
from appliance.errors import InfrastructureError, InvalidInput

FORMAT = 1


class HeadsInvalid(InfrastructureError):
    """The token's state object cannot be read, or a history no longer extends the head it holds."""

    slug = "token-state-invalid"
    title = "The state held in the HSM token does not verify"


class RollbackDetected(InfrastructureError):
    """A history in the store is behind, or forks from, what the token says the appliance had done."""

    slug = "rollback-detected"
    title = "The store was rolled back or forked"


@dataclass(frozen=True)
class PolicyHead:
    seq: int
    hash: str


@dataclass(frozen=True)
class CheckpointHead:
    size: int
    root: bytes


@dataclass(frozen=True)
class AttestationHead:
    """seq 0 (hash None) before the first attestation. `pending` is the canonical payload of attestation
    seq + 1 while it is being signed: the only payload that may be signed for that seq."""

    seq: int
    hash: str | None
    pending: str | None = None


@dataclass(frozen=True)
class Heads:
    """The whole state object. `version` grows by one at every write (it tells a new object from an old one that a
    crash left beside it)."""

    version: int
    policy: PolicyHead | None
    checkpoint: CheckpointHead | None
    attestation: AttestationHead

    @staticmethod
    def empty() -> Heads:
        return Heads(0, None, None, AttestationHead(0, None))

    def to_bytes(self) -> bytes:
        cp = self.checkpoint
        return canonical_json({
            "format": FORMAT, "version": self.version,
            "policy": None if self.policy is None else {"seq": self.policy.seq, "hash": self.policy.hash},
            "checkpoint": None if cp is None else {"size": cp.size,
                                                   "root": base64.b64encode(cp.root).decode("ascii")},
            "attestation": {"seq": self.attestation.seq, "hash": self.attestation.hash,
                            "pending": self.attestation.pending},
        })

    @staticmethod
    def from_bytes(data: bytes) -> Heads:
        """The heads encoded by to_bytes; HeadsInvalid for anything else."""
        try:
            obj = parse_json_strict(data, "token state")
            if not isinstance(obj, dict) or obj.get("format") != FORMAT:
                raise ValueError("unknown format")
            policy, cp, att = obj["policy"], obj["checkpoint"], obj["attestation"]
            heads = Heads(
                version=_count(obj["version"]),
                policy=None if policy is None else PolicyHead(_count(policy["seq"], 1), _hex64(policy["hash"])),
                checkpoint=None if cp is None else CheckpointHead(_count(cp["size"]), _root(cp["root"])),
                attestation=AttestationHead(_count(att["seq"]),
                                            None if att["hash"] is None else _hex64(att["hash"]),
                                            _text_or_none(att["pending"])))
        except (InvalidInput, ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise HeadsInvalid(f"the token's state object is not readable: {exc}") from exc
        if (heads.attestation.seq == 0) != (heads.attestation.hash is None):
            raise HeadsInvalid("the token's attestation head is inconsistent")
        if heads.to_bytes() != bytes(data):
            raise HeadsInvalid("the token's state object is not in its canonical encoding")
        return heads

    def newer(self, **changes: Any) -> Heads:
        """These heads with `changes` applied and the version one higher."""
        return replace(self, version=self.version + 1, **changes)


def newest(values: list[bytes]) -> Heads | None:
    """The newest of the state objects found (several only after a crash between creating the new one and
    destroying the old); None when there is none. HeadsInvalid if one is unreadable or two share a version."""
    heads = [Heads.from_bytes(v) for v in values]
    if not heads:
        return None
    versions = [h.version for h in heads]
    if len(set(versions)) != len(versions):
        raise HeadsInvalid("two state objects in the token carry the same version")
    return max(heads, key=lambda h: h.version)


# -- the rules by which a head moves ------------------------------------------------------------------------------

def check_extends(head: CheckpointHead | None, tree: LeafHashes) -> None:
    """Raise RollbackDetected unless `tree` (the log as recomputed from the stored entries) contains the tree the
    head vouches for: at least head.size leaves whose first head.size give head.root."""
    if head is None:
        return
    if len(tree) < head.size:
        raise RollbackDetected(f"the audit log holds {len(tree)} entries, but the token vouches for {head.size}: "
                               "entries were deleted")
    if tree.root_of(head.size) != head.root:
        raise RollbackDetected(f"the first {head.size} audit entries no longer give the root the token vouches for: "
                               "the log was rewritten")


def advance_checkpoint(head: CheckpointHead | None, tree: LeafHashes) -> CheckpointHead:
    """The head for a checkpoint of the whole `tree`, after check_extends: never smaller, never another root for
    the same size (so two checkpoints of one size with different roots are never signed)."""
    check_extends(head, tree)
    return CheckpointHead(len(tree), tree.root_of(len(tree)))


def check_policy(head: PolicyHead | None, hashes: list[str]) -> None:
    """Raise RollbackDetected unless the verified activation history `hashes` (seq 1 first) reaches the head with
    the same bundle at the head's seq. A longer history is fine (activated, the token not yet told)."""
    if head is None:
        raise HeadsInvalid("the token holds no policy head: run `appliance init`")
    if len(hashes) < head.seq:
        raise RollbackDetected(f"the store's policy history ends at activation {len(hashes)}, but the token "
                               f"records activation {head.seq}: a policy change was rolled back")
    if hashes[head.seq - 1] != head.hash:
        raise RollbackDetected(f"activation {head.seq} in the store is bundle {hashes[head.seq - 1]}, but the token "
                               f"records {head.hash}: the policy history was forked")


def _count(value: object, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{value!r} is not a count")
    return value


def _hex64(value: object) -> str:
    if not isinstance(value, str) or not patterns.HEX64.fullmatch(value):
        raise ValueError(f"{value!r} is not a SHA-256 hex digest")
    return value


def _root(value: object) -> bytes:
    if not isinstance(value, str):
        raise ValueError("the checkpoint root is not base64")
    root = base64.b64decode(value, validate=True)
    if len(root) != 32:
        raise ValueError("the checkpoint root is not 32 bytes")
    return root


def _text_or_none(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError("the pending attestation is not text")
    return value
