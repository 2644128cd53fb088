"""The audit log as a transparency log: append entries, sign checkpoints, serve entries and proofs."""

from __future__ import annotations

import base64
import json
from typing import Any

from sqlalchemy import Connection, select

from appliance import metrics
from appliance.domain import checkpoint as notes
from appliance.domain import merkle
from appliance.domain.canonical import canonical_json
from appliance.errors import InfrastructureError, InvalidInput, NotFound
from appliance.services.context import Appliance, rfc3339
from appliance.store import audit_repo
from appliance.store.tables import policy_bundles

MAX_PAGE = 1000


class AuditLogInconsistent(InfrastructureError):
    """The stored entries and the stored head disagree (rows lost or rewritten): a server fault, not the client's."""

    slug = "audit-log-inconsistent"
    title = "The stored audit log does not match its head"


class AuditLog:
    def __init__(self, app: Appliance) -> None:
        self.app = app

    # -- writing --------------------------------------------------------------------------------------------

    def record(self, conn: Connection, *, actor: str, action: str, subject: str | None,
               details: dict[str, Any], policy_hash: str | None) -> int:
        """Append one entry inside the caller's transaction; returns its index.

        policy_hash None means "whatever policy is active": the active bundle's hash is recorded (null only
        before `init` pinned the first bundle), so every entry says which policy was in force."""
        head = audit_repo.lock_head(conn)  # first: under the lock, the active policy read next is current
        if policy_hash is None:
            policy_hash = conn.execute(select(policy_bundles.c.hash)
                                       .where(policy_bundles.c.status == "active")).scalar()
        now = self.app.now()
        entry = canonical_json({"index": head.size, "time": rfc3339(now), "actor": actor, "action": action,
                                "subject": subject, "details": details, "policy": policy_hash})
        audit_repo.append(conn, action, entry, now, head)
        return head.size

    def record_standalone(self, *, actor: str, action: str, subject: str | None, details: dict[str, Any],
                          policy_hash: str | None) -> int:
        """Append one entry in its own durable transaction."""
        return self.app.db.write(lambda conn: self.record(conn, actor=actor, action=action, subject=subject,
                                                          details=details, policy_hash=policy_hash), "audit")

    def ensure_head(self) -> None:
        self.app.db.write(audit_repo.ensure_head, "audit")

    # -- checkpoints ----------------------------------------------------------------------------------------

    def verifier(self) -> notes.NoteVerifier:
        return notes.parse_verifier_key(self.verifier_key())

    def verifier_key(self) -> str:
        return notes.verifier_key(self.app.settings.audit_origin, self.app.audit_signer.point)

    def checkpoint(self) -> str:
        """Sign a checkpoint of the current head unless the latest one already covers it; returns the note."""
        with self.app.db.read() as conn:
            head = audit_repo.head(conn)
            latest = audit_repo.latest_checkpoint(conn)
        if latest is not None and latest.size == head.size:
            return latest.note
        cp = notes.Checkpoint(self.app.settings.audit_origin, head.size, head.root)
        note = notes.sign_checkpoint(cp, self.app.settings.audit_origin, self.app.audit_signer.point,
                                     self._sign)
        self.app.db.write(lambda conn: audit_repo.save_checkpoint(conn, head.size, head.root, note,
                                                                  self.app.now()), "checkpoint")
        return note

    def _sign(self, message: bytes) -> bytes:
        try:
            signature = self.app.audit_signer.sign(message)
        except Exception:
            metrics.SIGNATURES.labels("audit", "error").inc()
            raise
        metrics.SIGNATURES.labels("audit", "ok").inc()
        return signature

    def latest_note(self) -> str:
        with self.app.db.read() as conn:
            latest = audit_repo.latest_checkpoint(conn)
        return latest.note if latest is not None else self.checkpoint()

    # -- reading --------------------------------------------------------------------------------------------

    def head(self) -> audit_repo.TreeHead:
        with self.app.db.read() as conn:
            return audit_repo.head(conn)

    def entries(self, start: int, end: int | None, canonical: bool = False) -> list[Any]:
        """Entry objects, or (canonical=True) the exact canonical JSON text of each, as hashed."""
        size = self.head().size
        end = min(size, start + MAX_PAGE) if end is None else end
        if start < 0 or end < start or end > size:
            raise InvalidInput(f"need 0 <= start <= end <= {size} (the tree size)")
        if end - start > MAX_PAGE:
            raise InvalidInput(f"at most {MAX_PAGE} entries per page")
        with self.app.db.read() as conn:
            texts = audit_repo.entries(conn, start, end)
        return texts if canonical else [json.loads(e) for e in texts]

    def _tree(self, size: int) -> merkle.LeafHashes:
        """The process's copy of the log's leaf hashes, brought up to the stored head (the caller holds
        audit_tree_lock). Only new leaves are read; remembered subtrees make each proof O(log n) after the
        first. If the stored leaves no longer give the stored root (rows rewritten), it starts over from them."""
        tree = self.app.audit_tree
        with self.app.db.read() as conn:
            head = audit_repo.head(conn)
            if size > head.size:
                raise NotFound(f"the log has {head.size} entries, not {size}")
            if len(tree) > head.size:
                tree.truncate(0)
            tree.extend(audit_repo.leaf_hashes(conn, head.size, start=len(tree)))
            if len(tree) != head.size or tree.root_of(head.size) != bytes(head.root):
                tree.truncate(0)
                tree.extend(audit_repo.leaf_hashes(conn, head.size))
                if len(tree) != head.size or tree.root_of(head.size) != bytes(head.root):
                    tree.truncate(0)
                    raise AuditLogInconsistent("the stored audit entries do not give the stored tree head: "
                                               "no proof is served from them (run `appliance audit verify`)")
        return tree

    def inclusion_proof(self, index: int, size: int) -> dict[str, Any]:
        if not 0 <= index < size:
            raise InvalidInput("need 0 <= index < size")
        with self.app.audit_tree_lock:
            tree = self._tree(size)
            proof = merkle.inclusion_proof(tree, index, size)
            return {"index": index, "size": size, "leaf_hash": _b64(tree[index]),
                    "root": _b64(tree.root_of(size)), "proof": [_b64(h) for h in proof]}

    def consistency_proof(self, old: int, new: int) -> dict[str, Any]:
        if not 0 <= old <= new:
            raise InvalidInput("need 0 <= old <= new")
        with self.app.audit_tree_lock:
            tree = self._tree(new)
            proof = merkle.consistency_proof(tree, old, new)
            return {"old": old, "new": new, "old_root": _b64(tree.root_of(old)),
                    "new_root": _b64(tree.root_of(new)), "proof": [_b64(h) for h in proof]}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
