"""Key ceremony and publication: create the three HSM keys, check them, export the public keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from appliance.hsm import check_keys
from appliance.services.context import Appliance
from appliance.signing import jwks

PURPOSE = {"mint": "mint authorization (EIP-712, secp256k1)",
           "attestation": "reserve attestation (JWS ES256, P-256)",
           "audit": "audit checkpoint (signed note, Ed25519)"}


@dataclass(frozen=True)
class KeyStatus:
    purpose: str
    label: str
    created: bool


def ensure_keys(app: Appliance) -> list[KeyStatus]:
    """Generate whichever of the three keys is missing (idempotent), then check all of them."""
    statuses = []
    for purpose, signer in zip(("mint", "attestation", "audit"), app.signers, strict=True):
        created = not app.hsm.has_key(signer.spec.label)
        if created:
            app.hsm.generate(signer.spec)
        statuses.append(KeyStatus(purpose, signer.spec.label, created))
    check_keys(app.hsm, app.key_specs)
    return statuses


def check(app: Appliance) -> None:
    """Refuse to run unless every key exists, is sensitive, non-extractable and sign-only."""
    check_keys(app.hsm, app.key_specs)


def public_jwks(app: Appliance) -> dict[str, Any]:
    """The JWKS of DESIGN.md: kids are RFC 7638 thumbprints; the mint key also names its Ethereum address."""
    published = jwks(app.signers)
    published["keys"][0]["address"] = app.mint_signer.address
    for key, purpose in zip(published["keys"], PURPOSE, strict=True):
        key["purpose"] = purpose
    return published


def public_pems(app: Appliance) -> str:
    """PEM SubjectPublicKeyInfo of each key, labelled, for openssl users (the same text as from the JWKS)."""
    from appliance.verify import jwks_pem

    return jwks_pem(public_jwks(app))
