"""C2SP tlog-checkpoint bodies, and C2SP signed notes with Ed25519 signatures (c2sp.org/signed-note).

A checkpoint body is "origin\\nsize\\nbase64(root)\\n" plus optional non-empty extension lines. A signed note is
its text (ending in a newline), a blank line, then one line per signature: an em dash (U+2014), a space, the key
name, a space and base64(key ID || signature), where for Ed25519 the key ID is the first 4 bytes of
SHA-256(name || 0x0A || 0x01 || public key). The signature covers the text including its final newline.

Malformed input raises InvalidInput; a signature that does not hold raises VerificationFailed. Signing never
touches a private key: the caller passes a callable (the HSM) that signs the bytes it is given.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from appliance.domain import patterns
from appliance.errors import InvalidInput, VerificationFailed

_ALG_ED25519 = b"\x01"  # the signed-note signature type byte for Ed25519
_KEY_HASH_SIZE = 4
_PUBLIC_KEY_SIZE = 32
_SIGNATURE_SIZE = 64
_ROOT_SIZE = 32
_SIGNATURE_PREFIX = "\u2014 "  # em dash, space

# The spec requires accepting at least 16 signatures and asks verifiers to bound them; 100 is Go's bound.
_MAX_SIGNATURES = 100
# Tree sizes are signed 64-bit integers in the Go tooling auditors use (golang.org/x/mod/sumdb/tlog).
_MAX_TREE_SIZE = 2**63 - 1

_KEY_HASH_HEX = re.compile(r"[0-9a-fA-F]{8}", re.ASCII)
# Signed notes must not contain ASCII control characters other than newline (this includes "\r": no CRLF).
_FORBIDDEN_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")


# -- shared checks --------------------------------------------------------------------------------------------------

def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates: a str Python allows but UTF-8 cannot carry
        raise InvalidInput(f"{what} is not valid UTF-8") from exc


def _check_no_controls(text: str, what: str) -> None:
    found = _FORBIDDEN_CONTROL.search(text)
    if found is not None:
        raise InvalidInput(f"{what} contains the control character U+{ord(found.group()):04X}")


def _decode_base64(text: str, what: str) -> bytes:
    """Canonical standard base64 (RFC 4648 §4, padded), or InvalidInput."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:  # ValueError: non-ASCII characters
        raise InvalidInput(f"{what} is not standard base64") from exc
    # b64decode tolerates non-zero padding bits; re-encoding refuses them so every value has exactly one text.
    if base64.b64encode(raw).decode("ascii") != text:
        raise InvalidInput(f"{what} is not canonical base64")
    return raw


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _as_bytes(value: bytes, what: str) -> bytes:
    """`value` as immutable bytes; database drivers may hand back a memoryview or bytearray."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    # Not bytes(value) on anything else: bytes(32) would silently be 32 zero bytes.
    raise InvalidInput(f"{what} must be bytes, not {type(value).__name__}")


# -- checkpoints ----------------------------------------------------------------------------------------------------

def _check_line(line: str, what: str) -> None:
    if not line:
        raise InvalidInput(f"the checkpoint {what} is empty")
    if "\n" in line:
        raise InvalidInput(f"the checkpoint {what} contains a newline")
    try:
        line.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate: body() could not be written as UTF-8
        raise InvalidInput(f"the checkpoint {what} is not valid Unicode") from exc
    _check_no_controls(line, f"the checkpoint {what}")


@dataclass(frozen=True)
class Checkpoint:
    """A C2SP tlog-checkpoint: the log's origin, its tree size and root hash, and opaque extension lines.

    Construction raises InvalidInput for a value body() could not write as a well-formed checkpoint.
    """

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", _as_bytes(self.root, "the checkpoint root"))
        if isinstance(self.extensions, str):  # tuple("ab") would silently split it into characters
            raise InvalidInput("checkpoint extensions must be a sequence of lines, not one string")
        object.__setattr__(self, "extensions", tuple(self.extensions))
        _check_line(self.origin, "origin")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 0 <= self.size <= _MAX_TREE_SIZE:
            raise InvalidInput(f"checkpoint tree size {self.size!r} is out of range")
        if len(self.root) != _ROOT_SIZE:
            raise InvalidInput(f"the checkpoint root is {len(self.root)} bytes, not a SHA-256 hash")
        for extension in self.extensions:
            _check_line(extension, "extension line")

    def body(self) -> str:
        """The note text: origin, decimal size, base64 root, one line per extension, each ending in a newline.

        Raises nothing: construction already refused anything that would not parse back.
        """
        lines = [self.origin, str(self.size), _b64(self.root), *self.extensions]
        return "".join(line + "\n" for line in lines)


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse a checkpoint body strictly.

    Raises InvalidInput unless it is a non-empty origin, a canonical decimal size (no sign, no leading zeros), the
    canonical base64 of a 32-byte root, optional non-empty extension lines, every line ends in a newline, and
    there is no control character other than newline.
    """
    if not text.endswith("\n"):
        raise InvalidInput("a checkpoint must end with a newline")
    _check_no_controls(text, "the checkpoint")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise InvalidInput("a checkpoint needs an origin, a tree size and a root hash line")
    origin, size_text, root_text, *extensions = lines
    # A regex, not int(): int() also takes "+1", " 1", "1_000" and non-ASCII digits.
    if not patterns.DECIMAL.fullmatch(size_text):
        raise InvalidInput(f"checkpoint tree size {size_text[:30]!r} is not a canonical decimal")
    if len(size_text) > len(str(_MAX_TREE_SIZE)):  # checked before int() so huge digit strings cost nothing
        raise InvalidInput("checkpoint tree size is out of range")
    root = _decode_base64(root_text, "the checkpoint root hash")
    return Checkpoint(origin, int(size_text), root, tuple(extensions))


# -- verifier keys --------------------------------------------------------------------------------------------------

def _check_key_name(name: str) -> None:
    if not name:
        raise InvalidInput("a note key name must not be empty")
    if "+" in name:
        raise InvalidInput(f"note key name {name!r} contains '+'")
    if any(c.isspace() for c in name):
        raise InvalidInput(f"note key name {name!r} contains whitespace")
    _check_no_controls(name, f"note key name {name!r}")
    _utf8(name, f"note key name {name!r}")


def _check_public_key(public_key: bytes) -> None:
    if len(public_key) != _PUBLIC_KEY_SIZE:
        raise InvalidInput(f"an Ed25519 public key is {_PUBLIC_KEY_SIZE} bytes, not {len(public_key)}")


def note_key_hash(name: str, public_key: bytes) -> bytes:
    """The 4-byte key ID of an Ed25519 note key: SHA-256(name || 0x0A || 0x01 || public key)[:4].

    Raises InvalidInput for an invalid key name or a public key that is not 32 bytes.
    """
    _check_key_name(name)
    _check_public_key(public_key)
    digest = hashlib.sha256(_utf8(name, "the key name") + b"\n" + _ALG_ED25519 + public_key).digest()
    return digest[:_KEY_HASH_SIZE]


@dataclass(frozen=True)
class NoteVerifier:
    """A trusted Ed25519 note key: its name, 4-byte key ID and 32-byte public key.

    Construction raises InvalidInput unless the key ID is the one note_key_hash() gives for the name and key.
    """

    name: str
    key_hash: bytes
    public_key: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_hash", _as_bytes(self.key_hash, "the key ID"))
        object.__setattr__(self, "public_key", _as_bytes(self.public_key, "the public key"))
        if note_key_hash(self.name, self.public_key) != self.key_hash:
            raise InvalidInput(f"the key ID of note key {self.name!r} does not match its name and public key")


def verifier_key(name: str, public_key: bytes) -> str:
    """The verifier key text "name+hex(key ID)+base64(0x01 || public key)" that auditors pin.

    Raises InvalidInput for an invalid key name or a public key that is not 32 bytes.
    """
    key_hash = note_key_hash(name, public_key)
    return f"{name}+{key_hash.hex()}+{_b64(_ALG_ED25519 + public_key)}"


def parse_verifier_key(s: str) -> NoteVerifier:
    """Parse a verifier key as written by verifier_key(); surrounding whitespace (a final newline) is ignored.

    Raises InvalidInput for an invalid name, a key ID that is not 8 hex digits or does not match, a key that is
    not Ed25519 (type byte 0x01 and 32 bytes), or bad base64.
    """
    # The name holds no '+', so the first two '+' delimit it and the key ID; base64 may hold more of them.
    name, _, rest = s.strip().partition("+")
    hash_hex, separator, key_text = rest.partition("+")
    _check_key_name(name)
    if not separator or not _KEY_HASH_HEX.fullmatch(hash_hex):
        raise InvalidInput("a verifier key is name+<8 hex digits>+base64 key")
    key = _decode_base64(key_text, "the verifier key's public key")
    if key[:1] != _ALG_ED25519:
        raise InvalidInput("the verifier key is not an Ed25519 (type 0x01) note key")
    public_key = key[1:]
    _check_public_key(public_key)
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError as exc:
        raise InvalidInput("the verifier key's public key is not a valid Ed25519 key") from exc
    if note_key_hash(name, public_key) != bytes.fromhex(hash_hex):
        raise InvalidInput("the verifier key's key ID does not match its name and public key")
    return NoteVerifier(name, bytes.fromhex(hash_hex), public_key)


def _ed25519_valid(public_key: bytes, message: bytes, signature: bytes) -> bool:
    if len(signature) != _SIGNATURE_SIZE:
        return False
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


# -- signed notes ---------------------------------------------------------------------------------------------------

def _check_note_text(text: str) -> bytes:
    if not text.endswith("\n"):
        raise InvalidInput("note text must end with a newline")
    _check_no_controls(text, "the note text")
    return _utf8(text, "the note text")


def sign_note(text: str, name: str, public_key: bytes, sign: Callable[[bytes], bytes]) -> str:
    """Sign `text` as a note: the text, a blank line and one signature line by the key `name`.

    `sign` receives the UTF-8 text and must return the 64-byte Ed25519 signature by the key whose public key is
    `public_key`; the signature is checked against it before the note is released. The text may contain blank
    lines: readers split at the last one, which is always the separator. Raises InvalidInput for a text not
    ending in a newline or holding control characters, an invalid key name or a public key that is not 32
    bytes; VerificationFailed if the signer returns anything but a valid signature by `public_key`.
    """
    message = _check_note_text(text)
    key_hash = note_key_hash(name, public_key)
    signature = _as_bytes(sign(message), "the signer's signature")
    if len(signature) != _SIGNATURE_SIZE:
        raise VerificationFailed(f"the signer returned {len(signature)} bytes, not a 64-byte Ed25519 signature")
    # A wrong key label or a faulty token would otherwise publish a note nobody can verify.
    if not _ed25519_valid(public_key, message, signature):
        raise VerificationFailed(f"the signer's signature does not verify under the public key of {name!r}")
    return f"{text}\n{_SIGNATURE_PREFIX}{name} {_b64(key_hash + signature)}\n"


@dataclass(frozen=True)
class _SignatureLine:
    name: str
    key_hash: bytes
    signature: bytes


def _parse_signature_line(line: str) -> _SignatureLine:
    if not line.startswith(_SIGNATURE_PREFIX):
        raise InvalidInput("a note signature line must start with an em dash and a space")
    name, separator, encoded = line[len(_SIGNATURE_PREFIX):].partition(" ")
    if not separator:
        raise InvalidInput("a note signature line is '\u2014 name base64'")
    _check_key_name(name)
    blob = _decode_base64(encoded, f"the signature by {name!r}")
    if len(blob) <= _KEY_HASH_SIZE:
        raise InvalidInput(f"the signature by {name!r} is too short to hold a key ID and a signature")
    return _SignatureLine(name, blob[:_KEY_HASH_SIZE], blob[_KEY_HASH_SIZE:])


def _split_note(note: str) -> tuple[str, list[_SignatureLine]]:
    if not note.endswith("\n"):
        raise InvalidInput("a signed note must end with a newline")
    _check_no_controls(note, "the signed note")
    _utf8(note, "the signed note")
    # Signature lines are never empty, so the last blank line is the separator even if the text has blank lines.
    separator = note.rfind("\n\n")
    if separator < 0:
        raise InvalidInput("a signed note is text, a blank line, then signature lines")
    text, signature_block = note[:separator + 1], note[separator + 2:]
    if not signature_block:
        raise InvalidInput("the signed note has no signature lines")
    lines = signature_block[:-1].split("\n")
    if len(lines) > _MAX_SIGNATURES:
        raise InvalidInput(f"the signed note has more than {_MAX_SIGNATURES} signatures")
    return text, [_parse_signature_line(line) for line in lines]


def _index_verifiers(verifiers: Sequence[NoteVerifier]) -> dict[tuple[str, bytes], NoteVerifier]:
    known: dict[tuple[str, bytes], NoteVerifier] = {}
    for verifier in verifiers:
        previous = known.setdefault((verifier.name, verifier.key_hash), verifier)
        # Two trusted keys sharing name and ID would make the choice of key ambiguous.
        if previous.public_key != verifier.public_key:
            raise InvalidInput(f"two trusted keys share the name {verifier.name!r} and key ID")
    return known


def open_note(note: str, verifiers: Sequence[NoteVerifier]) -> tuple[str, list[str]]:
    """Verify a signed note against trusted keys; returns (text, names of the trusted keys that signed it).

    Every signature by a trusted key (same name and key ID) is verified; signatures by other keys are ignored, as
    the spec requires. Raises InvalidInput for a malformed note (or two trusted keys sharing a name and key ID),
    VerificationFailed if a trusted key's signature is bad or no trusted key signed.
    """
    text, signatures = _split_note(note)
    known = _index_verifiers(verifiers)
    message = text.encode("utf-8")
    verified: list[str] = []
    for line in signatures:
        verifier = known.get((line.name, line.key_hash))
        if verifier is None:
            continue
        if not _ed25519_valid(verifier.public_key, message, line.signature):
            raise VerificationFailed(f"the signature by {line.name!r} on the note does not verify")
        if verifier.name not in verified:
            verified.append(verifier.name)
    if not verified:
        raise VerificationFailed("the note is not signed by any trusted key")
    return text, verified


def sign_checkpoint(cp: Checkpoint, name: str, public_key: bytes, sign: Callable[[bytes], bytes]) -> str:
    """The checkpoint's body signed as a note (see sign_note, which gives the errors)."""
    return sign_note(cp.body(), name, public_key, sign)


def open_checkpoint(note: str, verifiers: Sequence[NoteVerifier]) -> Checkpoint:
    """Verify a signed checkpoint note (see open_note) and parse its text strictly (see parse_checkpoint)."""
    text, _ = open_note(note, verifiers)
    return parse_checkpoint(text)
