"""JWK, RFC 7638 thumbprints and compact JWS, checked in both directions against jwcrypto."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st
from jwcrypto import jwk as jw_jwk
from jwcrypto import jws as jw_jws

from appliance.domain import jose
from appliance.domain.jose import (
    b64url_decode,
    b64url_encode,
    der_to_raw,
    jwk_alg,
    parse_compact,
    public_jwk,
    public_key_from_jwk,
    raw_to_der,
    sign_compact,
    software_sign,
    thumbprint,
    verify_compact,
    verify_raw,
)
from appliance.errors import InvalidInput, VerificationFailed

P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

# Fixed scalars/seeds: deterministic test keys, never used anywhere else.
KEYS: dict[str, Any] = {
    "ES256": ec.derive_private_key(0x5EED_0001, ec.SECP256R1()),
    "ES256K": ec.derive_private_key(0x5EED_0002, ec.SECP256K1()),
    "EdDSA": ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32))),
}
ALGS = sorted(KEYS)
TYP = "reserve-attestation+jws"


def jwk_of(alg: str) -> dict[str, str]:
    return public_jwk(KEYS[alg].public_key())


def signer(alg: str) -> Callable[[bytes], bytes]:
    return lambda message: software_sign(KEYS[alg], alg, message)


def token_for(alg: str, payload: bytes = b'{"seq":1}', **extra: Any) -> str:
    header = {"alg": alg, "kid": thumbprint(jwk_of(alg)), "typ": TYP, **extra}
    return sign_compact(header, payload, signer(alg))


def replace_part(token: str, index: int, data: bytes) -> str:
    parts = token.split(".")
    parts[index] = b64url_encode(data)
    return ".".join(parts)


# -- base64url ----------------------------------------------------------------------------------------------------


@given(st.binary(max_size=100))
@settings(max_examples=200, deadline=None)
def test_b64url_round_trip(data: bytes) -> None:
    text = b64url_encode(data)
    assert "=" not in text and "+" not in text and "/" not in text
    assert b64url_decode(text, "x") == data


@pytest.mark.parametrize(("text", "message"), [
    ("AA==", "padded"),
    ("AAA=", "padded"),
    ("a+b/", "alphabet"),
    ("AA A", "alphabet"),
    ("AA\n", "alphabet"),
    ("\uff21\uff21", "alphabet"),
    ("A", "length"),
    ("AAAAA", "length"),
    ("AB", "canonical"),     # 0x00 with non-zero trailing bits: "AA" is the only encoding
    ("AAB", "canonical"),
])
def test_b64url_decode_is_strict(text: str, message: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        b64url_decode(text, "jws.payload")
    assert exc.value.problems[0].location == "jws.payload"
    assert message in exc.value.problems[0].message


# -- JWKs and thumbprints -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGS)
def test_public_jwk_has_only_required_members_and_round_trips(alg: str) -> None:
    jwk = jwk_of(alg)
    expected_members = {"kty", "crv", "x"} if alg == "EdDSA" else {"kty", "crv", "x", "y"}
    assert set(jwk) == expected_members
    assert all(len(b64url_decode(jwk[m], m)) == 32 for m in expected_members - {"kty", "crv"})
    assert jwk_alg(jwk) == alg
    assert public_jwk(public_key_from_jwk(jwk)) == jwk


@pytest.mark.parametrize("alg", ALGS)
def test_thumbprint_matches_jwcrypto(alg: str) -> None:
    jwk = jwk_of(alg)
    assert thumbprint(jwk) == jw_jwk.JWK(**jwk).thumbprint()
    # optional members are not part of the thumbprint
    assert thumbprint({**jwk, "kid": "x", "alg": alg, "use": "sig"}) == thumbprint(jwk)


def test_coordinates_keep_leading_zeros() -> None:
    # Find a P-256 key whose x has a leading zero byte: the JWK must still carry 32 bytes (RFC 7518 6.2.1.2).
    key = next(k for k in (ec.derive_private_key(i, ec.SECP256R1()).public_key() for i in range(1, 2000))
               if k.public_numbers().x < 2**248)
    jwk = public_jwk(key)
    assert len(b64url_decode(jwk["x"], "x")) == 32
    assert thumbprint(jwk) == jw_jwk.JWK(**jwk).thumbprint()


def _flip_y(jwk: dict[str, str]) -> str:
    y = bytearray(b64url_decode(jwk["y"], "y"))
    y[-1] ^= 1
    return b64url_encode(bytes(y))


@pytest.mark.parametrize(("change", "location", "message"), [
    (lambda j: {**j, "d": j["x"]}, "jwk.d", "private"),
    (lambda j: {**j, "x": b64url_encode(b64url_decode(j["x"], "x")[1:])}, "jwk.x", "32 bytes"),
    (lambda j: {**j, "x": b64url_encode(b"\x00" + b64url_decode(j["x"], "x"))}, "jwk.x", "32 bytes"),
    (lambda j: {**j, "x": j["x"] + "="}, "jwk.x", "padded"),
    (lambda j: {k: v for k, v in j.items() if k != "y"}, "jwk.y", "missing"),
    (lambda j: {**j, "y": _flip_y(j)}, "jwk", "not a point"),
    (lambda j: {**j, "crv": "P-384"}, "jwk", "unsupported"),
    (lambda j: {**j, "kty": "RSA"}, "jwk", "unsupported"),
    (lambda j: {**j, "alg": "EdDSA"}, "jwk.alg", "ES256"),
    (lambda j: {**j, "use": "enc"}, "jwk.use", "sig"),
    (lambda j: {**j, "key_ops": ["encrypt"]}, "jwk.key_ops", "verify"),
])
def test_public_key_from_jwk_refusals(change: Callable[[dict[str, str]], dict[str, str]], location: str,
                                      message: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        public_key_from_jwk(change(jwk_of("ES256")), "jwk")
    assert exc.value.problems[0].location == location
    assert message in exc.value.problems[0].message


def test_okp_refusals() -> None:
    jwk = jwk_of("EdDSA")
    for bad in ({**jwk, "d": jwk["x"]}, {**jwk, "y": jwk["x"]}, {**jwk, "crv": "X25519"},
                {**jwk, "x": jwk["x"][:-1]}, {**jwk, "kty": "EC"}):
        with pytest.raises(InvalidInput):
            public_key_from_jwk(bad)
    with pytest.raises(InvalidInput):
        public_key_from_jwk("not a mapping")  # type: ignore[arg-type]


def test_public_jwk_refuses_other_curves() -> None:
    with pytest.raises(ValueError):
        public_jwk(ec.derive_private_key(5, ec.SECP384R1()).public_key())


# -- raw signatures -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGS)
def test_software_sign_and_verify_raw(alg: str) -> None:
    signature = software_sign(KEYS[alg], alg, b"message")
    assert len(signature) == 64
    verify_raw(jwk_of(alg), alg, b"message", signature)
    with pytest.raises(VerificationFailed, match="does not verify"):
        verify_raw(jwk_of(alg), alg, b"messagE", signature)
    with pytest.raises(VerificationFailed, match="64 bytes"):
        verify_raw(jwk_of(alg), alg, b"message", signature[:-1])
    other = next(a for a in ALGS if a != alg)
    with pytest.raises(VerificationFailed, match="does not match the key"):
        verify_raw(jwk_of(alg), other, b"message", signature)
    with pytest.raises(ValueError):
        software_sign(KEYS[alg], other, b"message")


def test_der_conversion_round_trip_and_refusals() -> None:
    raw = software_sign(KEYS["ES256"], "ES256", b"m")
    assert der_to_raw(raw_to_der(raw, 32), 32) == raw
    with pytest.raises(InvalidInput):
        raw_to_der(raw[:-1], 32)
    with pytest.raises(InvalidInput):
        der_to_raw(b"\x30\x00garbage", 32)
    with pytest.raises(InvalidInput):  # r and s do not fit in 16 bytes
        der_to_raw(raw_to_der(raw, 32), 16)


@given(st.integers(0, 2**256 - 1), st.integers(0, 2**256 - 1))
@settings(max_examples=200, deadline=None)
def test_raw_der_round_trip_for_any_r_and_s(r: int, s: int) -> None:
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    der = raw_to_der(raw)
    assert der == encode_dss_signature(r, s)
    assert der_to_raw(der) == raw


@pytest.mark.parametrize("alg", ["ES256", "ES256K"])
def test_der_from_cryptography_converts_both_ways(alg: str) -> None:
    for message in (b"", b"m", b"x" * 1000):
        der = KEYS[alg].sign(message, ec.ECDSA(hashes.SHA256()))
        raw = der_to_raw(der)
        assert len(raw) == 64
        assert raw_to_der(raw) == der  # DER is canonical: one encoding per (r, s)
        verify_raw(jwk_of(alg), alg, message, raw)


def test_es256_high_s_is_accepted() -> None:
    token = token_for("ES256")
    jws = parse_compact(token)
    r, s = jws.signature[:32], int.from_bytes(jws.signature[32:], "big")
    twin = replace_part(token, 2, r + (P256_N - s).to_bytes(32, "big"))
    assert twin != token
    verify_compact(twin, jwk_of("ES256"), algs={"ES256"})


# -- JWS compact: interoperability with jwcrypto -----------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGS)
def test_our_tokens_verify_with_jwcrypto(alg: str) -> None:
    token = token_for(alg, b'{"seq":1,"amount":"1000000"}')
    parsed = jw_jws.JWS()
    parsed.deserialize(token)
    parsed.allowed_algs = [alg]
    parsed.verify(jw_jwk.JWK(**jwk_of(alg)))
    assert parsed.payload == b'{"seq":1,"amount":"1000000"}'
    assert json.loads(parsed.objects["protected"]) == {"alg": alg, "kid": thumbprint(jwk_of(alg)), "typ": TYP}


@pytest.mark.parametrize("alg", ALGS)
def test_jwcrypto_tokens_verify_with_ours(alg: str) -> None:
    key = jw_jwk.JWK.from_pyca(KEYS[alg])
    token = jw_jws.JWS(b"payload from another library")
    token.allowed_algs = [alg]
    token.add_signature(key, alg=None, protected=json.dumps({"alg": alg, "kid": key.thumbprint(), "typ": TYP}))
    compact = token.serialize(compact=True)
    jws = verify_compact(compact, {"keys": [jwk_of(a) for a in ALGS]}, algs=set(ALGS), typ=TYP)
    assert jws.payload == b"payload from another library"
    assert jws.header["alg"] == alg


@pytest.mark.parametrize("alg", ALGS)
def test_header_is_canonical_json_and_parse_returns_parts(alg: str) -> None:
    token = token_for(alg, b"")
    head, payload, _ = token.split(".")
    assert b64url_decode(head, "h") == json.dumps(
        {"alg": alg, "kid": thumbprint(jwk_of(alg)), "typ": TYP}, sort_keys=True, separators=(",", ":")).encode()
    jws = verify_compact(token, jwk_of(alg), algs={alg}, typ=TYP)
    assert jws.payload == b"" and payload == ""
    assert jws.signing_input == f"{head}.{payload}".encode()


# -- JWS compact: refusals ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("part", [0, 1, 2])
def test_changing_any_byte_fails(alg: str, part: int) -> None:
    token = token_for(alg, b'{"amount":"1000000","seq":1}')
    for position in (0, 7, -1):
        data = bytearray(b64url_decode(token.split(".")[part], "part"))
        data[position] ^= 0x01
        with pytest.raises((VerificationFailed, InvalidInput)):
            verify_compact(replace_part(token, part, bytes(data)), jwk_of(alg), algs=set(ALGS), typ=TYP)


@pytest.mark.parametrize("alg", ALGS)
def test_well_formed_header_and_payload_changes_fail_signature(alg: str) -> None:
    token = token_for(alg, b'{"amount":"1000000"}')
    header = json.loads(b64url_decode(token.split(".")[0], "h"))
    changed_header = replace_part(token, 0, json.dumps({**header, "x": 1}).encode())
    changed_payload = replace_part(token, 1, b'{"amount":"9000000"}')
    for bad in (changed_header, changed_payload):
        with pytest.raises(VerificationFailed, match="does not verify"):
            verify_compact(bad, jwk_of(alg), algs=set(ALGS), typ=TYP)


def _unsigned(header: dict[str, Any], payload: bytes = b"{}", signature: bytes = b"\x00" * 64) -> str:
    return ".".join((b64url_encode(json.dumps(header).encode()), b64url_encode(payload), b64url_encode(signature)))


@pytest.mark.parametrize(("token", "message"), [
    (_unsigned({"alg": "none"}), "alg none"),
    (_unsigned({"alg": "None"}), "alg none"),
    (_unsigned({"alg": "none"}, signature=b""), "must not be empty"),
    (_unsigned({"typ": "JWT"}), "needs an `alg`"),
    (_unsigned({"alg": "ES256", "crit": ["b64"], "b64": False}), "critical"),
    (_unsigned({"alg": "ES256", "crit": []}), "critical"),
    (_unsigned({"alg": "ES256", "kid": 5}), "must be a string"),
    ('eyJhbGciOiJFUzI1NiIsImFsZyI6Im5vbmUifQ.e30.' + "A" * 86, "duplicate"),  # {"alg":"ES256","alg":"none"}
    (b64url_encode(b"[1]") + ".e30." + "A" * 86, "JSON object"),
    ("a.b", "3 dot-separated parts"),
    ("a.b.c.d", "3 dot-separated parts"),
    ("eyJhbGciOiJFUzI1NiJ9=.e30." + "A" * 86, "padded"),
    ("eyJhbGciOiJFUzI1NiJ9.e30=." + "A" * 86, "padded"),
    ("eyJhbGciOiJFUzI1NiJ9.e30." + "A" * 86 + "==", "padded"),
    ("eyJhbGciOiJFUzI1NiJ9.e30.\u00e9", "ASCII"),
])
def test_parse_compact_refusals(token: str, message: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_compact(token, "jws")
    assert message in str(exc.value)


def _signed_with_header(alg: str, header: dict[str, Any], payload: bytes = b"{}") -> str:
    """A token whose signature is valid for its header, however that header looks (sign_compact would refuse)."""
    signing_input = f"{b64url_encode(json.dumps(header).encode())}.{b64url_encode(payload)}"
    return f"{signing_input}.{b64url_encode(signer(alg)(signing_input.encode()))}"


@pytest.mark.parametrize("alg", ALGS)
def test_verify_compact_refusals_even_with_valid_signatures(alg: str) -> None:
    jwk, kid = jwk_of(alg), thumbprint(jwk_of(alg))
    everything = {*ALGS, "none", "None"}
    # alg none, whatever the caller allows
    for none in ("none", "None", "NONE"):
        with pytest.raises(InvalidInput, match="alg none"):
            verify_compact(_signed_with_header(alg, {"alg": none, "kid": kid}), jwk, algs=everything)
    # crit: an extension we do not understand, correctly signed
    for crit in (["exp"], ["b64"], []):
        with pytest.raises(InvalidInput, match="critical"):
            verify_compact(_signed_with_header(alg, {"alg": alg, "kid": kid, "crit": crit, "exp": 1, "b64": True}),
                           jwk, algs=everything)
    good = _signed_with_header(alg, {"alg": alg, "kid": kid})
    assert verify_compact(good, jwk, algs={alg}).header == {"alg": alg, "kid": kid}
    # padded base64url in any part
    for index in range(3):
        parts = good.split(".")
        parts[index] += "=" * (-len(parts[index]) % 4 or 4)
        with pytest.raises(InvalidInput, match="padded"):
            verify_compact(".".join(parts), jwk, algs={alg})
    # a private JWK, even one that matches the kid and the signature
    private = json.loads(jw_jwk.JWK.from_pyca(KEYS[alg]).export_private())
    assert thumbprint(private) == kid
    with pytest.raises(InvalidInput, match="private"):
        verify_compact(good, private, algs={alg})
    with pytest.raises(InvalidInput, match="private"):
        verify_compact(good, {"keys": [private]}, algs={alg})
    # an unknown kid
    for unknown in ("", "unknown", kid[:-1], kid + "A"):
        token = _signed_with_header(alg, {"alg": alg, "kid": unknown})
        with pytest.raises(VerificationFailed):
            verify_compact(token, [jwk_of(a) for a in ALGS], algs={alg})


@pytest.mark.parametrize("alg", ["ES256", "ES256K"])
def test_off_curve_keys_are_refused(alg: str) -> None:
    jwk = jwk_of(alg)
    off = {**jwk, "y": _flip_y(jwk)}
    with pytest.raises(InvalidInput, match="not a point"):
        public_key_from_jwk(off)
    with pytest.raises(InvalidInput, match="not a point"):
        verify_compact(token_for(alg, kid=thumbprint(off)), off, algs={alg}, typ=TYP)
    swapped = {**jwk, "x": jwk["y"], "y": jwk["x"]}
    with pytest.raises(InvalidInput, match="not a point"):
        public_key_from_jwk(swapped)
    zero = {**jwk, "x": b64url_encode(bytes(32)), "y": b64url_encode(bytes(32))}
    with pytest.raises(InvalidInput):
        public_key_from_jwk(zero)


def test_algorithm_confusion_is_refused() -> None:
    # An Ed25519 signature labelled ES256, checked against the Ed25519 key: ES256 is allowed, but not for this key.
    jwk = jwk_of("EdDSA")
    confused = sign_compact({"alg": "ES256", "kid": thumbprint(jwk), "typ": TYP}, b"{}", signer("EdDSA"))
    with pytest.raises(VerificationFailed, match="does not match the key"):
        verify_compact(confused, jwk, algs={"ES256", "EdDSA"}, typ=TYP)
    # ...and the same token against a set holding both keys: kid picks the Ed25519 key, alg still mismatches.
    with pytest.raises(VerificationFailed, match="does not match the key"):
        verify_compact(confused, [jwk_of("ES256"), jwk], algs={"ES256", "EdDSA"}, typ=TYP)


def test_alg_must_be_allowed_by_the_caller() -> None:
    with pytest.raises(VerificationFailed, match="not allowed"):
        verify_compact(token_for("ES256K"), jwk_of("ES256K"), algs={"ES256"}, typ=TYP)


def test_typ_must_match_when_required() -> None:
    token = token_for("ES256")
    with pytest.raises(VerificationFailed, match="typ"):
        verify_compact(token, jwk_of("ES256"), algs={"ES256"}, typ="policy-approval+jws")
    verify_compact(token, jwk_of("ES256"), algs={"ES256"})  # typ not checked when not asked


def test_key_selection_by_kid() -> None:
    keys = [jwk_of(a) for a in ALGS]
    rsa = {"kty": "RSA", "n": "AQAB", "e": "AQAB"}  # a key type we do not understand is ignored (RFC 7517 5)
    token = token_for("EdDSA")
    assert verify_compact(token, {"keys": [rsa, *keys]}, algs=set(ALGS)).header["alg"] == "EdDSA"
    assert verify_compact(token, keys, algs=set(ALGS)).header["alg"] == "EdDSA"
    assert verify_compact(token, jwk_of("EdDSA"), algs=set(ALGS)).header["alg"] == "EdDSA"

    wrong_kid = token_for("EdDSA", kid=thumbprint(jwk_of("ES256")))
    with pytest.raises(VerificationFailed, match="does not match"):  # picks the P-256 key, whose alg is ES256
        verify_compact(wrong_kid, keys, algs=set(ALGS))
    with pytest.raises(VerificationFailed, match="not the RFC 7638 thumbprint"):
        verify_compact(wrong_kid, jwk_of("EdDSA"), algs=set(ALGS))
    unknown_kid = token_for("EdDSA", kid="unknown")
    with pytest.raises(VerificationFailed, match="no key has"):
        verify_compact(unknown_kid, keys, algs=set(ALGS))

    no_kid = sign_compact({"alg": "EdDSA"}, b"{}", signer("EdDSA"))
    verify_compact(no_kid, jwk_of("EdDSA"), algs={"EdDSA"})  # a single key needs no kid
    with pytest.raises(VerificationFailed, match="no `kid`"):
        verify_compact(no_kid, keys, algs=set(ALGS))


def test_private_jwk_in_the_key_set_is_refused() -> None:
    private = json.loads(jw_jwk.JWK.from_pyca(KEYS["ES256"]).export_private())
    with pytest.raises(InvalidInput, match="private"):
        verify_compact(token_for("ES256"), private, algs={"ES256"})


def test_sign_compact_refuses_unusable_headers() -> None:
    for header in ({"alg": "none"}, {"typ": "x"}, {"alg": "ES256", "crit": ["exp"]}, {"alg": "ES256", "x": 1.5}):
        with pytest.raises(InvalidInput):
            sign_compact(header, b"{}", signer("ES256"))


def test_module_exports_the_algorithms() -> None:
    assert frozenset(ALGS) == jose.ALGS
