"""EIP-712 hashing of MintAuthorization, EIP-55 addresses and Ethereum secp256k1 signatures.

Only the two structs of the external contract are encoded, EIP712Domain and MintAuthorization, over the
atomic types string, uint256, address and bytes32: a general EIP-712 engine would be more code to audit
for nothing. Both type strings and the `types` member of the eth_signTypedData_v4 object are derived from
one field table each, so they cannot drift apart. Keccak-256 comes from pycryptodome; public-key recovery
(to find `v`) from libsecp256k1 through coincurve.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import coincurve
from Crypto.Hash import keccak as _keccak

from appliance.domain import patterns
from appliance.domain.amounts import MAX_UINT256, parse_amount
from appliance.errors import InvalidInput, Problem, VerificationFailed

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HALF_N = SECP256K1_N // 2  # EIP-2: s must be <= n/2 (n is odd, so s > n/2 <=> s > n // 2)

# (name, type) in declaration order; the order is part of the type hash.
_DOMAIN_FIELDS: tuple[tuple[str, str], ...] = (
    ("name", "string"), ("version", "string"), ("chainId", "uint256"), ("verifyingContract", "address"))
_MINT_FIELDS: tuple[tuple[str, str], ...] = (
    ("to", "address"), ("amount", "uint256"), ("nonce", "bytes32"), ("validAfter", "uint256"),
    ("validBefore", "uint256"))
PRIMARY_TYPE = "MintAuthorization"
_T = TypeVar("_T")


def _encode_type(name: str, fields: tuple[tuple[str, str], ...]) -> str:
    """EIP-712 encodeType for a struct without struct-typed members: Name(type1 name1,type2 name2)."""
    return f"{name}({','.join(f'{type_} {field}' for field, type_ in fields)})"


DOMAIN_TYPE = _encode_type("EIP712Domain", _DOMAIN_FIELDS)
MINT_TYPE = _encode_type(PRIMARY_TYPE, _MINT_FIELDS)


def keccak256(data: bytes) -> bytes:
    """Keccak-256 (Ethereum's, not NIST SHA3-256) of data."""
    return _keccak.new(digest_bits=256, data=data).digest()


# -- addresses ----------------------------------------------------------------------------------------------------

def to_checksum_address(address: str | bytes) -> str:
    """EIP-55 mixed-case form of an address given as 20 bytes or as "0x" + 40 hex digits in any case.

    Does not check an existing checksum (parse_address does). Raises ValueError for anything else.
    """
    if isinstance(address, bytes):
        if len(address) != 20:
            raise ValueError(f"an address is 20 bytes, not {len(address)}")
        lower = address.hex()
    elif isinstance(address, str) and patterns.ADDRESS.fullmatch(address):
        lower = address[2:].lower()
    else:
        raise ValueError(f"not an address: {address!r}")
    hashed = keccak256(lower.encode("ascii")).hex()
    # EIP-55: uppercase each letter whose nibble in keccak256(lowercase hex) is 8 or more.
    return "0x" + "".join(c.upper() if int(h, 16) >= 8 else c for c, h in zip(lower, hashed, strict=False))


def parse_address(value: object, location: str) -> str:
    """An untrusted address: "0x" + 40 hex digits whose case is a valid EIP-55 checksum; returns it.

    Raises InvalidInput (Problem at `location`) with a distinct message for: not a string, no "0x" prefix,
    wrong length, non-hex characters, no checksum (all-lowercase or all-uppercase), and a wrong checksum.
    An address whose letters are all one case only because its EIP-55 form says so is accepted.
    """
    def bad(message: str) -> InvalidInput:
        return InvalidInput(f"{location}: {message}", [Problem(location, message)])

    if not isinstance(value, str):
        raise bad("an address must be a string: 0x followed by 40 hex digits")
    if not value.startswith("0x"):
        raise bad("an address must start with 0x")
    if len(value) != 42:
        raise bad(f"an address is 0x followed by 40 hex digits, not {len(value) - 2}")
    if not patterns.ADDRESS.fullmatch(value):  # "0x" and the length are checked above
        raise bad("an address must contain only hex digits 0-9, a-f, A-F after 0x")
    checksummed = to_checksum_address(value)
    if value == checksummed:
        return checksummed
    body = value[2:]
    if body in (body.lower(), body.upper()):
        raise bad(f"the address is not checksummed: use its EIP-55 mixed-case form {checksummed}")
    # A mixed-case address with the wrong case is most likely mistyped: never "fix" it.
    raise bad("the address has an invalid EIP-55 checksum (mistyped?)")


def _uncompressed(public_key: bytes) -> bytes:
    """65-byte 0x04||X||Y from 64-byte X||Y or 65-byte 0x04||X||Y; ValueError if not a secp256k1 point."""
    if len(public_key) == 64:
        public_key = b"\x04" + public_key
    if len(public_key) != 65 or public_key[0] != 4:
        raise ValueError("an uncompressed secp256k1 public key is 64 bytes X||Y or 65 bytes 0x04||X||Y")
    coincurve.PublicKey(public_key)  # raises ValueError if the point is not on the curve
    return public_key


def address_from_public_key(uncompressed: bytes) -> str:
    """EIP-55 Ethereum address of a secp256k1 public key (65 bytes 0x04||X||Y or 64 bytes X||Y).

    Raises ValueError for other lengths and for points not on the curve.
    """
    return to_checksum_address(keccak256(_uncompressed(uncompressed)[1:])[-20:])


# -- typed data ---------------------------------------------------------------------------------------------------

def _require_uint256(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int")
    if not 0 <= value <= MAX_UINT256:
        raise ValueError(f"{name} is outside uint256")


def _checksummed(name: str, value: object) -> str:
    """The EIP-55 form of a trusted address; a mixed-case address must already carry a valid checksum."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str")
    checksummed = to_checksum_address(value)
    body = value[2:]
    if value != checksummed and body not in (body.lower(), body.upper()):
        raise ValueError(f"{name} has an invalid EIP-55 checksum")
    return checksummed


@dataclass(frozen=True)
class Eip712Domain:
    """The EIP-712 domain of the token contract. verifying_contract is stored in EIP-55 form.

    Raises TypeError/ValueError on construction for a chain id outside uint256, a malformed contract address
    (mixed case must be a valid checksum; all-lower/all-upper is converted) or a name that is not Unicode.
    """

    name: str
    version: str
    chain_id: int
    verifying_contract: str

    def __post_init__(self) -> None:
        for field, text in (("name", self.name), ("version", self.version)):
            if not isinstance(text, str):
                raise TypeError(f"{field} must be a str")
            text.encode("utf-8")  # raises UnicodeEncodeError (a ValueError) on a lone surrogate
        _require_uint256("chain_id", self.chain_id)
        # Frozen: normalising the address needs object.__setattr__; it only changes case, never the bytes.
        object.__setattr__(self, "verifying_contract", _checksummed("verifying_contract", self.verifying_contract))


@dataclass(frozen=True)
class MintAuthorization:
    """The signed message: mint `amount` base units to `to`, once (`nonce`), within [valid_after, valid_before].

    Raises TypeError/ValueError on construction for a nonce that is not exactly 32 bytes, integers outside
    uint256 or a malformed `to` (stored in EIP-55 form, like Eip712Domain.verifying_contract).
    """

    to: str
    amount: int
    nonce: bytes
    valid_after: int
    valid_before: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "to", _checksummed("to", self.to))
        for field in ("amount", "valid_after", "valid_before"):
            _require_uint256(field, getattr(self, field))
        if not isinstance(self.nonce, bytes) or len(self.nonce) != 32:
            raise ValueError("nonce must be exactly 32 bytes")


def _uint256(value: int) -> bytes:
    return value.to_bytes(32, "big")


def _string(value: str) -> bytes:
    return keccak256(value.encode("utf-8"))  # dynamic types are encoded as the hash of their contents


def _address(value: str) -> bytes:
    return bytes(12) + bytes.fromhex(value[2:])  # left-padded to 32 bytes like a uint160


def _type_hash(type_string: str) -> bytes:
    return keccak256(type_string.encode("ascii"))


def domain_separator(domain: Eip712Domain) -> bytes:
    """hashStruct(EIP712Domain) of the domain: 32 bytes."""
    return keccak256(_type_hash(DOMAIN_TYPE) + _string(domain.name) + _string(domain.version)
                     + _uint256(domain.chain_id) + _address(domain.verifying_contract))


def hash_struct(msg: MintAuthorization) -> bytes:
    """hashStruct(MintAuthorization) of the message: 32 bytes."""
    return keccak256(_type_hash(MINT_TYPE) + _address(msg.to) + _uint256(msg.amount) + msg.nonce
                     + _uint256(msg.valid_after) + _uint256(msg.valid_before))


def mint_digest(domain: Eip712Domain, msg: MintAuthorization) -> bytes:
    """The 32-byte digest that is signed: keccak256(0x19 0x01 || domainSeparator || hashStruct(message))."""
    return keccak256(b"\x19\x01" + domain_separator(domain) + hash_struct(msg))


def _types() -> dict[str, list[dict[str, str]]]:
    return {"EIP712Domain": [{"name": n, "type": t} for n, t in _DOMAIN_FIELDS],
            PRIMARY_TYPE: [{"name": n, "type": t} for n, t in _MINT_FIELDS]}


def typed_data(domain: Eip712Domain, msg: MintAuthorization) -> dict[str, Any]:
    """The eth_signTypedData_v4 object for the message: types (with EIP712Domain), primaryType, domain, message.

    chainId is a JSON integer; uint256 message members are decimal strings (JSON numbers lose precision above
    2**53) and the nonce is 0x + 64 lowercase hex digits. mint_from_typed_data is the exact inverse.
    """
    return {
        "types": _types(),
        "primaryType": PRIMARY_TYPE,
        "domain": {"name": domain.name, "version": domain.version, "chainId": domain.chain_id,
                   "verifyingContract": domain.verifying_contract},
        "message": {"to": msg.to, "amount": str(msg.amount), "nonce": "0x" + msg.nonce.hex(),
                    "validAfter": str(msg.valid_after), "validBefore": str(msg.valid_before)},
    }


def _members(obj: object, names: tuple[str, ...], location: str, problems: list[Problem]) -> Mapping[str, Any]:
    """obj as a mapping with exactly `names`; records a Problem per missing or unexpected member."""
    if not isinstance(obj, Mapping):
        problems.append(Problem(location, "must be a JSON object"))
        return {}
    problems.extend(Problem(f"{location}.{n}", "is missing") for n in names if n not in obj)
    problems.extend(Problem(f"{location}.{k}", "is not expected here") for k in obj if k not in names)
    return obj


def _collect(problems: list[Problem], parse: Callable[..., _T], *args: Any, **kwargs: Any) -> _T | None:
    """parse(*args), recording its InvalidInput problems instead of stopping at the first one."""
    try:
        return parse(*args, **kwargs)
    except InvalidInput as exc:
        problems.extend(exc.problems)
        return None


def mint_from_typed_data(obj: object, location: str = "typedData") -> tuple[Eip712Domain, MintAuthorization]:
    """The strict inverse of typed_data: (domain, message) such that typed_data(domain, message) == obj.

    Raises InvalidInput listing every problem (missing or extra members, types other than exactly the two
    structs, another primaryType, a non-integer or out-of-range chainId, non-checksummed addresses, uint256
    members that are not canonical decimal strings, a nonce that is not 0x + 64 lowercase hex digits).
    """
    problems: list[Problem] = []
    top = _members(obj, ("types", "primaryType", "domain", "message"), location, problems)
    if "types" in top and top["types"] != _types():
        problems.append(Problem(f"{location}.types", f"must declare exactly {DOMAIN_TYPE} and {MINT_TYPE}"))
    if "primaryType" in top and top["primaryType"] != PRIMARY_TYPE:
        problems.append(Problem(f"{location}.primaryType", f"must be {PRIMARY_TYPE!r}"))

    where = f"{location}.domain"
    dom = _members(top["domain"], tuple(n for n, _ in _DOMAIN_FIELDS), where, problems) if "domain" in top else {}
    for field in ("name", "version"):
        value = dom.get(field)
        if field in dom and (not isinstance(value, str) or not _is_unicode(value)):
            problems.append(Problem(f"{where}.{field}", "must be a string"))
    chain_id = dom.get("chainId")
    if "chainId" in dom and (isinstance(chain_id, bool) or not isinstance(chain_id, int)
                             or not 0 <= chain_id <= MAX_UINT256):
        problems.append(Problem(f"{where}.chainId", "must be a JSON integer (uint256)"))
    contract = _collect(problems, parse_address, dom.get("verifyingContract"), f"{where}.verifyingContract") \
        if "verifyingContract" in dom else None

    where = f"{location}.message"
    msg = _members(top["message"], tuple(n for n, _ in _MINT_FIELDS), where, problems) if "message" in top else {}
    to = _collect(problems, parse_address, msg.get("to"), f"{where}.to") if "to" in msg else None
    uints = {field: _collect(problems, parse_amount, msg.get(field), f"{where}.{field}", allow_zero=True)
             for field in ("amount", "validAfter", "validBefore") if field in msg}
    nonce = msg.get("nonce")
    if "nonce" in msg and (not isinstance(nonce, str) or not patterns.NONCE.fullmatch(nonce)):
        problems.append(Problem(f"{where}.nonce", "must be 0x followed by 64 lowercase hex digits (bytes32)"))

    amount, after, before = (uints.get(f) for f in ("amount", "validAfter", "validBefore"))
    # Without problems every member was present and valid; the None checks are for the type checker.
    if (problems or contract is None or to is None or amount is None or after is None or before is None
            or not isinstance(nonce, str)):
        raise InvalidInput(f"{location} is not a MintAuthorization in the form this appliance issues", problems)
    return (Eip712Domain(dom["name"], dom["version"], dom["chainId"], contract),
            MintAuthorization(to, amount, bytes.fromhex(nonce[2:]), after, before))


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# -- signatures ---------------------------------------------------------------------------------------------------

def _check_digest(digest: bytes) -> None:
    if not isinstance(digest, bytes) or len(digest) != 32:
        raise ValueError("a signed digest is exactly 32 bytes")


def normalize_low_s(r: int, s: int) -> tuple[int, int]:
    """(r, s) with s replaced by n - s when s > n/2: the twin signature Ethereum accepts (EIP-2)."""
    return (r, SECP256K1_N - s) if s > _HALF_N else (r, s)


def _recover(digest: bytes, r: int, s: int, recid: int) -> bytes | None:
    """The uncompressed public key that (r, s, recid) recovers to over digest, or None."""
    signature = r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([recid])
    try:
        key = coincurve.PublicKey.from_signature_and_message(signature, digest, hasher=None)
    except ValueError:  # no point with this x coordinate, or r/s out of range
        return None
    return key.format(compressed=False)


def _check_rs(r: int, s: int) -> None:
    if not (0 < r < SECP256K1_N and 0 < s < SECP256K1_N):
        raise VerificationFailed("r and s must be between 1 and n - 1")


def recovery_id(digest: bytes, r: int, s: int, public_key_uncompressed: bytes) -> int:
    """0 or 1: the recovery id under which (r, s) over digest recovers to the given public key.

    Found by trial recovery (ids 2 and 3 need r >= n - p, which has negligible probability and which Ethereum's
    v cannot express). Raises VerificationFailed if neither recovers the key, i.e. the signature is not by
    that key; ValueError for a malformed digest or public key.
    """
    _check_digest(digest)
    target = _uncompressed(public_key_uncompressed)
    _check_rs(r, s)
    for recid in (0, 1):
        if _recover(digest, r, s, recid) == target:
            return recid
    raise VerificationFailed("the signature does not recover to the expected public key")


def eth_signature(digest: bytes, raw_rs: bytes, public_key_uncompressed: bytes) -> bytes:
    """Ethereum's 65-byte r||s||v (low-s, v in {27, 28}) from a raw 64-byte r||s as an HSM returns it.

    A high-s input is replaced by its low-s twin (the HSM need not produce low-s). Raises VerificationFailed
    if raw_rs is not 64 bytes or is not a signature of digest by the public key; ValueError for a malformed
    digest or public key.
    """
    if not isinstance(raw_rs, bytes) or len(raw_rs) != 64:
        raise VerificationFailed("a raw ECDSA signature is 64 bytes r||s")
    r, s = normalize_low_s(int.from_bytes(raw_rs[:32], "big"), int.from_bytes(raw_rs[32:], "big"))
    v = 27 + recovery_id(digest, r, s, public_key_uncompressed)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([v])


def recover_address(digest: bytes, sig65: bytes) -> str:
    """The EIP-55 address that signed digest, from a 65-byte r||s||v signature.

    Raises VerificationFailed, as Ethereum verifiers refuse them, for a length other than 65, v not in
    {27, 28}, r or s out of range, a high s (s > n/2: the malleable twin) and signatures that recover to no key.
    ValueError for a digest that is not 32 bytes.
    """
    _check_digest(digest)
    if not isinstance(sig65, bytes) or len(sig65) != 65:
        raise VerificationFailed("an Ethereum signature is 65 bytes r||s||v")
    if sig65[64] not in (27, 28):
        raise VerificationFailed(f"v must be 27 or 28, not {sig65[64]}")
    r, s = int.from_bytes(sig65[:32], "big"), int.from_bytes(sig65[32:64], "big")
    _check_rs(r, s)
    if s > _HALF_N:
        raise VerificationFailed("high-s signature refused (EIP-2): s must be at most n/2")
    public_key = _recover(digest, r, s, sig65[64] - 27)
    if public_key is None:
        raise VerificationFailed("the signature recovers to no public key")
    return address_from_public_key(public_key)
