"""The audit log as a transparency log: append entries, sign checkpoints, serve entries and proofs."""

from __future__ import annotations

import base64
import json
from typing import Any

from sqlalchemy import Connection, select

from appliance import failpoints, metrics
from appliance.domain import checkpoint as notes
from appliance.domain import heads, merkle
from appliance.domain.canonical import canonical_json
from appliance.domain.mint_rules import LogFacts
from appliance.domain.rfc3339 import utc_of_timestamp
from appliance.errors import ApplianceError, InfrastructureError, InvalidInput, NotFound
from appliance.services.context import Appliance
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
               details: dict[str, Any], policy_hash: str | None, guard: bool = True) -> int:
        """Append one entry inside the caller's transaction; returns its index.

        `guard`: refuse (RollbackDetected, so the caller's whole transaction rolls back) when the stored log is
        shorter than the checkpoint the token vouches for: no approval, request or vote is taken on a log cut
        behind the token. The appliance's own notes (start-up, failures: record_standalone) are not guarded, so
        the service still starts and reports the rollback (503, readiness) instead of dying.

        policy_hash None means "whatever policy is active": the active bundle's hash is recorded (null only
        before `init` pinned the first bundle), so every entry says which policy was in force."""
        head = audit_repo.lock_head(conn)  # first: under the lock, the active policy read next is current
        covered = self.app.token.read().checkpoint if guard else None
        if covered is not None and head.size < covered.size:  # never append to a log cut behind the token
            metrics.INTEGRITY_FAILURES.labels("audit").inc()
            raise heads.RollbackDetected(f"the audit log holds {head.size} entries, but the token vouches for "
                                         f"{covered.size}: entries were deleted")
        if policy_hash is None:
            policy_hash = conn.execute(select(policy_bundles.c.hash)
                                       .where(policy_bundles.c.status == "active")).scalar()
        now = self.app.now()
        entry = canonical_json({"index": head.size, "time": utc_of_timestamp(now), "actor": actor, "action": action,
                                "subject": subject, "details": details, "policy": policy_hash})
        audit_repo.append(conn, action, entry, now, head)
        return head.size

    def record_standalone(self, *, actor: str, action: str, subject: str | None, details: dict[str, Any],
                          policy_hash: str | None) -> int:
        """Append one entry in its own durable transaction."""
        return self.app.db.write(lambda conn: self.record(conn, actor=actor, action=action, subject=subject,
                                                          details=details, policy_hash=policy_hash, guard=False),
                                 "audit")

    def ensure_head(self) -> None:
        self.app.db.write(audit_repo.ensure_head, "audit")

    # -- checkpoints ----------------------------------------------------------------------------------------

    def verifier(self) -> notes.NoteVerifier:
        return notes.parse_verifier_key(self.verifier_key())

    def verifier_key(self) -> str:
        return notes.verifier_key(self.app.settings.audit_origin, self.app.audit_signer.point)

    def checkpoint(self, at_least: int = 0) -> str:
        """Sign a checkpoint of the whole log, as recomputed from the stored entries; returns the note.

        Under the deployment's state lock: cover() moves the token's checkpoint head to the tree first, then
        the note of that tree is signed and stored. So the HSM never signs a smaller tree, nor two roots for one
        size (a crash after the head moved signs the same tree again: Ed25519 is deterministic, so the note is
        the same).

        `at_least`: the caller needs a note covering that many entries; when the token's head already covers
        them and its note is stored (another caller signed it meanwhile), that note is returned and nothing more
        is signed: concurrent signers share checkpoints."""
        with self.app.token.exclusive() as before:
            if at_least and before.checkpoint is not None and before.checkpoint.size >= at_least:
                with self.app.db.read() as conn:
                    shared = audit_repo.checkpoint_at(conn, before.checkpoint.size)
                if shared is not None and self._vouches(shared.note, before.checkpoint.size, before.checkpoint.root):
                    return shared.note
            size, root = self.cover()
            if before.checkpoint is not None and before.checkpoint.size == size:  # nothing new: the stored note
                with self.app.db.read() as conn:
                    stored = audit_repo.checkpoint_at(conn, size)
                if stored is not None and self._vouches(stored.note, size, root):
                    return stored.note
            return self._note_of(size, root)

    def cover(self, at_least: int = 0) -> tuple[int, bytes]:
        """Move the token's checkpoint head to the whole stored log (size, root), without signing a note.

        The tree is rebuilt from the entries' text (never a stored hash or root) and checked to contain the tree
        of the last checkpoint the token vouches for (RollbackDetected otherwise: entries deleted or rewritten).
        Once the head covers an entry, a log cut back or rewritten behind it is refused everywhere; the note of
        a covered size can be signed at any later time (latest_note, the next checkpoint).

        `at_least`: when the token's head already covers that many entries (another caller moved it since), the
        head stays as it is and the log is not read again: the caller's entry is covered, and any later cut is
        caught by the next check. Concurrent signers share one advance."""
        with self.app.token.exclusive() as current:
            if at_least and current.checkpoint is not None and current.checkpoint.size >= at_least:
                return current.checkpoint.size, current.checkpoint.root
            with self.app.db.read() as conn, self.app.audit_tree_lock:
                tree = self._verified_tree(conn, current.checkpoint)
            size, root = len(tree), tree.root_of(len(tree))
            if current.checkpoint is None or size > current.checkpoint.size:
                self.app.token.write(current.newer(checkpoint=heads.CheckpointHead(size, root)))
            return size, root

    def _note_of(self, size: int, root: bytes) -> str:
        """The signed note of (size, root), signed now and stored (a stored note of that size that does not
        vouch for this root is replaced; an equal one is kept: Ed25519 notes are deterministic)."""
        cp = notes.Checkpoint(self.app.settings.audit_origin, size, root)
        failpoints.reach("checkpoint.before-hsm")
        note = notes.sign_checkpoint(cp, self.app.settings.audit_origin, self.app.audit_signer.point, self._sign)
        failpoints.reach("checkpoint.after-hsm")
        self.app.db.write(lambda conn: audit_repo.save_checkpoint(conn, size, root, note, self.app.now()),
                          "checkpoint")
        return note

    def _vouches(self, note: str, size: int, root: bytes) -> bool:
        try:
            cp = notes.open_checkpoint(note, [self.verifier()])
        except ApplianceError:
            return False
        return cp.origin == self.app.settings.audit_origin and cp.size == size and cp.root == root

    def _forget(self) -> None:
        self.app.audit_tree.truncate(0)
        self.app.audit_facts = LogFacts.empty()

    def _extend(self, conn: Connection, size: int) -> merkle.LeafHashes:
        tree = self.app.audit_tree
        if len(tree) < size:
            texts = audit_repo.entries(conn, len(tree), size)
            tree.extend([merkle.leaf_hash(text.encode("utf-8")) for text in texts])
            for text in texts:
                if '"mint.' in text:
                    self.app.audit_facts.add(json.loads(text))
        return tree

    def facts(self, conn: Connection) -> LogFacts:
        """What the verified log says about mints, read through `conn` (inside the caller's transaction: its own
        entries and every committed one), after checking the log against its head and the token's."""
        with self.app.audit_tree_lock:
            self._verified_tree(conn, self.app.token.require().checkpoint)
            facts = LogFacts(list(self.app.audit_facts.authorized), dict(self.app.audit_facts.closed))
            return facts

    def _verified_tree(self, conn: Connection, head: heads.CheckpointHead | None) -> merkle.LeafHashes:
        """The process's leaf hashes, computed from the entries' text and brought up to the stored size (the
        caller holds audit_tree_lock); checked against the stored head (AuditLogInconsistent) and against the
        checkpoint head in the token (RollbackDetected). Only entries not seen before are read."""
        stored = audit_repo.head(conn)
        if len(self.app.audit_tree) > stored.size or audit_repo.count_below(conn, stored.size) != stored.size:
            self._forget()  # rows deleted behind the copy (or an entry rolled back): rebuilt from what is left
        tree = self._extend(conn, stored.size)
        try:
            if len(tree) != stored.size or tree.root_of(stored.size) != bytes(stored.root):
                self._forget()  # the copy may hold an entry whose transaction rolled back: once more from scratch
                tree = self._extend(conn, stored.size)
                if len(tree) != stored.size or tree.root_of(stored.size) != bytes(stored.root):
                    raise AuditLogInconsistent("the stored audit entries do not give the stored tree head: "
                                               "no proof is served and no checkpoint signed (run `appliance audit "
                                               "verify`)")
            heads.check_extends(head, tree)
        except (AuditLogInconsistent, heads.RollbackDetected):
            self._forget()
            metrics.INTEGRITY_FAILURES.labels("audit").inc()
            raise
        return tree

    def _sign(self, message: bytes) -> bytes:
        try:
            signature = self.app.audit_signer.sign(message)
        except Exception:
            metrics.SIGNATURES.labels("audit", "error").inc()
            raise
        metrics.SIGNATURES.labels("audit", "ok").inc()
        return signature

    def latest_note(self) -> str:
        """The note of the checkpoint the token vouches for (signing one when there is none yet)."""
        head = self.app.token.require().checkpoint
        if head is None:
            return self.checkpoint()
        with self.app.db.read() as conn:
            stored = audit_repo.checkpoint_at(conn, head.size)
        if stored is not None and self._vouches(stored.note, head.size, head.root):
            return stored.note
        return self._note_of(head.size, head.root)

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

    def entries_about(self, subject: str, limit: int = 200) -> list[dict[str, Any]]:
        """The entries whose subject is exactly `subject` (oldest first, at most `limit`), as stored: for a
        person to read; what is verifiable is the log itself (entries, proofs, checkpoints)."""
        with self.app.db.read() as conn:
            texts = audit_repo.entries_mentioning(conn, f'"subject":{canonical_json(subject).decode()}', limit)
        found = []
        for text in texts:
            entry = json.loads(text)
            if isinstance(entry, dict) and entry.get("subject") == subject:
                found.append(entry)
        return found

    def _tree(self, size: int) -> merkle.LeafHashes:
        """The verified leaf hashes (see _verified_tree) for a proof up to `size` (the caller holds
        audit_tree_lock). Remembered subtrees make each proof O(log n) after the first."""
        with self.app.db.read() as conn:
            tree = self._verified_tree(conn, self.app.token.require().checkpoint)
        if size > len(tree):
            raise NotFound(f"the log has {len(tree)} entries, not {size}")
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
