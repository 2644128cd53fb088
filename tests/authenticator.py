"""A software FIDO2 authenticator for tests: what a security key does, written from the WebAuthn spec.

It makes the assertion a browser would hand back (authenticator data, client data JSON, signature over
authenticatorData || SHA-256(clientDataJSON)) with a P-256 key, so that service and domain tests can exercise
every refusal without a browser. The browser suite uses Chromium's own virtual authenticator instead.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.domain import webauthn
from appliance.domain.jose import b64url_encode

FLAG_UP, FLAG_UV, FLAG_AT = 0x01, 0x04, 0x40


@dataclass
class SoftAuthenticator:
    rp_id: str = "localhost"
    origin: str = "http://localhost:8080"
    sign_count: int = 0
    counts: bool = True  # keys that keep no counter always report 0
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    credential_id: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    @property
    def cose_public_key(self) -> bytes:
        numbers = self.key.public_key().public_numbers()
        return cbor2.dumps({1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32, "big"), -3: numbers.y.to_bytes(32, "big")})

    def credential(self, label: str = "test key") -> dict[str, Any]:
        """operators.toml's [[operators.webauthn]] entry for this key."""
        return {"id": b64url_encode(self.credential_id), "public_key": b64url_encode(self.cose_public_key),
                "sign_count": 0, "aaguid": webauthn.ZERO_AAGUID, "transports": ["usb"], "label": label}

    def assert_challenge(self, challenge: bytes, *, rp_id: str | None = None, origin: str | None = None,
                         uv: bool = True, cross_origin: bool = False, client_type: str = "webauthn.get",
                         sign_count: int | None = None) -> dict[str, bytes]:
        """The raw assertion (authenticator_data, client_data_json, signature) over `challenge`."""
        if sign_count is None:
            if self.counts:
                self.sign_count += 1
            sign_count = self.sign_count if self.counts else 0
        flags = FLAG_UP | (FLAG_UV if uv else 0)
        auth_data = (hashlib.sha256((rp_id or self.rp_id).encode()).digest() + bytes([flags])
                     + sign_count.to_bytes(4, "big"))
        client_data = json.dumps({"type": client_type, "challenge": b64url_encode(challenge),
                                  "origin": origin or self.origin, "crossOrigin": cross_origin}).encode()
        signature = self.key.sign(auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256()))
        return {"authenticator_data": auth_data, "client_data_json": client_data, "signature": signature}

    def envelope(self, typ: str, payload: dict[str, Any], *, challenge_of: tuple[str, dict[str, Any]] | None = None,
                 **options: Any) -> dict[str, Any]:
        """The envelope an officer's browser posts: an assertion over challenge(typ, payload) (or over another
        statement's challenge, `challenge_of`, to test that it is refused)."""
        over = webauthn.challenge(*(challenge_of or (typ, payload)))
        raw = self.assert_challenge(over, **options)
        return {"typ": typ, "payload": payload, "credential_id": b64url_encode(self.credential_id),
                **{k: b64url_encode(v) for k, v in raw.items()}}

    def register(self, challenge: bytes, *, rp_id: str | None = None, origin: str | None = None,
                 uv: bool = True) -> dict[str, Any]:
        """The registration response a browser's navigator.credentials.create returns (attestation "none"),
        as the JSON the console posts."""
        auth_data = (hashlib.sha256((rp_id or self.rp_id).encode()).digest()
                     + bytes([FLAG_UP | FLAG_AT | (FLAG_UV if uv else 0)]) + self.sign_count.to_bytes(4, "big")
                     + bytes(16) + len(self.credential_id).to_bytes(2, "big") + self.credential_id
                     + self.cose_public_key)
        client_data = json.dumps({"type": "webauthn.create", "challenge": b64url_encode(challenge),
                                  "origin": origin or self.origin, "crossOrigin": False}).encode()
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        cid = b64url_encode(self.credential_id)
        return {"id": cid, "rawId": cid, "type": "public-key",
                "response": {"clientDataJSON": b64url_encode(client_data),
                             "attestationObject": b64url_encode(attestation), "transports": ["usb"]}}
