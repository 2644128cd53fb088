"""One signing interface for HSM keys and software keys, with verification after every signature.

A `Signer` produces raw JWS signatures (r||s for ECDSA, 64 bytes for Ed25519) over a message; ECDSA keys
hash with SHA-256 on the host because SoftHSM2 has no CKM_ECDSA_SHA256. The mint key also signs
pre-hashed EIP-712 digests (keccak-256), returned as Ethereum 65-byte signatures (low-s, v in {27, 28}).
Every HSM signature is verified against the published public key before it is returned.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, utils

from appliance.domain import eip712, jose
from appliance.errors import HsmUnavailable
from appliance.hsm import Curve, Hsm, KeySpec

ALG_BY_CURVE = {Curve.SECP256K1: "ES256K", Curve.P256: "ES256", Curve.ED25519: "EdDSA"}


class Signer(Protocol):
    """Signs messages with one key. `key_id` is the RFC 7638 thumbprint of `public_jwk`."""

    @property
    def alg(self) -> str: ...

    @property
    def key_id(self) -> str: ...

    def public_jwk(self) -> dict[str, str]: ...

    def sign(self, message: bytes) -> bytes: ...


def public_key_from_point(curve: Curve, point: bytes) -> Any:
    """A cryptography public key from the raw point the HSM exports."""
    if curve is Curve.ED25519:
        return ed25519.Ed25519PublicKey.from_public_bytes(point)
    named = ec.SECP256K1() if curve is Curve.SECP256K1 else ec.SECP256R1()
    return ec.EllipticCurvePublicKey.from_encoded_point(named, point)


def _prepared_verifier(key: Any, alg: str) -> Callable[[bytes, bytes], None]:
    """verify(message, raw_signature) for one parsed public key: the hot path verifies every HSM signature."""
    if alg == "EdDSA":
        return lambda message, signature: key.verify(signature, message)
    ecdsa = ec.ECDSA(hashes.SHA256())

    def verify(message: bytes, signature: bytes) -> None:
        if len(signature) != 64:
            raise ValueError("not a 64-byte r||s signature")
        key.verify(utils.encode_dss_signature(int.from_bytes(signature[:32], "big"),
                                              int.from_bytes(signature[32:], "big")), message, ecdsa)

    return verify


@dataclass
class HsmSigner:
    """A key that lives in the HSM. The public key is read once and cached for verification."""

    hsm: Hsm
    spec: KeySpec
    _point: bytes | None = field(default=None, init=False, repr=False)
    _jwk: dict[str, str] | None = field(default=None, init=False, repr=False)
    _verify: Callable[[bytes, bytes], None] | None = field(default=None, init=False, repr=False)

    @property
    def alg(self) -> str:
        return ALG_BY_CURVE[self.spec.curve]

    @property
    def point(self) -> bytes:
        if self._point is None:
            self._point = self.hsm.public_point(self.spec)
        return self._point

    def public_jwk(self) -> dict[str, str]:
        if self._jwk is None:
            self._jwk = jose.public_jwk(public_key_from_point(self.spec.curve, self.point))
        return dict(self._jwk)

    @property
    def key_id(self) -> str:
        return jose.thumbprint(self.public_jwk())

    def sign(self, message: bytes) -> bytes:
        """Raw JWS signature over `message`; raises HsmUnavailable if the HSM's output does not verify."""
        data = message if self.spec.curve is Curve.ED25519 else hashlib.sha256(message).digest()
        signature = self.hsm.sign(self.spec, data)
        if self._verify is None:
            self._verify = _prepared_verifier(public_key_from_point(self.spec.curve, self.point), self.alg)
        try:
            self._verify(message, signature)
        except Exception as exc:  # any failure here means the HSM produced garbage: never return it
            raise HsmUnavailable(f"the HSM returned a signature that does not verify ({self.spec.label})") from exc
        return signature

    def sign_eth_digest(self, digest: bytes) -> bytes:
        """65-byte Ethereum signature (low-s, v in {27, 28}) over a 32-byte digest, recovered before return."""
        if self.spec.curve is not Curve.SECP256K1 or len(digest) != 32:
            raise ValueError("Ethereum signatures need the secp256k1 key and a 32-byte digest")
        raw = self.hsm.sign(self.spec, digest)
        try:
            signature = eip712.eth_signature(digest, raw, self.point)
            recovered = eip712.recover_address(digest, signature)
        except Exception as exc:
            raise HsmUnavailable(f"the HSM returned a signature that does not verify ({self.spec.label})") from exc
        if recovered != self.address:
            raise HsmUnavailable(f"the HSM signature recovers to {recovered}, not {self.address}")
        return signature

    @property
    def address(self) -> str:
        return eip712.address_from_public_key(self.point)


def sign_jws(signer: Signer, payload: bytes, typ: str, extra: dict[str, Any] | None = None) -> str:
    """Compact JWS with `alg`, `kid` (thumbprint) and `typ` in the protected header."""
    header: dict[str, Any] = {"alg": signer.alg, "kid": signer.key_id, "typ": typ, **(extra or {})}
    return jose.sign_compact(header, payload, signer.sign)


def jwks(signers: list[Any]) -> dict[str, list[dict[str, str]]]:
    """The published key set: each JWK with `kid`, `alg` and `use`."""
    keys = []
    for signer in signers:
        jwk = signer.public_jwk()
        keys.append({**jwk, "kid": jose.thumbprint(jwk), "alg": signer.alg, "use": "sig"})
    return {"keys": keys}
