"""Offline verification for auditors, regulators and holders. Imports the pure domain only: no HSM, no store.

Each check takes its trust material explicitly (a JWKS, a verifier key, an earlier state) and raises
`VerificationFailed` naming what does not hold.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any, Protocol

from appliance.domain import attestation, jose, merkle
from appliance.domain import checkpoint as notes
from appliance.domain.canonical import canonical_json, parse_json_strict
from appliance.domain.liabilities import verify_proof
from appliance.errors import InvalidInput, Problem, VerificationFailed

AUDIT_PAGE = 1000


class LogSource(Protocol):
    """Where an auditor reads the log from (the HTTP client, or anything serving the same data)."""

    def verifier_key(self) -> str: ...

    def checkpoint(self) -> str: ...

    def audit_entries(self, start: int, end: int) -> list[Any]:
        """Entry objects, or the exact canonical JSON text of each entry (faster: hashed as served)."""

    def consistency(self, old: int, new: int) -> dict[str, Any]: ...

    def jwks(self) -> dict[str, Any]:
        """The published keys (/.well-known/jwks.json)."""


def check_against_jwks(verifier_key: str, jwks: dict[str, Any]) -> None:
    """The signed-note verifier key carries the Ed25519 audit key that the JWKS publishes (purpose "audit");
    VerificationFailed otherwise. Against a JWKS obtained independently (the one a regulator was given) this
    pins the audit key; against the service's own JWKS it is only a consistency check."""
    note_key = notes.parse_verifier_key(verifier_key).public_key
    published = [k for k in jwks.get("keys", []) if isinstance(k, dict) and k.get("kty") == "OKP"
                 and k.get("crv") == "Ed25519" and k.get("purpose", "audit") == "audit"]
    for key in published:
        x = key.get("x")
        if isinstance(x, str) and _b64url(x) == note_key:
            return
    raise VerificationFailed("the audit verifier key is not the Ed25519 audit key published in the JWKS")


def _b64url(text: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        return None


def check_state(state: Any) -> dict[str, Any]:
    """An audit state file's content (as verify_log writes it), checked member by member; the empty state is
    {}. InvalidInput names what is wrong, so a damaged file never surfaces as a traceback."""
    if state == {}:
        return {}
    problems: list[Problem] = []
    if not isinstance(state, dict):
        raise InvalidInput("not an audit state file", [Problem("state", "must be a JSON object")])
    for member in ("verifier_key", "origin"):
        if not isinstance(state.get(member), str):
            problems.append(Problem(f"state.{member}", "must be a string"))
    size = state.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        problems.append(Problem("state.size", "must be a non-negative integer"))
    try:
        if len(base64.b64decode(state.get("root", ""), validate=True)) != 32:
            problems.append(Problem("state.root", "must be the base64 of 32 bytes"))
        leaves = base64.b64decode(state.get("leaves", ""), validate=True)
        if "leaves" in state and isinstance(size, int) and len(leaves) != 32 * size:  # optional: checkpoint only
            problems.append(Problem("state.leaves", f"must hold {size} leaf hashes of 32 bytes"))
    except (ValueError, TypeError):
        problems.append(Problem("state.root/leaves", "must be base64"))
    if not problems and isinstance(state.get("verifier_key"), str):
        try:
            notes.parse_verifier_key(state["verifier_key"])
        except InvalidInput as exc:
            problems.append(Problem("state.verifier_key", exc.detail))
    if problems:
        raise InvalidInput("the audit state file is damaged", problems)
    return state


def verify_log(source: LogSource, state: dict[str, Any], key: str | None = None,
               jwks: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    """Check the log against its signed checkpoint and an earlier state; returns (new state, remarks).

    The state holds the last verified checkpoint and the leaf hashes under it, so a rewrite, deletion,
    reordering or truncation of seen entries is reported with the first index that differs; a log replaced
    by a different one is also caught by the RFC 9162 consistency proof.
    """
    remarks: list[str] = []
    state = check_state(state)
    pinned = key or state.get("verifier_key")
    if pinned is None:
        pinned = source.verifier_key()
        check_against_jwks(pinned, jwks if jwks is not None else source.jwks())
        vouched = "the JWKS given" if jwks is not None else "the service's own JWKS"
        remarks.append(f"trusting the service's verifier key on first use (it matches {vouched}): {pinned}")
    cp = notes.open_checkpoint(source.checkpoint(), [notes.parse_verifier_key(pinned)])
    leaves: list[bytes] = []
    leaf = merkle.leaf_hash
    misplaced: int | None = None
    for start in range(0, cp.size, AUDIT_PAGE):
        for entry in source.audit_entries(start, min(cp.size, start + AUDIT_PAGE)):
            if isinstance(entry, str):
                leaves.append(leaf(entry.encode("utf-8")))
                continue
            if entry.get("index") != len(leaves) and misplaced is None:
                misplaced = len(leaves)
            leaves.append(leaf(canonical_json(entry)))
    packed = base64.b64decode(state.get("leaves", ""))
    old_leaves = [packed[i:i + 32] for i in range(0, len(packed), 32)]
    divergence = merkle.first_divergence(old_leaves, leaves)
    if divergence is not None:
        raise VerificationFailed(f"the log diverges from the last verified checkpoint at entry {divergence}")
    if misplaced is not None:
        raise VerificationFailed(f"entry {misplaced} is missing or out of order")
    if len(leaves) != cp.size:
        raise VerificationFailed(f"the service returned {len(leaves)} entries for a checkpoint of {cp.size}")
    if merkle.root(leaves) != cp.root:
        raise VerificationFailed("the entries do not hash to the signed checkpoint's root")
    old_size = int(state.get("size", 0))
    if old_size:
        if cp.size < old_size:
            raise VerificationFailed(f"the log shrank from {old_size} to {cp.size} entries")
        proof = source.consistency(old_size, cp.size)
        merkle.verify_consistency(old_size, cp.size, base64.b64decode(state["root"]), cp.root,
                                  [base64.b64decode(h) for h in proof["proof"]])
        remarks.append(f"consistent with the checkpoint of size {old_size}")
    new_state = {"verifier_key": pinned, "origin": cp.origin, "size": cp.size,
                 "root": base64.b64encode(cp.root).decode(), "leaves": base64.b64encode(b"".join(leaves)).decode()}
    return new_state, remarks


def leaves_of(entries: Sequence[dict[str, Any]]) -> list[bytes]:
    return [merkle.leaf_hash(canonical_json(e)) for e in entries]


# -- reserve attestations -----------------------------------------------------------------------------------------

ATTESTATION_TYP = "reserve-attestation+jws"


def verify_attestation(jws: str, jwks: dict[str, Any], prev: str | None = None) -> dict[str, Any]:
    """Signature (ES256 by a key of the JWKS, kid = thumbprint, typ), recomputed sums and coverage, and the
    link to `prev` when given. Returns the payload; raises VerificationFailed listing every failure."""
    token = jws.strip()
    try:
        parsed = jose.verify_compact(token, jwks, algs={"ES256"}, typ=ATTESTATION_TYP, location="attestation")
        payload = parse_json_strict(parsed.payload, "attestation.payload")
    except InvalidInput as exc:  # malformed: not an attestation at all, which is a failed verification too
        raise VerificationFailed(f"not a valid attestation JWS: {exc}") from exc
    if not isinstance(payload, dict):
        raise VerificationFailed("the attestation payload is not a JSON object")
    failures = list(attestation.check_payload(payload))
    if prev is not None:
        prev_token = prev.strip()
        prev_payload = verify_attestation(prev_token, jwks)
        failures += attestation.check_link(prev_token, prev_payload, payload)
    elif payload.get("seq") == 1 and payload.get("prev") is not None:
        failures.append("seq 1 must have prev null")
    if failures:
        raise VerificationFailed("the attestation does not hold", [_problem(f) for f in failures])
    return payload


def verify_chain(tokens: Sequence[str], jwks: dict[str, Any], names: Sequence[str] | None = None
                 ) -> list[dict[str, Any]]:
    """Every attestation verifies and together they form one chain from seq 1: no gap, every prev right,
    as_of increasing. Returns the payloads in seq order. `names` (e.g. file names) label the failures."""
    failures: list[str] = []
    items: list[tuple[str, dict[str, Any]]] = []
    for i, token in enumerate(tokens):
        try:
            items.append((token.strip(), verify_attestation(token, jwks)))
        except VerificationFailed as exc:
            failures.append(f"{names[i] if names else f'item {i}'}: {exc}")
    failures += attestation.check_chain(items)
    if failures:
        raise VerificationFailed("the attestation chain does not hold", [_problem(f) for f in failures])
    return [p for _, p in sorted(items, key=lambda item: int(item[1]["seq"]))]


def verify_liability(proof: dict[str, Any], attestation_jws: str, jwks: dict[str, Any]) -> dict[str, Any]:
    """A holder's balance is included in the liabilities root of a verified attestation."""
    payload = verify_attestation(attestation_jws, jwks)
    liabilities = payload.get("liabilities")
    if not isinstance(liabilities, dict):
        raise VerificationFailed("this attestation commits to no liabilities")
    verify_proof(proof, liabilities["root"], int(liabilities["total"]), int(liabilities["leaves"]))
    return payload


def jwks_pem(jwks: dict[str, Any]) -> str:
    """Each public key of a JWKS as PEM SubjectPublicKeyInfo, labelled with its purpose and kid, for openssl.

    Raises InvalidInput when the JWKS is not an object with a list of valid public JWKs."""
    from cryptography.hazmat.primitives import serialization

    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list):
        raise InvalidInput("a JWKS is an object with a list `keys`")
    blocks = []
    for i, jwk in enumerate(keys):
        public = jose.public_key_from_jwk(jwk, f"keys[{i}]")
        pem = public.public_bytes(serialization.Encoding.PEM,
                                  serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")
        label = f"# {jwk.get('purpose', 'key')}; kid {jose.thumbprint(jwk, f'keys[{i}]')}"
        if "address" in jwk:
            label += f"; address {jwk['address']}"
        blocks.append(f"{label}\n{pem}")
    return "".join(blocks)


def _problem(text: str) -> Problem:
    return Problem("", text)
