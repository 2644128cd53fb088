"""EIP-712 MintAuthorization, EIP-55 addresses and Ethereum signatures, checked against eth-account/eth-utils."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import coincurve
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature
from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_typed_data
from eth_utils.address import to_checksum_address as eth_checksum
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.domain import eip712
from appliance.domain.eip712 import (
    SECP256K1_N,
    Eip712Domain,
    MintAuthorization,
    address_from_public_key,
    eth_signature,
    keccak256,
    mint_digest,
    mint_from_typed_data,
    normalize_low_s,
    parse_address,
    recover_address,
    recovery_id,
    to_checksum_address,
    typed_data,
)
from appliance.errors import InvalidInput, VerificationFailed

VECTOR = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "eip712-mint.json").read_text())
DIGEST = bytes.fromhex(VECTOR["digest"][2:])
SIGNATURE = bytes.fromhex(VECTOR["signature"][2:])
MAX_UINT256 = 2**256 - 1


def vector_objects() -> tuple[Eip712Domain, MintAuthorization]:
    d, m = VECTOR["typedData"]["domain"], VECTOR["typedData"]["message"]
    return (Eip712Domain(d["name"], d["version"], d["chainId"], d["verifyingContract"]),
            MintAuthorization(m["to"], int(m["amount"]), bytes.fromhex(m["nonce"][2:]), int(m["validAfter"]),
                              int(m["validBefore"])))


def eth_account_digest(full_message: dict[str, Any]) -> bytes:
    return bytes(_hash_eip191_message(encode_typed_data(full_message=full_message)))


# -- the vector ---------------------------------------------------------------------------------------------------


def test_type_strings_are_the_contract() -> None:
    assert eip712.MINT_TYPE == ("MintAuthorization(address to,uint256 amount,bytes32 nonce,uint256 validAfter,"
                                "uint256 validBefore)")
    assert eip712.DOMAIN_TYPE == "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"


def test_vector_digest() -> None:
    assert mint_digest(*vector_objects()) == DIGEST


def test_vector_typed_data_is_reproduced_exactly() -> None:
    assert typed_data(*vector_objects()) == VECTOR["typedData"]
    assert mint_from_typed_data(VECTOR["typedData"]) == vector_objects()


def test_vector_signature_recovers_to_the_signer() -> None:
    assert recover_address(DIGEST, SIGNATURE) == VECTOR["signer"]
    assert Account.from_key(VECTOR["test_private_key"]).address == VECTOR["signer"]


def test_keccak256_is_not_sha3() -> None:
    assert keccak256(b"").hex() == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"


# -- against eth-account ------------------------------------------------------------------------------------------

_addresses = st.binary(min_size=20, max_size=20).map(eth_checksum)
_key_addresses = st.integers(1, SECP256K1_N - 1).map(lambda k: Account.from_key(k.to_bytes(32, "big")).address)
_uint256 = st.integers(0, MAX_UINT256)
_domains = st.builds(Eip712Domain, name=st.text(max_size=20), version=st.text(max_size=5),
                     chain_id=st.integers(1, 2**53 - 1) | _uint256, verifying_contract=_addresses)
_mints = st.builds(MintAuthorization, to=_key_addresses | _addresses, amount=_uint256,
                   nonce=st.binary(min_size=32, max_size=32), valid_after=_uint256, valid_before=_uint256)


@settings(max_examples=40, deadline=None)
@given(_domains, _mints)
def test_digest_matches_eth_account(domain: Eip712Domain, msg: MintAuthorization) -> None:
    full = typed_data(domain, msg)
    assert mint_digest(domain, msg) == eth_account_digest(full)
    assert mint_from_typed_data(full) == (domain, msg)  # strict inverse
    assert typed_data(*mint_from_typed_data(full)) == full


@settings(max_examples=20, deadline=None)
@given(st.integers(1, SECP256K1_N - 1), _domains, _mints)
def test_eth_account_signatures_recover(key: int, domain: Eip712Domain, msg: MintAuthorization) -> None:
    account = Account.from_key(key.to_bytes(32, "big"))
    signed = Account.sign_message(encode_typed_data(full_message=typed_data(domain, msg)), account.key)
    assert bytes(signed.message_hash) == mint_digest(domain, msg)
    assert recover_address(mint_digest(domain, msg), bytes(signed.signature)) == account.address


# -- HSM-style raw signatures -> Ethereum signatures ---------------------------------------------------------------


def _high_s_raw(digest: bytes, private_key: coincurve.PrivateKey) -> tuple[bytes, bytes]:
    """(the recoverable low-s signature libsecp256k1 makes, the same signature's high-s twin as raw r||s)."""
    recoverable = private_key.sign_recoverable(digest, hasher=None)
    r, s = int.from_bytes(recoverable[:32], "big"), int.from_bytes(recoverable[32:64], "big")
    assert s <= SECP256K1_N // 2
    return recoverable, r.to_bytes(32, "big") + (SECP256K1_N - s).to_bytes(32, "big")


@settings(max_examples=30, deadline=None)
@given(st.integers(1, SECP256K1_N - 1), st.binary(min_size=32, max_size=32))
def test_eth_signature_normalises_high_s_and_finds_v(key: int, digest: bytes) -> None:
    private_key = coincurve.PrivateKey(key.to_bytes(32, "big"))
    public = private_key.public_key.format(compressed=False)
    address = Account.from_key(key.to_bytes(32, "big")).address
    recoverable, high = _high_s_raw(digest, private_key)
    expected = recoverable[:64] + bytes([27 + recoverable[64]])

    for raw in (high, recoverable[:64]):  # high-s (flipped) and low-s input give the same result
        signature = eth_signature(digest, raw, public)
        assert signature == expected
        assert int.from_bytes(signature[32:64], "big") <= SECP256K1_N // 2
        assert signature[64] in (27, 28)
        assert Account._recover_hash(digest, signature=signature) == address
        assert recover_address(digest, signature) == address
    assert eth_signature(digest, high, public[1:]) == expected  # 64-byte X||Y form too


def test_eth_signature_from_cryptography_high_s() -> None:
    # An HSM-like signer: cryptography's ECDSA over a pre-hashed digest, random k, forced to high-s.
    private_key = ec.derive_private_key(0xC0FFEE, ec.SECP256K1())
    public = private_key.public_key().public_bytes(serialization.Encoding.X962,
                                                   serialization.PublicFormat.UncompressedPoint)
    digest = mint_digest(*vector_objects())
    r, s = decode_dss_signature(private_key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()))))
    s_high = s if s > SECP256K1_N // 2 else SECP256K1_N - s
    raw = r.to_bytes(32, "big") + s_high.to_bytes(32, "big")
    signature = eth_signature(digest, raw, public)
    assert int.from_bytes(signature[32:64], "big") == SECP256K1_N - s_high
    assert Account._recover_hash(digest, signature=signature) == address_from_public_key(public)


def test_normalize_low_s_boundary() -> None:
    half = SECP256K1_N // 2
    assert normalize_low_s(5, half) == (5, half)
    assert normalize_low_s(5, half + 1) == (5, SECP256K1_N - half - 1)


def test_recovery_id_refuses_another_key() -> None:
    recoverable = coincurve.PrivateKey(b"\x01" * 32).sign_recoverable(DIGEST, hasher=None)
    other = coincurve.PrivateKey(b"\x02" * 32).public_key.format(compressed=False)
    r, s = int.from_bytes(recoverable[:32], "big"), int.from_bytes(recoverable[32:64], "big")
    with pytest.raises(VerificationFailed):
        recovery_id(DIGEST, r, s, other)
    with pytest.raises(VerificationFailed):
        eth_signature(DIGEST, recoverable[:64], other)
    with pytest.raises(VerificationFailed):
        eth_signature(DIGEST, recoverable[:63], other)
    with pytest.raises(VerificationFailed):
        recovery_id(DIGEST, 0, s, other)


def _with(sig: bytes, *, s: int | None = None, v: int | None = None) -> bytes:
    r_bytes, s_bytes, v_byte = sig[:32], sig[32:64], sig[64]
    if s is not None:
        s_bytes = s.to_bytes(32, "big")
    return r_bytes + s_bytes + bytes([v_byte if v is None else v])


def test_recover_address_refusals() -> None:
    s = int.from_bytes(SIGNATURE[32:64], "big")
    twin = _with(SIGNATURE, s=SECP256K1_N - s, v=55 - SIGNATURE[64])  # the high-s twin (v flips)
    # The twin is mathematically valid for the same key; Ethereum (EIP-2) and we refuse it anyway.
    recovered = coincurve.PublicKey.from_signature_and_message(twin[:64] + bytes([twin[64] - 27]), DIGEST,
                                                               hasher=None)
    assert address_from_public_key(recovered.format(compressed=False)) == VECTOR["signer"]
    with pytest.raises(VerificationFailed, match="high-s"):
        recover_address(DIGEST, twin)
    for v in (0, 1, 29, 37):
        with pytest.raises(VerificationFailed, match="v must be"):
            recover_address(DIGEST, _with(SIGNATURE, v=v))
    for bad in (SIGNATURE[:64], SIGNATURE + b"\x00", b""):
        with pytest.raises(VerificationFailed):
            recover_address(DIGEST, bad)
    with pytest.raises(VerificationFailed):
        recover_address(DIGEST, _with(SIGNATURE, s=0))
    with pytest.raises(ValueError):
        recover_address(DIGEST[:31], SIGNATURE)
    # another digest recovers to another address, never to the signer
    assert recover_address(bytes(32), SIGNATURE) != VECTOR["signer"]


# -- addresses ----------------------------------------------------------------------------------------------------


@given(st.binary(min_size=20, max_size=20))
@settings(max_examples=200, deadline=None)
def test_checksum_matches_eth_utils(raw: bytes) -> None:
    expected = eth_checksum(raw)
    assert to_checksum_address(raw) == expected
    assert to_checksum_address("0x" + raw.hex()) == expected
    assert to_checksum_address("0x" + raw.hex().upper()) == expected
    assert parse_address(expected, "to") == expected


@given(st.integers(1, SECP256K1_N - 1))
@settings(max_examples=50, deadline=None)
def test_address_from_public_key_matches_eth_account(key: int) -> None:
    public = coincurve.PrivateKey(key.to_bytes(32, "big")).public_key.format(compressed=False)
    expected = Account.from_key(key.to_bytes(32, "big")).address
    assert address_from_public_key(public) == expected
    assert address_from_public_key(public[1:]) == expected


def test_address_from_public_key_refusals() -> None:
    public = coincurve.PrivateKey(b"\x01" * 32).public_key
    with pytest.raises(ValueError):
        address_from_public_key(public.format(compressed=True))
    off_curve = bytearray(public.format(compressed=False))
    off_curve[-1] ^= 1
    with pytest.raises(ValueError):
        address_from_public_key(bytes(off_curve))


CHECKSUMMED = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"  # from EIP-55's own examples
BAD_CHECKSUM = CHECKSUMMED[:3] + CHECKSUMMED[3].swapcase() + CHECKSUMMED[4:]  # one letter's case changed


@pytest.mark.parametrize(("value", "message"), [
    (CHECKSUMMED.lower(), "not checksummed"),
    ("0x" + CHECKSUMMED[2:].upper(), "not checksummed"),
    (BAD_CHECKSUM, "invalid EIP-55 checksum"),
    (CHECKSUMMED[:-1], "40 hex digits, not 39"),
    (CHECKSUMMED + "0", "40 hex digits, not 41"),
    (CHECKSUMMED[:-1] + "g", "only hex digits"),
    (CHECKSUMMED[:-1] + "\uff11", "only hex digits"),
    (CHECKSUMMED[2:] + "00", "start with 0x"),
    ("0X" + CHECKSUMMED[2:], "start with 0x"),
    (bytes(20), "must be a string"),
    (None, "must be a string"),
])
def test_parse_address_refusals_have_distinct_messages(value: object, message: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_address(value, "jws.payload.to")
    (problem,) = exc.value.problems
    assert problem.location == "jws.payload.to"
    assert message in problem.message


def test_parse_address_refusal_messages_are_distinct() -> None:
    messages = []
    for value in (CHECKSUMMED.lower(), CHECKSUMMED[:-1], CHECKSUMMED[:-1] + "g", BAD_CHECKSUM, CHECKSUMMED[2:]):
        with pytest.raises(InvalidInput) as exc:
            parse_address(value, "to")
        messages.append(exc.value.problems[0].message)
    assert len(set(messages)) == len(messages), messages


@given(st.binary(min_size=20, max_size=20), st.data())
@settings(max_examples=100, deadline=None)
def test_parse_address_accepts_only_the_eip55_spelling(raw: bytes, data: st.DataObject) -> None:
    good = eth_checksum(raw)
    letters = [i for i, c in enumerate(good) if i >= 2 and c.isalpha()]
    if not letters:
        assert parse_address(good, "to") == good
        return
    position = data.draw(st.sampled_from(letters))
    mistyped = good[:position] + good[position].swapcase() + good[position + 1:]
    with pytest.raises(InvalidInput):
        parse_address(mistyped, "to")


def test_parse_address_accepts_checksums_that_happen_to_be_single_case() -> None:
    assert parse_address("0x" + "2" * 40, "to") == "0x" + "2" * 40  # no letters at all
    # An address with one letter whose EIP-55 form keeps it lowercase (so the input is "all lowercase").
    candidate = next(a for a in ("0xa" + f"{i:039d}" for i in range(100)) if to_checksum_address(a) == a)
    assert parse_address(candidate, "to") == candidate
    assert eth_checksum(candidate) == candidate


# -- dataclasses and mint_from_typed_data -------------------------------------------------------------------------


def test_dataclass_validation() -> None:
    domain, msg = vector_objects()
    with pytest.raises(ValueError):
        MintAuthorization(msg.to, 1, b"\x00" * 31, 0, 1)
    with pytest.raises(ValueError):
        MintAuthorization(msg.to, MAX_UINT256 + 1, msg.nonce, 0, 1)
    with pytest.raises(ValueError):
        MintAuthorization(msg.to, -1, msg.nonce, 0, 1)
    with pytest.raises(TypeError):
        MintAuthorization(msg.to, True, msg.nonce, 0, 1)
    with pytest.raises(ValueError):  # mixed case with a wrong checksum: a typo, never silently fixed
        Eip712Domain("n", "1", 1, BAD_CHECKSUM)
    with pytest.raises(ValueError):
        Eip712Domain("n", "1", -1, CHECKSUMMED)
    # All-lowercase (as some configs hold it) is the same address and is stored checksummed.
    assert Eip712Domain("n", "1", 1, CHECKSUMMED.lower()).verifying_contract == CHECKSUMMED


def _mutated(path: tuple[str, ...], value: object) -> dict[str, Any]:
    obj: dict[str, Any] = copy.deepcopy(VECTOR["typedData"])
    target = obj
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return obj


_DELETE = object()


@pytest.mark.parametrize(("path", "value", "location"), [
    (("primaryType",), "EIP712Domain", "typedData.primaryType"),
    (("primaryType",), _DELETE, "typedData.primaryType"),
    (("extra",), 1, "typedData.extra"),
    (("types", "MintAuthorization"), [], "typedData.types"),
    (("types", "Other"), [], "typedData.types"),
    (("domain",), [], "typedData.domain"),
    (("domain", "chainId"), "1", "typedData.domain.chainId"),
    (("domain", "chainId"), True, "typedData.domain.chainId"),
    (("domain", "chainId"), -1, "typedData.domain.chainId"),
    (("domain", "salt"), "0x00", "typedData.domain.salt"),
    (("domain", "name"), 5, "typedData.domain.name"),
    (("domain", "verifyingContract"), "0x" + "c" * 40, "typedData.domain.verifyingContract"),
    (("message", "to"), "0x22", "typedData.message.to"),
    (("message", "amount"), 1000000000000, "typedData.message.amount"),
    (("message", "amount"), "1e12", "typedData.message.amount"),
    (("message", "amount"), "1000000000000.0", "typedData.message.amount"),
    (("message", "amount"), "1.5", "typedData.message.amount"),
    (("message", "amount"), 1e12, "typedData.message.amount"),
    (("message", "amount"), "01000000000000", "typedData.message.amount"),
    (("message", "amount"), " 1000000000000", "typedData.message.amount"),
    (("message", "validAfter"), "1.764e9", "typedData.message.validAfter"),
    (("message", "validBefore"), "1764086400.0", "typedData.message.validBefore"),
    (("domain", "chainId"), 1.0, "typedData.domain.chainId"),
    (("primaryType",), "mintAuthorization", "typedData.primaryType"),
    (("message", "to"), "0x2222222222222222222222222222222222222222 ", "typedData.message.to"),
    (("message", "amount"), str(2**256), "typedData.message.amount"),
    (("message", "validBefore"), _DELETE, "typedData.message.validBefore"),
    (("message", "nonce"), "0x" + "AB" * 32, "typedData.message.nonce"),
    (("message", "nonce"), "0x" + "ab" * 31, "typedData.message.nonce"),
    (("message", "memo"), "x", "typedData.message.memo"),
])
def test_mint_from_typed_data_refusals(path: tuple[str, ...], value: object, location: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        mint_from_typed_data(_mutated(path, value))
    assert location in [p.location for p in exc.value.problems]


def test_mint_from_typed_data_reports_every_problem_and_refuses_non_objects() -> None:
    obj = _mutated(("message", "amount"), 5)
    obj["domain"]["chainId"] = "1"
    with pytest.raises(InvalidInput) as exc:
        mint_from_typed_data(obj)
    assert {p.location for p in exc.value.problems} == {"typedData.message.amount", "typedData.domain.chainId"}
    bad: object
    for bad in (None, [], "typedData"):
        with pytest.raises(InvalidInput):
            mint_from_typed_data(bad)


def test_a_missing_struct_is_reported_once() -> None:
    with pytest.raises(InvalidInput) as exc:
        mint_from_typed_data(_mutated(("domain",), _DELETE))
    assert [p.location for p in exc.value.problems] == ["typedData.domain"]
