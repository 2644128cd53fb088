"""C2SP tlog-checkpoint and signed notes: the Go note vector, tampering, round trips, strict parsing."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.domain.checkpoint import (
    Checkpoint,
    NoteVerifier,
    note_key_hash,
    open_checkpoint,
    open_note,
    parse_checkpoint,
    parse_verifier_key,
    sign_checkpoint,
    sign_note,
    verifier_key,
)
from appliance.errors import InvalidInput, VerificationFailed

VECTORS = Path(__file__).parents[1] / "vectors"
ROOT = hashlib.sha256(b"some tree").digest()
ROOT_B64 = base64.b64encode(ROOT).decode()
EM_DASH = "\u2014"


def load_vector() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((VECTORS / "signed-note.json").read_text())
    return loaded


class Key:
    """A fresh software Ed25519 key standing in for the HSM."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.private = ed25519.Ed25519PrivateKey.generate()
        self.public = self.private.public_key().public_bytes(serialization.Encoding.Raw,
                                                             serialization.PublicFormat.Raw)
        self.verifier = parse_verifier_key(verifier_key(name, self.public))

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)

    def signature_line(self, text: str) -> str:
        blob = note_key_hash(self.name, self.public) + self.sign(text.encode())
        return f"{EM_DASH} {self.name} {base64.b64encode(blob).decode()}\n"


@pytest.fixture(scope="module")
def log_key() -> Key:
    return Key("example.com/log")


@pytest.fixture(scope="module")
def witness_key() -> Key:
    return Key("witness.example/w1")


# -- the Go vector --------------------------------------------------------------------------------------------------

def test_go_note_vector_verifies() -> None:
    vector = load_vector()
    verifier = parse_verifier_key(vector["verifier_key"])
    assert verifier.name == "PeterNeumann"
    assert verifier.key_hash.hex() == "c74f20a3"
    assert verifier_key(verifier.name, verifier.public_key) == vector["verifier_key"]
    text, names = open_note(vector["note"], [verifier])
    assert text == ("If you think cryptography is the answer to your problem,\n"
                    "then you don't know what your problem is.\n")
    assert names == ["PeterNeumann"]


def test_go_note_with_any_changed_text_character_fails() -> None:
    vector = load_vector()
    verifier = parse_verifier_key(vector["verifier_key"])
    note: str = vector["note"]
    text_length = note.rindex("\n\n") + 1
    for position in range(text_length):
        original = note[position]
        replacement = "x" if original != "x" else "y"
        tampered = note[:position] + replacement + note[position + 1:]
        # Moving a newline can also break the note's structure, which is malformed rather than mis-signed.
        expected: tuple[type[Exception], ...] = (
            (VerificationFailed,) if original != "\n" else (VerificationFailed, InvalidInput))
        with pytest.raises(expected):
            open_note(tampered, [verifier])


def test_go_note_with_any_changed_signature_byte_fails() -> None:
    vector = load_vector()
    verifier = parse_verifier_key(vector["verifier_key"])
    head, _, encoded = vector["note"].rstrip("\n").rpartition(" ")
    blob = base64.b64decode(encoded)
    assert len(blob) == 68
    for position in range(len(blob)):
        for bit in (0x01, 0x80):
            bad = blob[:position] + bytes([blob[position] ^ bit]) + blob[position + 1:]
            with pytest.raises(VerificationFailed):
                open_note(f"{head} {base64.b64encode(bad).decode()}\n", [verifier])


def test_go_note_under_another_name_is_an_unknown_signer() -> None:
    vector = load_vector()
    verifier = parse_verifier_key(vector["verifier_key"])
    with pytest.raises(VerificationFailed, match="not signed by any trusted key"):
        open_note(vector["note"].replace("PeterNeumann x08", "PeterNeumanm x08"), [verifier])


# -- signing and opening ------------------------------------------------------------------------------------------

def test_checkpoint_round_trips_through_a_signed_note(log_key: Key) -> None:
    cp = Checkpoint("example.com/log", 12345, ROOT)
    note = sign_checkpoint(cp, log_key.name, log_key.public, log_key.sign)
    assert note.startswith(f"example.com/log\n12345\n{ROOT_B64}\n\n{EM_DASH} example.com/log ")
    assert note.endswith("\n") and note.count("\n") == 5
    assert open_checkpoint(note, [log_key.verifier]) == cp
    blob = base64.b64decode(note.rstrip("\n").rpartition(" ")[2])
    assert blob[:4] == note_key_hash(log_key.name, log_key.public)
    log_key.private.public_key().verify(blob[4:], cp.body().encode())  # plain Ed25519 over the body


def test_checkpoint_with_extensions_round_trips(log_key: Key) -> None:
    cp = Checkpoint("example.com/log", 0, hashlib.sha256(b"").digest(), ("ext one", "\u00e9xt two"))
    assert cp.body().endswith("\next one\n\u00e9xt two\n")
    note = sign_checkpoint(cp, log_key.name, log_key.public, log_key.sign)
    assert open_checkpoint(note, [log_key.verifier]) == cp


def test_note_text_may_contain_blank_lines(log_key: Key) -> None:
    text = "first\n\nthird\n\n"
    note = sign_note(text, log_key.name, log_key.public, log_key.sign)
    assert open_note(note, [log_key.verifier]) == (text, [log_key.name])


def test_cosigned_note_reports_every_trusted_signer(log_key: Key, witness_key: Key) -> None:
    text = Checkpoint("example.com/log", 7, ROOT).body()
    note = sign_note(text, log_key.name, log_key.public, log_key.sign) + witness_key.signature_line(text)
    assert open_note(note, [log_key.verifier, witness_key.verifier]) == (text, [log_key.name, witness_key.name])
    assert open_note(note, [witness_key.verifier]) == (text, [witness_key.name])


def test_unknown_signers_are_ignored_next_to_a_trusted_one(log_key: Key, witness_key: Key) -> None:
    text = "hello\n"
    stranger = Key(log_key.name)  # same name, other key: a different key ID
    note = (sign_note(text, log_key.name, log_key.public, log_key.sign) + witness_key.signature_line(text)
            + stranger.signature_line("not even this text\n"))
    assert open_note(note, [log_key.verifier]) == (text, [log_key.name])


def test_a_note_signed_only_by_unknown_keys_is_refused(log_key: Key, witness_key: Key) -> None:
    note = sign_note("hello\n", witness_key.name, witness_key.public, witness_key.sign)
    with pytest.raises(VerificationFailed, match="not signed by any trusted key"):
        open_note(note, [log_key.verifier])
    with pytest.raises(VerificationFailed):
        open_note(note, [])
    impostor = Key(log_key.name)
    with pytest.raises(VerificationFailed):
        open_checkpoint(sign_checkpoint(Checkpoint("o", 1, ROOT), impostor.name, impostor.public, impostor.sign),
                        [log_key.verifier])


def test_a_bad_signature_by_a_trusted_key_fails_even_next_to_a_good_one(log_key: Key, witness_key: Key) -> None:
    text = "hello\n"
    forged = witness_key.signature_line("other text\n")
    note = sign_note(text, log_key.name, log_key.public, log_key.sign) + forged
    with pytest.raises(VerificationFailed, match=witness_key.name):
        open_note(note, [log_key.verifier, witness_key.verifier])


def test_a_short_signature_by_a_trusted_key_fails(log_key: Key) -> None:
    blob = note_key_hash(log_key.name, log_key.public) + log_key.sign(b"hello\n")[:63]
    note = f"hello\n\n{EM_DASH} {log_key.name} {base64.b64encode(blob).decode()}\n"
    with pytest.raises(VerificationFailed):
        open_note(note, [log_key.verifier])


def test_signer_output_is_checked(log_key: Key, witness_key: Key) -> None:
    with pytest.raises(VerificationFailed, match="64-byte"):
        sign_note("hello\n", log_key.name, log_key.public, lambda m: log_key.sign(m)[:63])
    with pytest.raises(VerificationFailed, match="does not verify"):
        sign_note("hello\n", log_key.name, log_key.public, witness_key.sign)  # wrong key behind the label
    with pytest.raises(VerificationFailed):
        sign_note("hello\n", log_key.name, log_key.public, lambda m: bytes(64))


@pytest.mark.parametrize("text", ["", "no final newline", "a\rb\n", "tab\there\n", "nul\x00\n", "\ud800\n"])
def test_sign_note_refuses_bad_text(log_key: Key, text: str) -> None:
    with pytest.raises(InvalidInput):
        sign_note(text, log_key.name, log_key.public, log_key.sign)


@pytest.mark.parametrize("name", ["", "a+b", "a b", "a\tb", "a\u00a0b", "a\u2003b", "a\nb", "a\x01b"])
def test_invalid_key_names_are_refused(log_key: Key, name: str) -> None:
    with pytest.raises(InvalidInput):
        sign_note("hello\n", name, log_key.public, log_key.sign)
    with pytest.raises(InvalidInput):
        verifier_key(name, log_key.public)


def test_public_key_must_be_32_bytes(log_key: Key) -> None:
    with pytest.raises(InvalidInput):
        sign_note("hello\n", log_key.name, log_key.public[:31], log_key.sign)
    with pytest.raises(InvalidInput):
        verifier_key(log_key.name, log_key.public + b"\x00")


def malformed_notes(key: Key) -> list[str]:
    good = sign_note("hello\n", key.name, key.public, key.sign)
    line = good.split("\n")[2]
    encoded = line.rpartition(" ")[2]
    return [
        "",
        "hello\n",
        good.rstrip("\n"),
        good.replace("\n\n", "\n"),
        "hello\n\n",
        good.replace(EM_DASH, "-"),
        good.replace(EM_DASH + " ", EM_DASH),
        good.replace(f" {encoded}", f"  {encoded}"),
        good.replace(f" {encoded}", f" {encoded} extra"),
        good.replace(f" {encoded}", ""),
        good.replace(encoded, encoded.rstrip("=")),
        good.replace(encoded, encoded[:-4] + "!!!="),
        good.replace(encoded, base64.b64encode(b"\x01\x02\x03\x04").decode()),
        good.replace("\n", "\r\n"),
        good.replace("hello", "hel\x7f\x1blo"),
        good + "trailing garbage\n",
        good + line + "\n\n",
        "hello\n\n" + (line + "\n") * 101,
        good.replace(key.name, "bad+name"),
    ]


def test_malformed_notes_are_invalid_input(log_key: Key) -> None:
    for note in malformed_notes(log_key):
        with pytest.raises(InvalidInput):
            open_note(note, [log_key.verifier])


def test_up_to_a_hundred_signatures_are_accepted(log_key: Key) -> None:
    good = sign_note("hello\n", log_key.name, log_key.public, log_key.sign)
    line = good.split("\n")[2] + "\n"
    assert open_note(good + line * 99, [log_key.verifier]) == ("hello\n", [log_key.name])


def test_ambiguous_trusted_keys_are_refused(log_key: Key) -> None:
    note = sign_note("hello\n", log_key.name, log_key.public, log_key.sign)
    twin = NoteVerifier.__new__(NoteVerifier)  # a colliding key ID cannot be built honestly; force one
    object.__setattr__(twin, "name", log_key.name)
    object.__setattr__(twin, "key_hash", log_key.verifier.key_hash)
    object.__setattr__(twin, "public_key", bytes(32))
    with pytest.raises(InvalidInput, match="share the name"):
        open_note(note, [log_key.verifier, twin])
    assert open_note(note, [log_key.verifier, log_key.verifier])[1] == [log_key.name]


def test_open_checkpoint_refuses_a_well_signed_note_that_is_not_a_checkpoint(log_key: Key) -> None:
    note = sign_note("example.com/log\n012\n" + ROOT_B64 + "\n", log_key.name, log_key.public, log_key.sign)
    assert open_note(note, [log_key.verifier])[1] == [log_key.name]
    with pytest.raises(InvalidInput):
        open_checkpoint(note, [log_key.verifier])


# -- verifier keys ------------------------------------------------------------------------------------------------

def test_verifier_key_format(log_key: Key) -> None:
    text = verifier_key(log_key.name, log_key.public)
    name, key_id, key = text.split("+", 2)
    assert name == log_key.name
    assert key_id == hashlib.sha256(name.encode() + b"\n\x01" + log_key.public).digest()[:4].hex()
    assert base64.b64decode(key) == b"\x01" + log_key.public
    parsed = parse_verifier_key(text + "\n")  # as served over HTTP, with a final newline
    assert parsed == NoteVerifier(log_key.name, bytes.fromhex(key_id), log_key.public)


def bad_verifier_keys() -> list[str]:
    vector = load_vector()["verifier_key"]
    name, key_id, key = vector.split("+", 2)
    raw = base64.b64decode(key)
    other_type = base64.b64encode(b"\x02" + raw[1:]).decode()
    too_long = base64.b64encode(raw + b"\x00").decode()
    return [
        "",
        name,
        f"{name}+{key_id}",
        f"+{key_id}+{key}",
        f"Peter Neumann+{key_id}+{key}",
        f"{name}+{key_id[:7]}+{key}",
        f"{name}+{key_id}0+{key}",
        f"{name}+zz4f20a3+{key}",
        f"{name}+ c74f20a+{key}",
        f"{name}+00000000+{key}",
        f"{name}x+{key_id}+{key}",
        f"{name}+{key_id}+{other_type}",
        f"{name}+{key_id}+{base64.b64encode(raw[:-1]).decode()}",
        f"{name}+{key_id}+{too_long}",
        f"{name}+{key_id}+{key}=",
        f"{name}+{key_id}+{key[:-2]}X=",
        f"{name}+{key_id}+{key} trailing",
    ]


@pytest.mark.parametrize("text", bad_verifier_keys())
def test_bad_verifier_keys_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_verifier_key(text)


def test_note_verifier_checks_its_key_id(log_key: Key) -> None:
    with pytest.raises(InvalidInput):
        NoteVerifier(log_key.name, b"\x00\x00\x00\x00", log_key.public)
    with pytest.raises(InvalidInput):
        NoteVerifier(log_key.name, log_key.verifier.key_hash, log_key.public[:31])


def test_uppercase_key_id_is_accepted() -> None:
    vector = load_vector()["verifier_key"]
    assert parse_verifier_key(vector.replace("c74f20a3", "C74F20A3")) == parse_verifier_key(vector)


# -- checkpoint parsing -------------------------------------------------------------------------------------------

def test_parse_checkpoint() -> None:
    cp = parse_checkpoint(f"example.com/behind-the-sofa\n20852163\n{ROOT_B64}\n")
    assert cp == Checkpoint("example.com/behind-the-sofa", 20852163, ROOT)
    assert parse_checkpoint(f"o\n0\n{ROOT_B64}\nx\ny z\n").extensions == ("x", "y z")
    assert parse_checkpoint(f"o\n{2**63 - 1}\n{ROOT_B64}\n").size == 2**63 - 1


def malformed_checkpoints() -> list[str]:
    short = base64.b64encode(ROOT[:31]).decode()
    loose = ROOT_B64[:-2] + chr(ord(ROOT_B64[-2]) + 1) + "="  # same bytes, non-zero padding bits
    url_safe = base64.urlsafe_b64encode(b"\xfb" * 32).decode()
    return [
        "",
        "\n",
        f"o\n1\n{ROOT_B64}",
        f"o\n01\n{ROOT_B64}\n",
        f"o\n00\n{ROOT_B64}\n",
        f"o\n+1\n{ROOT_B64}\n",
        f"o\n-1\n{ROOT_B64}\n",
        f"o\n 1\n{ROOT_B64}\n",
        f"o\n1 \n{ROOT_B64}\n",
        f"o\n1_000\n{ROOT_B64}\n",
        f"o\n\u0661\n{ROOT_B64}\n",
        f"o\n0x10\n{ROOT_B64}\n",
        f"o\n\n{ROOT_B64}\n",
        f"o\n{2**63}\n{ROOT_B64}\n",
        f"o\n{'9' * 5000}\n{ROOT_B64}\n",
        f"o\n1\n{short}\n",
        f"o\n1\n{base64.b64encode(ROOT + b'x').decode()}\n",
        f"o\n1\n{ROOT_B64.rstrip('=')}\n",
        f"o\n1\n{loose}\n",
        f"o\n1\n{ROOT_B64[:-1]}!\n",
        f"o\n1\n{url_safe}\n",
        f"o\n1\n {ROOT_B64}\n",
        f"\n1\n{ROOT_B64}\n",
        "o\n1\n",
        f"o\n1\n{ROOT_B64}\n\n",
        f"o\n1\n{ROOT_B64}\next\n\nmore\n",
        f"o\r\n1\r\n{ROOT_B64}\r\n",
        f"o\t\n1\n{ROOT_B64}\n",
    ]


@pytest.mark.parametrize("text", malformed_checkpoints())
def test_malformed_checkpoints_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_checkpoint(text)


@pytest.mark.parametrize(("args", "kwargs"), [
    (("", 1, ROOT), {}),
    (("a\nb", 1, ROOT), {}),
    (("o", -1, ROOT), {}),
    (("o", 2**63, ROOT), {}),
    (("o", True, ROOT), {}),
    (("o", 1.5, ROOT), {}),
    (("o", 1, ROOT[:31]), {}),
    (("o", 1, 32), {}),
    (("o", 1, ROOT), {"extensions": ("",)}),
    (("o", 1, ROOT), {"extensions": ("a\nb",)}),
    (("o", 1, ROOT), {"extensions": "abc"}),
])
def test_checkpoint_values_that_cannot_be_written_are_refused(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        Checkpoint(*args, **kwargs)


@pytest.mark.parametrize(("origin", "extensions"), [("\ud800", ()), ("o", ("\udfff",))])
def test_checkpoint_refuses_text_that_is_not_unicode(origin: str, extensions: tuple[str, ...]) -> None:
    # Eip712Domain and note key names refuse lone surrogates; a checkpoint body must be UTF-8 as well.
    with pytest.raises(InvalidInput):
        Checkpoint(origin, 1, ROOT, extensions)
    with pytest.raises(InvalidInput):
        parse_checkpoint(f"{origin}\n1\n{ROOT_B64}\n" + "".join(line + "\n" for line in extensions))


def test_a_checkpoint_that_is_not_unicode_is_never_signed(log_key: Key) -> None:
    # Whatever Checkpoint() accepts, the note signer refuses text that UTF-8 cannot carry, before calling the HSM.
    calls: list[bytes] = []

    def sign(message: bytes) -> bytes:
        calls.append(message)
        return log_key.sign(message)

    try:
        cp = Checkpoint("\ud800", 1, ROOT)
    except InvalidInput:
        return
    with pytest.raises(InvalidInput):
        sign_checkpoint(cp, log_key.name, log_key.public, sign)
    assert calls == []


def test_checkpoint_accepts_root_from_a_database_driver() -> None:
    assert Checkpoint("o", 1, memoryview(ROOT)) == Checkpoint("o", 1, ROOT)  # type: ignore[arg-type]


line_text = st.text(st.characters(min_codepoint=0x20, codec="utf-8"), min_size=1, max_size=30)


@given(line_text, st.integers(0, 2**63 - 1), st.binary(min_size=32, max_size=32), st.lists(line_text, max_size=3))
@settings(max_examples=200, deadline=None)
def test_checkpoint_body_parses_back(origin: str, size: int, root: bytes, extensions: list[str]) -> None:
    cp = Checkpoint(origin, size, root, tuple(extensions))
    assert parse_checkpoint(cp.body()) == cp


@given(st.text(max_size=60))
@settings(max_examples=300, deadline=None)
def test_parsers_raise_only_invalid_input(text: str) -> None:
    for parse in (parse_checkpoint, parse_verifier_key, lambda t: open_note(t, [])):
        parser: Callable[[str], object] = parse
        try:
            parser(text)
        except (InvalidInput, VerificationFailed):
            pass
