"""A regulator verifying a chain of attestations, against bare ES256 verification of the same signatures."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.domain import attestation, jose, reserves
from appliance.domain.canonical import canonical_json
from appliance.verify import verify_chain
from bench.common import Result, rate


def run(quick: bool) -> list[Result]:
    n = 1_000 if quick else 10_000
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = jose.public_jwk(key.public_key())
    kid = jose.thumbprint(jwk)
    jwks = {"keys": [{**jwk, "kid": kid, "alg": "ES256", "use": "sig"}]}
    start = datetime(2026, 1, 1, tzinfo=UTC)
    tokens: list[str] = []
    prev = None
    for i in range(n):
        stamp = (start + timedelta(hours=i)).strftime("%Y-%m-%dT%H:%M:%SZ")
        report = reserves.parse_reserve_report({
            "as_of": stamp, "currency": "HKD", "decimals": 2,
            "holdings": [{"custodian": "C", "account": "A", "asset_class": "cash", "amount": str(10**12 + i)}]})
        supply = reserves.parse_supply_snapshot({"as_of": stamp, "decimals": 6, "chains": [
            {"chain_id": 1, "contract": "0x" + "11" * 20, "total_supply": str(10**16)}]})
        payload = attestation.build_payload(report, supply, seq=i + 1, prev_jws=prev, issued_at=start, issuer="bench",
                                            token={"symbol": "HKDS"}, policy_hash="0" * 64,
                                            audit={"size": 1, "root": "AA=="}, liabilities=None)
        prev = jose.sign_compact({"alg": "ES256", "kid": kid, "typ": "reserve-attestation+jws"},
                                 canonical_json(payload), lambda m: jose.software_sign(key, "ES256", m))
        tokens.append(prev)
    started = time.perf_counter()
    verify_chain(tokens, jwks)
    ours = time.perf_counter() - started
    public = key.public_key()
    parts = [t.split(".") for t in tokens]
    inputs = [(f"{h}.{p}".encode(), jose.raw_to_der(jose.b64url_decode(s))) for h, p, s in parts]
    started = time.perf_counter()
    for message, der in inputs:
        public.verify(der, message, ec.ECDSA(hashes.SHA256()))
    bare = time.perf_counter() - started
    return [Result(f"regulator: verify a chain of {n:,} attestations", rate(n, ours), "att/s", rate(n, bare),
                   "bare ES256 verification of the same signatures",
                   extra={"chain_s": ours, "bare_s": bare})]
