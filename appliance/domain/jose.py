"""JWK (RFC 7517, 7638, 8037, 8812) and JWS compact serialization (RFC 7515) for ES256, ES256K and EdDSA.

The only JOSE code in the project. Verification is strict on purpose, because regulators verify what we sign
with other libraries and operators' approvals are verified by us:
- the algorithm must be allowed by the caller AND be the one algorithm of the key's type (no confusion);
- `none` and `crit` are refused; keys come only from the caller, never from the header (`jwk`, `jku`, `x5c`);
- base64url must be unpadded and canonical, JSON must have no duplicate keys;
- JWKs must be public, with fixed-length coordinates of a point on the curve.
ES256/ES256K signatures with a high s are accepted: JOSE (unlike Ethereum) does not require low-s.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from appliance.domain import patterns
from appliance.domain.canonical import canonical_json, parse_json_strict
from appliance.errors import InvalidInput, Problem, VerificationFailed

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

COORDINATE_SIZE = 32  # bytes, for all three curves (P-256, secp256k1 coordinates; Ed25519 public key)

# JWK crv -> (cryptography curve, JWS alg). The key type alone decides the algorithm.
_EC_CURVES: dict[str, tuple[ec.EllipticCurve, str]] = {
    "P-256": (ec.SECP256R1(), "ES256"),
    "secp256k1": (ec.SECP256K1(), "ES256K"),
}
_CRV_BY_CURVE_NAME = {"secp256r1": "P-256", "secp256k1": "secp256k1"}
ALGS = frozenset({"ES256", "ES256K", "EdDSA"})
# Members that only a private (or symmetric) JWK carries, RFC 7518 section 6.
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


def _invalid(location: str, message: str) -> InvalidInput:
    return InvalidInput(f"{location}: {message}", [Problem(location, message)])


# -- base64url ----------------------------------------------------------------------------------------------------

def b64url_encode(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 section 2) of data."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, location: str = "base64url") -> bytes:
    """Strict unpadded base64url; InvalidInput at `location` for padding, characters outside the alphabet,
    an impossible length, or non-zero trailing bits (so every byte string has exactly one accepted encoding)."""
    if not isinstance(text, str):
        raise _invalid(location, "must be a base64url string")
    if "=" in text:
        raise _invalid(location, "base64url must not be padded with '='")
    if not patterns.B64URL.fullmatch(text):
        raise _invalid(location, "contains characters outside the base64url alphabet (A-Z a-z 0-9 - _)")
    if len(text) % 4 == 1:
        raise _invalid(location, "is not valid base64url (impossible length)")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise _invalid(location, "is not valid base64url") from None
    if b64url_encode(data) != text:
        raise _invalid(location, "is not canonical base64url (non-zero trailing bits)")
    return data


# -- keys ---------------------------------------------------------------------------------------------------------

def public_jwk(key: PublicKey) -> dict[str, str]:
    """The public JWK of a cryptography P-256, secp256k1 or Ed25519 public key: only the required members
    (kty, crv, x and for EC y), coordinates as fixed 32-byte big-endian base64url. ValueError otherwise."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)}
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _CRV_BY_CURVE_NAME:
        numbers = key.public_numbers()
        return {"kty": "EC", "crv": _CRV_BY_CURVE_NAME[key.curve.name],
                "x": b64url_encode(numbers.x.to_bytes(COORDINATE_SIZE, "big")),
                "y": b64url_encode(numbers.y.to_bytes(COORDINATE_SIZE, "big"))}
    raise ValueError(f"only P-256, secp256k1 and Ed25519 public keys are supported, not {type(key).__name__}")


def _coordinate(jwk: Mapping[str, Any], member: str, location: str) -> bytes:
    value = jwk.get(member)
    if not isinstance(value, str):
        raise _invalid(f"{location}.{member}", "is missing (must be a base64url string)")
    raw = b64url_decode(value, f"{location}.{member}")
    if len(raw) != COORDINATE_SIZE:
        raise _invalid(f"{location}.{member}", f"must encode exactly {COORDINATE_SIZE} bytes, not {len(raw)}")
    return raw


def _check_optional_members(jwk: Mapping[str, Any], alg: str, location: str) -> None:
    """Optional members, when present, must not contradict the key's one use: signatures with `alg`."""
    if "alg" in jwk and jwk["alg"] != alg:
        raise _invalid(f"{location}.alg", f"a {jwk.get('crv')} key is used with {alg}, not {jwk['alg']!r}")
    if "use" in jwk and jwk["use"] != "sig":
        raise _invalid(f"{location}.use", "must be 'sig'")
    key_ops = jwk.get("key_ops")
    if "key_ops" in jwk and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise _invalid(f"{location}.key_ops", "must be a list that includes 'verify'")
    if "kid" in jwk and not isinstance(jwk["kid"], str):
        raise _invalid(f"{location}.kid", "must be a string")


def public_key_from_jwk(jwk: Mapping[str, Any], location: str = "jwk") -> PublicKey:
    """The cryptography public key of a public JWK (EC P-256, EC secp256k1 or OKP Ed25519).

    Raises InvalidInput at `location` for: not an object, private members ("d" and the like), unknown
    kty/crv, missing or wrong-length coordinates, padded or non-canonical base64url, points not on the curve,
    and optional members (alg, use, key_ops) that contradict the key.
    """
    if not isinstance(jwk, Mapping):
        raise _invalid(location, "a JWK must be a JSON object")
    private = [m for m in _PRIVATE_MEMBERS if m in jwk]
    if private:
        raise _invalid(f"{location}.{private[0]}", "a private key member: only public keys are accepted")
    alg = jwk_alg(jwk, location)
    _check_optional_members(jwk, alg, location)
    if jwk["kty"] == "OKP":
        if "y" in jwk:
            raise _invalid(f"{location}.y", "an OKP key has no y coordinate")
        try:
            return ed25519.Ed25519PublicKey.from_public_bytes(_coordinate(jwk, "x", location))
        except (ValueError, UnsupportedAlgorithm):
            raise _invalid(f"{location}.x", "is not an Ed25519 public key") from None
    x, y = _coordinate(jwk, "x", location), _coordinate(jwk, "y", location)
    try:
        # from_encoded_point checks that the point is on the curve (and that x, y are below the field prime).
        return ec.EllipticCurvePublicKey.from_encoded_point(_EC_CURVES[jwk["crv"]][0], b"\x04" + x + y)
    except (ValueError, UnsupportedAlgorithm):
        raise _invalid(location, f"(x, y) is not a point on {jwk['crv']}") from None


def jwk_alg(jwk: Mapping[str, Any], location: str = "jwk") -> str:
    """The one JWS algorithm of a JWK's key type: "ES256" (P-256), "ES256K" (secp256k1), "EdDSA" (Ed25519).

    Raises InvalidInput for any other kty/crv (RSA, P-384, X25519...).
    """
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if kty == "OKP" and crv == "Ed25519":
        return "EdDSA"
    if kty == "EC" and isinstance(crv, str) and crv in _EC_CURVES:
        return _EC_CURVES[crv][1]
    raise _invalid(location, f"unsupported key type kty={kty!r} crv={crv!r} (EC P-256, EC secp256k1 or OKP Ed25519)")


def thumbprint(jwk: Mapping[str, Any], location: str = "jwk") -> str:
    """RFC 7638 thumbprint: base64url SHA-256 of the required members (crv, kty, x and for EC y) as JSON in
    lexicographic member order without whitespace. This is the `kid` of every key the appliance uses.

    Raises InvalidInput for an unsupported key type or missing/non-string required members.
    """
    names = ("crv", "kty", "x") if jwk_alg(jwk, location) == "EdDSA" else ("crv", "kty", "x", "y")
    missing = [n for n in names if not isinstance(jwk.get(n), str)]
    if missing:
        raise _invalid(location, f"the JWK lacks required member(s) {', '.join(missing)}")
    # For string-valued members RFC 8785 output is exactly RFC 7638's: sorted names, no whitespace.
    return b64url_encode(hashlib.sha256(canonical_json({n: jwk[n] for n in names})).digest())


# -- raw signatures -----------------------------------------------------------------------------------------------

def raw_to_der(raw: bytes, size: int = COORDINATE_SIZE) -> bytes:
    """DER ECDSA-Sig-Value (what openssl and PKCS#11-less tools use) of a raw r||s of 2*size bytes.

    Raises InvalidInput if raw is not exactly 2*size bytes.
    """
    if len(raw) != 2 * size:
        raise _invalid("signature", f"a raw ECDSA signature is {2 * size} bytes r||s, not {len(raw)}")
    return encode_dss_signature(int.from_bytes(raw[:size], "big"), int.from_bytes(raw[size:], "big"))


def der_to_raw(der: bytes, size: int = COORDINATE_SIZE) -> bytes:
    """Raw r||s (each big-endian, left-padded to size bytes: the JWS form) of a DER ECDSA signature.

    Raises InvalidInput for malformed DER or an r/s that does not fit in size bytes.
    """
    try:
        r, s = decode_dss_signature(der)
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    except (ValueError, OverflowError):
        raise _invalid("signature", "is not a DER ECDSA signature of this size") from None


def verify_raw(jwk: Mapping[str, Any], alg: str, message: bytes, signature: bytes) -> None:
    """Check a raw JWS signature (r||s for ES256/ES256K, 64 bytes for EdDSA) over message with a public JWK.

    ES256/ES256K hash with SHA-256; high-s is accepted. Raises VerificationFailed with the reason (alg not the
    key's algorithm, wrong length, signature invalid); InvalidInput for a malformed JWK.
    """
    key = public_key_from_jwk(jwk)
    expected = jwk_alg(jwk)
    if alg != expected:
        raise VerificationFailed(f"algorithm {alg!r} does not match the key: a {jwk['crv']} key signs {expected}")
    if len(signature) != 2 * COORDINATE_SIZE:
        raise VerificationFailed(f"an {alg} signature is {2 * COORDINATE_SIZE} bytes, not {len(signature)}")
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
        else:
            key.verify(raw_to_der(signature), message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise VerificationFailed(f"the {alg} signature does not verify with this key") from None


def software_sign(private_key: PrivateKey, alg: str, message: bytes) -> bytes:
    """A raw JWS signature over message with a private key held in software (operators' own keys, tests).

    Raises ValueError when alg is not the algorithm of the key's type.
    """
    if isinstance(private_key, ed25519.Ed25519PrivateKey) and alg == "EdDSA":
        return private_key.sign(message)
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        crv = _CRV_BY_CURVE_NAME.get(private_key.curve.name)
        if crv is not None and _EC_CURVES[crv][1] == alg:
            return der_to_raw(private_key.sign(message, ec.ECDSA(hashes.SHA256())))
    raise ValueError(f"cannot sign {alg} with a {type(private_key).__name__}")


# -- JWS compact serialization ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Jws:
    """A parsed compact JWS: the protected header, the decoded payload, the ASCII signing input
    (BASE64URL(header) "." BASE64URL(payload)) and the raw signature."""

    header: dict[str, Any]
    payload: bytes
    signing_input: bytes
    signature: bytes


def _check_header(header: Mapping[str, Any], location: str) -> None:
    """Header rules shared by signing and parsing; InvalidInput at `location`."""
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        raise _invalid(f"{location}.alg", "the protected header needs an `alg`")
    if alg.lower() == "none":
        raise _invalid(f"{location}.alg", "unsecured JWS (alg none) is refused")
    if "crit" in header:
        # We understand no extension, so RFC 7515 section 4.1.11 says refuse; also covers b64=false (RFC 7797).
        raise _invalid(f"{location}.crit", "critical header extensions are not supported")
    for name in ("kid", "typ", "cty"):
        if name in header and not isinstance(header[name], str):
            raise _invalid(f"{location}.{name}", "must be a string")


def sign_compact(header: Mapping[str, Any], payload: bytes, sign: Callable[[bytes], bytes]) -> str:
    """BASE64URL(header) "." BASE64URL(payload) "." BASE64URL(signature), header as RFC 8785 JSON.

    `sign` receives the ASCII signing input and returns the raw JWS signature (r||s or Ed25519). Raises
    InvalidInput for a header without a usable `alg` or with `crit`.
    """
    _check_header(header, "header")
    signing_input = f"{b64url_encode(canonical_json(header))}.{b64url_encode(payload)}"
    return f"{signing_input}.{b64url_encode(sign(signing_input.encode('ascii')))}"


def parse_compact(token: str, location: str = "jws") -> Jws:
    """Split and decode a compact JWS WITHOUT verifying it (use verify_compact for that).

    Raises InvalidInput at `location` unless: a string of three base64url parts (unpadded, canonical), the
    header a JSON object (no duplicate keys, no floats) with an `alg` other than none, no `crit`, and string
    kid/typ/cty when present. The payload may be empty; the signature may not.
    """
    if not isinstance(token, str) or not token.isascii():
        raise _invalid(location, "a compact JWS is an ASCII string")
    parts = token.split(".")
    if len(parts) != 3:
        raise _invalid(location, f"a compact JWS has 3 dot-separated parts, not {len(parts)}")
    head_b64, payload_b64, signature_b64 = parts
    if not head_b64 or not signature_b64:
        raise _invalid(location, "the header and signature parts must not be empty")
    header = parse_json_strict(b64url_decode(head_b64, f"{location}.header"), f"{location}.header")
    if not isinstance(header, dict):
        raise _invalid(f"{location}.header", "the protected header must be a JSON object")
    _check_header(header, f"{location}.header")
    return Jws(header=header, payload=b64url_decode(payload_b64, f"{location}.payload"),
               signing_input=f"{head_b64}.{payload_b64}".encode("ascii"),
               signature=b64url_decode(signature_b64, f"{location}.signature"))


def _key_list(jwks: Sequence[Mapping[str, Any]] | Mapping[str, Any], location: str) -> list[Mapping[str, Any]]:
    """The candidate keys: a JWK Set {"keys": [...]}, a single JWK, or a sequence of JWKs."""
    if isinstance(jwks, Mapping):
        if "keys" not in jwks:
            return [jwks]
        keys = jwks["keys"]
        if not isinstance(keys, list):
            raise _invalid(f"{location}.keys", "a JWK Set's keys must be a list")
        return [k for k in keys if isinstance(k, Mapping)]
    if isinstance(jwks, (str, bytes)):
        raise TypeError("keys must be a JWK, a JWK Set or a sequence of JWKs")
    return [k for k in jwks if isinstance(k, Mapping)]


def _thumbprint_or_none(jwk: Mapping[str, Any]) -> str | None:
    # RFC 7517 section 5: ignore JWKs in a set whose key type we do not understand, rather than fail the set.
    try:
        return thumbprint(jwk)
    except InvalidInput:
        return None


def _select_key(keys: list[Mapping[str, Any]], kid: str | None, location: str) -> Mapping[str, Any]:
    if kid is None:
        if len(keys) != 1:
            raise VerificationFailed(f"{location}: the header has no `kid` to choose among {len(keys)} keys")
        return keys[0]
    for key in keys:
        if _thumbprint_or_none(key) == kid:
            return key
    if len(keys) == 1:
        raise VerificationFailed(f"{location}: `kid` {kid!r} is not the RFC 7638 thumbprint of the key")
    raise VerificationFailed(f"{location}: no key has the RFC 7638 thumbprint {kid!r}")


def verify_compact(token: str, jwks: Sequence[Mapping[str, Any]] | Mapping[str, Any], *, algs: Collection[str],
                   typ: str | None = None, location: str = "jws") -> Jws:
    """Parse and verify a compact JWS against caller-supplied keys; returns it parsed.

    The key is the one whose RFC 7638 thumbprint equals the header `kid`; without a `kid` only a single key is
    acceptable. The header `alg` must be in `algs` AND be the algorithm of that key's type, and `typ` must equal
    the header `typ` when given. Raises InvalidInput for a malformed token or key, VerificationFailed (with the
    reason) for a disallowed algorithm, a wrong typ or kid, or a signature that does not verify.
    """
    jws = parse_compact(token, location)
    alg = jws.header["alg"]
    if alg not in algs:
        raise VerificationFailed(f"{location}: algorithm {alg!r} is not allowed here ({', '.join(sorted(algs))})")
    if typ is not None and jws.header.get("typ") != typ:
        raise VerificationFailed(f"{location}: typ must be {typ!r}, not {jws.header.get('typ')!r}")
    key = _select_key(_key_list(jwks, location), jws.header.get("kid"), location)
    try:
        verify_raw(key, alg, jws.signing_input, jws.signature)
    except VerificationFailed as exc:
        raise VerificationFailed(f"{location}: {exc.detail}") from None
    return jws
