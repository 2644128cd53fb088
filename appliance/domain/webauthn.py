"""WebAuthn assertions as the second kind of operator signature: pure, shared by the service and a workstation.

An officer with a FIDO2 security key or passkey signs the same statement a JWS carries (for an approval: request
id, EIP-712 digest, decision, policy hash, iat, jti) by making an assertion whose WebAuthn `challenge` is
`challenge(typ, payload)`: SHA-256 of the RFC 8785 canonical JSON of {"typ": typ, "payload": payload}. The `typ`
is the JWS type of the same statement (`mint-approval+jws`), so an assertion over an approval can never count as
a request or a policy vote. The assertion travels and is stored as one canonical JSON object (`encode`), the
*envelope*: typ, payload, credential id, authenticator data, client data and signature. Whoever reads it back
recomputes the challenge from the payload it carries and verifies the signature under the credential enrolled in
the policy bundle, for the bundle's RP ID and origins, with user verification: a stored row with one byte changed
no longer counts.

What the assertion proves is checked by py_webauthn (`webauthn` on PyPI), imported only when an envelope is
verified so that an officer's workstation stays light. Not checked here: freshness (iat), replay (jti) and the
live sign count, which need the service's clock and store (`services/auth.py`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from appliance.domain.canonical import canonical_json, parse_json_strict
from appliance.domain.jose import b64url_decode, b64url_encode
from appliance.errors import InvalidInput, Problem, Unauthenticated

ENVELOPE_MEMBERS = frozenset({"typ", "payload", "credential_id", "authenticator_data", "client_data_json",
                              "signature"})
MAX_CREDENTIAL_ID_BYTES = 1023  # WebAuthn: a credential id is at most 1023 bytes
TRANSPORTS = frozenset({"usb", "nfc", "ble", "internal", "hybrid", "smart-card", "cable"})
_RP_ID = re.compile(r"(?=.{1,253}\Z)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*",
                    re.ASCII)
_ORIGIN = re.compile(r"(https://[a-z0-9.-]+(?::[0-9]{1,5})?|http://localhost(?::[0-9]{1,5})?)", re.ASCII)
_AAGUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.ASCII)
ZERO_AAGUID = "00000000-0000-0000-0000-000000000000"


@dataclass(frozen=True)
class RelyingParty:
    """Where assertions must come from: the RP ID (a registrable domain, `localhost` in development) whose hash
    the authenticator data carries, and the exact origins the browser may report."""

    rp_id: str
    origins: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"rp_id": self.rp_id, "origins": list(self.origins)}


@dataclass(frozen=True)
class Credential:
    """An enrolled security key: credential id and COSE public key (both base64url), the sign count seen at
    registration, the authenticator model (AAGUID), its transports and the officer's label for it."""

    id: str
    public_key: str
    sign_count: int = 0
    aaguid: str = ZERO_AAGUID
    transports: tuple[str, ...] = ()
    label: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "public_key": self.public_key, "sign_count": self.sign_count, "aaguid": self.aaguid,
                "transports": list(self.transports), "label": self.label}


@dataclass(frozen=True)
class Envelope:
    """A WebAuthn assertion over (typ, payload), as sent and stored."""

    typ: str
    payload: dict[str, Any]
    credential_id: str
    authenticator_data: bytes
    client_data_json: bytes
    signature: bytes

    @property
    def sign_count(self) -> int:
        """The counter in the authenticator data (bytes 33..36, big endian); 0 if the data is too short."""
        return int.from_bytes(self.authenticator_data[33:37], "big") if len(self.authenticator_data) >= 37 else 0


def challenge(typ: str, payload: Mapping[str, Any]) -> bytes:
    """The WebAuthn challenge that commits to a statement: SHA-256 of JCS({"typ": typ, "payload": payload})."""
    return hashlib.sha256(canonical_json({"typ": typ, "payload": dict(payload)})).digest()


def is_envelope(token: object) -> bool:
    """Whether a stored or submitted token is a WebAuthn envelope (a JSON object) rather than a compact JWS."""
    return isinstance(token, str) and token.startswith("{")


def encode(envelope: Envelope) -> str:
    """The envelope as canonical JSON text (what is stored, and what `parse` reads back)."""
    return canonical_json({"typ": envelope.typ, "payload": envelope.payload,
                           "credential_id": envelope.credential_id,
                           "authenticator_data": b64url_encode(envelope.authenticator_data),
                           "client_data_json": b64url_encode(envelope.client_data_json),
                           "signature": b64url_encode(envelope.signature)}).decode()


def parse(data: object, location: str = "webauthn") -> Envelope:
    """An envelope from its JSON text or object; InvalidInput naming every bad member."""
    if isinstance(data, str):
        data = parse_json_strict(data, location)
    if not isinstance(data, Mapping):
        raise InvalidInput(f"`{location}` must be a WebAuthn assertion object")
    problems = [Problem(f"{location}.{k}", "unknown member") for k in sorted(set(data) - ENVELOPE_MEMBERS)]
    problems += [Problem(f"{location}.{k}", "required") for k in sorted(ENVELOPE_MEMBERS - set(data))]
    if problems:
        raise InvalidInput("the WebAuthn assertion is not valid", problems)
    typ, payload = data["typ"], data["payload"]
    if not isinstance(typ, str) or not typ:
        problems.append(Problem(f"{location}.typ", "must be the statement's type, e.g. mint-approval+jws"))
    if not isinstance(payload, dict):
        problems.append(Problem(f"{location}.payload", "must be a JSON object"))
    raw: dict[str, bytes] = {}
    for member in ("credential_id", "authenticator_data", "client_data_json", "signature"):
        value = data[member]
        try:
            if not isinstance(value, str) or not value:
                raise InvalidInput("not a string")
            raw[member] = b64url_decode(value, f"{location}.{member}")
        except InvalidInput:
            problems.append(Problem(f"{location}.{member}", "must be unpadded base64url"))
    if "credential_id" in raw and len(raw["credential_id"]) > MAX_CREDENTIAL_ID_BYTES:
        problems.append(Problem(f"{location}.credential_id", f"longer than {MAX_CREDENTIAL_ID_BYTES} bytes"))
    if problems:
        raise InvalidInput("the WebAuthn assertion is not valid", problems)
    return Envelope(str(typ), dict(payload), b64url_encode(raw["credential_id"]), raw["authenticator_data"],
                    raw["client_data_json"], raw["signature"])


def verify(envelope: Envelope, credential: Credential, rp: RelyingParty, *, current_sign_count: int = 0) -> int:
    """Verify the assertion: made by `credential` for `rp` (RP ID hash, one of the origins, not cross-origin),
    user present and verified, over `challenge(envelope.typ, envelope.payload)`, with a sign count above
    `current_sign_count` whenever either is non-zero. Returns the new sign count; Unauthenticated otherwise."""
    return _verify(encode(envelope), credential, rp, current_sign_count)


@functools.lru_cache(maxsize=16384)
def _verify(text: str, credential: Credential, rp: RelyingParty, current_sign_count: int) -> int:
    """verify() of an encoded envelope. Only successes are cached (an exception is never remembered): the same
    text under the same credential and RP always verifies, while an edited row misses the cache."""
    from webauthn import verify_authentication_response  # noqa: PLC0415 - heavy, and needed only here
    from webauthn.helpers.exceptions import InvalidAuthenticationResponse  # noqa: PLC0415

    envelope = parse(text)
    if envelope.credential_id != credential.id:
        raise Unauthenticated("the assertion was made with another credential")
    try:
        client_data = json.loads(envelope.client_data_json)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Unauthenticated("the assertion's client data is not JSON") from exc
    if not isinstance(client_data, dict) or client_data.get("crossOrigin") is True or "topOrigin" in client_data:
        raise Unauthenticated("the assertion was made in a cross-origin frame")
    try:
        verified = verify_authentication_response(
            credential={"id": envelope.credential_id, "rawId": envelope.credential_id, "type": "public-key",
                        "response": {"authenticatorData": b64url_encode(envelope.authenticator_data),
                                     "clientDataJSON": b64url_encode(envelope.client_data_json),
                                     "signature": b64url_encode(envelope.signature)}},
            expected_challenge=challenge(envelope.typ, envelope.payload), expected_rp_id=rp.rp_id,
            expected_origin=list(rp.origins), credential_public_key=b64url_decode(credential.public_key),
            credential_current_sign_count=current_sign_count, require_user_verification=True)
    except InvalidAuthenticationResponse as exc:
        raise Unauthenticated(f"the WebAuthn assertion does not verify: {_reason(exc)}") from exc
    except (ValueError, TypeError, KeyError) as exc:  # a malformed COSE key or authenticator data
        raise Unauthenticated("the WebAuthn assertion does not verify: malformed") from exc
    return int(verified.new_sign_count)


def _reason(exc: Exception) -> str:
    text = str(exc)
    if "challenge" in text:
        return "its challenge is not this statement's"
    if "origin" in text:
        return "made on another origin"
    if "RP ID" in text:
        return "made for another relying party"
    if "sign count" in text:
        return "the sign count did not increase (a cloned key?)"
    if "verif" in text and "user" in text.lower():
        return "user verification (PIN or biometric) is required"
    return text


# -- parsing the policy's and operators' tables (pure; problems located like the rest of policy parsing) --------

def parse_relying_party(data: Any, where: str, add: Any) -> RelyingParty | None:
    """policy.toml's [webauthn] table: rp_id and a non-empty list of origins (https, or http://localhost)."""
    if not isinstance(data, Mapping):
        add(where, "must be a table with rp_id and origins")
        return None
    ok = True
    for key in sorted(set(data) - {"rp_id", "origins"}):
        add(f"{where}.{key}", "unknown key")
        ok = False
    rp_id, origins = data.get("rp_id"), data.get("origins")
    if not isinstance(rp_id, str) or not _RP_ID.fullmatch(rp_id) or rp_id.replace(".", "").isdigit():
        add(f"{where}.rp_id", "must be a lowercase domain name (an IP address cannot be an RP ID)")
        ok = False
    if (not isinstance(origins, list) or not origins
            or not all(isinstance(o, str) and _ORIGIN.fullmatch(o) for o in origins)):
        add(f"{where}.origins", "must be a non-empty list of origins such as https://console.example.com "
                                "(http only for localhost)")
        ok = False
    elif len(set(origins)) != len(origins):
        add(f"{where}.origins", "lists an origin twice")
        ok = False
    if not ok:
        return None
    assert isinstance(rp_id, str) and isinstance(origins, list)
    return RelyingParty(rp_id, tuple(origins))


def parse_credentials(data: Any, where: str, add: Any) -> tuple[Credential, ...] | None:
    """An operator's [[operators.webauthn]] entries; None (reported) when any is not valid."""
    if not isinstance(data, list):
        add(where, "must be an array of tables ([[operators.webauthn]])")
        return None
    found: list[Credential] = []
    ok = True
    for i, entry in enumerate(data):
        credential = _credential(entry, f"{where}[{i}]", add)
        if credential is None:
            ok = False
        else:
            found.append(credential)
    ids = [c.id for c in found]
    if len(set(ids)) != len(ids):
        add(where, "lists a credential twice")
        ok = False
    return tuple(found) if ok else None


def _credential(entry: Any, where: str, add: Any) -> Credential | None:
    if not isinstance(entry, Mapping):
        add(where, "must be a table")
        return None
    allowed = {"id", "public_key", "sign_count", "aaguid", "transports", "label"}
    bad: list[tuple[str, str]] = []
    for key in sorted(set(entry) - allowed):
        bad.append((f"{where}.{key}", "unknown key"))
    for key in ("id", "public_key"):
        if key not in entry:
            bad.append((f"{where}.{key}", "required"))
    cid, key = entry.get("id"), entry.get("public_key")
    if "id" in entry and not _canonical_b64url(cid, MAX_CREDENTIAL_ID_BYTES):
        bad.append((f"{where}.id", "must be the credential id as unpadded canonical base64url"))
    if "public_key" in entry and not _cose_key_ok(key):
        bad.append((f"{where}.public_key", "must be a COSE P-256 (ES256) or Ed25519 (EdDSA) public key "
                                                   "as unpadded canonical base64url"))
    count = entry.get("sign_count", 0)
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count < 2**32:
        bad.append((f"{where}.sign_count", "must be an integer from 0 to 2^32 - 1"))
    aaguid = entry.get("aaguid", ZERO_AAGUID)
    if not isinstance(aaguid, str) or not _AAGUID.fullmatch(aaguid):
        bad.append((f"{where}.aaguid", "must be a lowercase UUID"))
    transports = entry.get("transports", [])
    if not isinstance(transports, list) or not all(isinstance(t, str) and t in TRANSPORTS for t in transports):
        bad.append((f"{where}.transports", f"must be a list of {', '.join(sorted(TRANSPORTS))}"))
    label = entry.get("label", "")
    if not isinstance(label, str) or len(label) > 64 or not label.isprintable():
        bad.append((f"{where}.label", "must be printable text of at most 64 characters"))
    for location, message in bad:
        add(location, message)
    if bad:
        return None
    return Credential(str(cid), str(key), int(count), str(aaguid), tuple(sorted(set(transports))), str(label))


def _canonical_b64url(value: Any, max_bytes: int) -> bool:
    if not isinstance(value, str) or not value:
        return False
    try:
        raw = b64url_decode(value)
    except InvalidInput:
        return False
    return 0 < len(raw) <= max_bytes and b64url_encode(raw) == value


def _cose_key_ok(value: Any) -> bool:
    """A COSE_Key of an EC2 P-256 / ES256 or OKP Ed25519 / EdDSA public key, decodable into a key object."""
    if not _canonical_b64url(value, 1024):
        return False
    from webauthn.helpers import decode_credential_public_key, decoded_public_key_to_cryptography  # noqa: PLC0415
    from webauthn.helpers.cose import COSEAlgorithmIdentifier  # noqa: PLC0415

    try:
        decoded = decode_credential_public_key(b64url_decode(value))
        decoded_public_key_to_cryptography(decoded)
    except Exception:  # noqa: BLE001 - any failure to decode means: not a usable key
        return False
    return decoded.alg in (COSEAlgorithmIdentifier.ECDSA_SHA_256, COSEAlgorithmIdentifier.EDDSA)


# -- registration: a new security key, before the quorum enrols it ----------------------------------------------

TYP_LOGIN = "console-login"  # a sign-in: the challenge commits to the officer, a random nonce and the time


def registered(response: Mapping[str, Any], challenge_bytes: bytes, rp: RelyingParty, label: str) -> Credential:
    """The credential a browser's registration response (`navigator.credentials.create`, JSON with base64url
    members) creates: over `challenge_bytes`, for `rp`, user verified, with an ES256 or EdDSA key. The
    attestation is not required (fmt none is accepted): the quorum that enrols the key is what vouches for it.
    Unauthenticated or InvalidInput otherwise."""
    from webauthn import verify_registration_response  # noqa: PLC0415 - heavy, and needed only here
    from webauthn.helpers.cose import COSEAlgorithmIdentifier  # noqa: PLC0415
    from webauthn.helpers.exceptions import InvalidRegistrationResponse  # noqa: PLC0415

    if not isinstance(label, str) or not 0 < len(label) <= 64 or not label.isprintable():
        raise InvalidInput("the key's label must be printable text of 1 to 64 characters")
    try:
        verified = verify_registration_response(
            credential=dict(response), expected_challenge=challenge_bytes, expected_rp_id=rp.rp_id,
            expected_origin=list(rp.origins), require_user_verification=True,
            supported_pub_key_algs=[COSEAlgorithmIdentifier.ECDSA_SHA_256, COSEAlgorithmIdentifier.EDDSA])
    except InvalidRegistrationResponse as exc:
        raise Unauthenticated(f"the security key's registration does not verify: {_reason(exc)}") from exc
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise InvalidInput("the registration response is malformed") from exc
    transports = response.get("response", {}).get("transports") or []
    return Credential(id=b64url_encode(verified.credential_id),
                      public_key=b64url_encode(verified.credential_public_key), sign_count=verified.sign_count,
                      aaguid=verified.aaguid, label=label,
                      transports=tuple(sorted({t for t in transports if isinstance(t, str) and t in TRANSPORTS})))


def fingerprint(credential: Credential) -> str:
    """What an officer and the security admins compare out of band before a key is enrolled: the first 20 hex
    digits of SHA-256 of the COSE public key, in groups of four ("3f2a 9c01 ...")."""
    digest = hashlib.sha256(b64url_decode(credential.public_key)).hexdigest()[:20]
    return " ".join(digest[i:i + 4] for i in range(0, 20, 4))
