"""Key ceremony and publication: create the three HSM keys, check them, export the public keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from appliance.errors import ConfigError, HsmUnavailable
from appliance.hsm import PinRejected, check_keys
from appliance.hsm.pkcs11_adapter import MISSING_KEY
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




def check_at_start(app: Appliance) -> str | None:
    """What a starting worker checks: raises (the worker must not start) when the token refuses the PIN or a key
    is unfit (extractable, not sensitive, more than signing, another curve) or one of the keys is absent; returns
    why the worker starts unready when the HSM cannot be reached or shows none of the keys for now (module
    missing, token or its files unreadable, session lost), and None when all is well. A worker that (re)starts
    while the HSM is away then serves 503 and `/readyz` false until it is back, instead of taking the whole
    server down with it."""
    try:
        check_keys(app.hsm, app.key_specs)
    except PinRejected:
        raise
    except ConfigError as exc:
        # a key present but unfit, or one key of three absent (a label that names nothing): never serve like this;
        # a token that shows none of them (its files unreadable, being restored) is waited for
        if exc.problems and not (len(exc.problems) == len(app.key_specs)
                                 and all(p.message == MISSING_KEY for p in exc.problems)):
            raise
        return exc.detail + "".join(f"; {p.location}: {p.message}" for p in exc.problems)
    except HsmUnavailable as exc:
        return exc.detail
    return None


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
