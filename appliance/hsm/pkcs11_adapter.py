"""PKCS#11 adapter: the only module that imports `pkcs11`.

One `Hsm` per process holds one logged-in session. python-pkcs11 0.10 initializes the library with
`C_Initialize(NULL)`, which promises SoftHSM2 that no two threads call it at once, so every call into the
library goes through one lock. Worker processes each build their own `Hsm` after the fork.

ECDSA keys sign a digest computed on the host (`CKM_ECDSA`); Ed25519 keys sign the message (`CKM_EDDSA`).
Every python-pkcs11 error is turned into `HsmUnavailable` (infrastructure) or `ConfigError` (wrong PIN,
missing token or key), so nothing above this module sees a foreign exception.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.util.ec import encode_named_curve_parameters

from appliance.errors import ApplianceError, ConfigError, HsmUnavailable, Problem

T = TypeVar("T")


class Curve(enum.Enum):
    """The three key types of the external contract, with their PKCS#11 parameters."""

    SECP256K1 = "secp256k1"
    P256 = "P-256"
    ED25519 = "Ed25519"

    @property
    def key_type(self) -> Any:
        return KeyType.EC_EDWARDS if self is Curve.ED25519 else KeyType.EC

    @property
    def ec_params(self) -> bytes:
        oid = {"secp256k1": "secp256k1", "P-256": "secp256r1", "Ed25519": "1.3.101.112"}[self.value]
        return bytes(encode_named_curve_parameters(oid))

    @property
    def keygen_mechanism(self) -> Any:
        return Mechanism.EC_EDWARDS_KEY_PAIR_GEN if self is Curve.ED25519 else Mechanism.EC_KEY_PAIR_GEN

    @property
    def sign_mechanism(self) -> Any:
        return Mechanism.EDDSA if self is Curve.ED25519 else Mechanism.ECDSA


@dataclass(frozen=True)
class KeySpec:
    """A signing key the appliance uses: its label in the token and its curve."""

    label: str
    curve: Curve


@dataclass(frozen=True)
class KeyAttributes:
    """The security-relevant attributes of a private key, read back from the token."""

    label: str
    token: bool
    private: bool
    sensitive: bool
    extractable: bool
    always_sensitive: bool
    never_extractable: bool
    local: bool
    sign: bool
    derive: bool
    decrypt: bool
    unwrap: bool

    def problems(self) -> list[str]:
        """What makes this key unfit for the appliance (empty when it is fit)."""
        found = []
        if not self.token:
            found.append("is not a token object")
        if not self.private:
            found.append("is not CKA_PRIVATE")
        if not self.sensitive:
            found.append("is not CKA_SENSITIVE")
        if self.extractable:
            found.append("is CKA_EXTRACTABLE")
        # A key that is sensitive and non-extractable now may still have left the HSM before: it must have been
        # generated inside the token (CKA_LOCAL) and have been so from its creation on.
        if not self.local:
            found.append("was not generated in the token (CKA_LOCAL is false: imported)")
        if self.sensitive and not self.always_sensitive:
            found.append("was not always CKA_SENSITIVE (its private value may have been read out)")
        if not self.extractable and not self.never_extractable:
            found.append("was CKA_EXTRACTABLE once (it may have been exported)")
        if not self.sign:
            found.append("cannot sign")
        for name, allowed in (("derive", self.derive), ("decrypt", self.decrypt), ("unwrap", self.unwrap)):
            if allowed:
                found.append(f"allows {name} (a signing key has one use)")
        return found


# Errors after which the session is worth re-opening once: the token went away or the session died.
_SESSION_LOST = (
    p11.SessionHandleInvalid,
    p11.SessionClosed,
    p11.DeviceRemoved,
    p11.TokenNotPresent,
    p11.DeviceError,
    p11.GeneralError,
    p11.UserNotLoggedIn,
    p11.ObjectHandleInvalid,
    p11.KeyHandleInvalid,
)


_OPEN_ATTEMPTS = 5  # a token not found, or an error listing it or logging in, is tried this often (about 0.5 s)


def softhsm_open_lock(module: str, conf: str | None = None) -> Path | None:
    """The lock file that the processes opening one SoftHSM2 token directory take in turn, or None for another
    PKCS#11 module (or a configuration naming no token directory).

    Why: at every successful C_Login SoftHSM2 rewrites the token's `token.object` (the PIN-count flags), and it
    rewrites a file by opening it with fopen("w"), which truncates it, *before* it takes the file's fcntl lock.
    A process that lists tokens at that moment (C_Initialize, C_GetSlotList) reads an empty or half-written
    `token.object` and sees a token without its label: "no token labelled ...", or a GeneralError. Loading the
    library, finding the token and logging in under one exclusive lock per token directory means no appliance
    process reads the token list while another one's login rewrites it. The lock is `<tokendir>.open.lock`,
    beside the token directory, so every configuration naming that directory shares it."""
    if "softhsm" not in os.path.basename(module).lower():
        return None
    path = conf or os.environ.get("SOFTHSM2_CONF") or "/etc/softhsm/softhsm2.conf"
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key.strip() == "directories.tokendir" and value.strip():
            return Path(value.strip().rstrip("/") + ".open.lock")
    return None


@contextlib.contextmanager
def _exclusive(lock_file: Path | None) -> Iterator[None]:
    """Hold `lock_file` (flock, exclusive) across processes; without a usable lock file, nothing to hold."""
    fd = None
    if lock_file is not None:
        try:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            fd = None  # a read-only location: opening still works, only without the guard
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the flock


class _Transient(Exception):
    """Opening the token failed in a way another attempt may not: `error` is what to raise if it persists."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


MISSING_KEY = "missing from the token (run `appliance init`)"  # check_keys' problem for a key that is not there


class PinRejected(ConfigError):
    """The token refused the PIN (or it is locked): never retried on its own, each try counts toward a lockout."""


class Hsm:
    """A logged-in PKCS#11 token, safe to share between the threads of one process."""

    def __init__(self, module: str, token_label: str, pin: Callable[[], str]) -> None:
        self._module = module
        self._token_label = token_label
        self._pin = pin
        self._lock = threading.RLock()
        self._session: Any = None
        self._keys: dict[str, Any] = {}
        self._data: dict[str, list[Any]] = {}  # data object handles by label (see data_values)
        self._data_at: dict[str, float] = {}
        self._pid = os.getpid()
        self._draining = False  # set by drain(): no HSM call starts any more (see drain)
        self._rescanned = 0.0  # when _rescan last initialized the library again
        #: called with (operation, seconds, ok) after each HSM call; metrics hook in here.
        self.observer: Callable[[str, float, bool], None] | None = None

    # -- session -------------------------------------------------------------------------------------------

    def _open(self) -> Any:
        if self._pid != os.getpid():
            # A forked child inherits a session that is not valid in it: start over in this process.
            self._session, self._keys, self._data, self._pid = None, {}, {}, os.getpid()
        if self._session is not None:
            return self._session
        with _exclusive(softhsm_open_lock(self._module)):  # see softhsm_open_lock: the real cause of the race
            return self._open_token()

    def _open_token(self) -> Any:
        try:
            lib = pkcs11.lib(self._module)
        except (RuntimeError, OSError, p11.PKCS11Error) as exc:
            raise ConfigError(f"cannot load PKCS#11 module {self._module}: {exc}") from exc
        for attempt in range(1, _OPEN_ATTEMPTS + 1):
            try:
                self._session = self._login(lib)
                return self._session
            except _Transient as exc:
                # Appliance processes open the token in turn (softhsm_open_lock), but another program logging in
                # to the same token (softhsm2-util, pkcs11-tool) still rewrites its files unguarded: a missing token
                # is believed only when it stays so.
                if attempt == _OPEN_ATTEMPTS:
                    raise exc.error from exc.__cause__
            time.sleep(0.05 * attempt)
            try:
                lib.reinitialize()  # this Hsm has no session yet (another one in this process re-opens its own)
            except p11.PKCS11Error:
                pass  # the next attempt reports what is wrong
        raise AssertionError("unreachable")

    def _login(self, lib: Any) -> Any:
        """Find the token and open a logged-in session; _Transient for what may succeed when tried again."""
        try:
            token = lib.get_token(token_label=self._token_label)
        except p11.NoSuchToken as exc:
            raise _Transient(ConfigError(f"no token labelled {self._token_label!r} in {self._module}"
                                         " (is SOFTHSM2_CONF pointing at the right token directory?)")) from exc
        except p11.PKCS11Error as exc:
            raise _Transient(HsmUnavailable(f"cannot list tokens: {type(exc).__name__}")) from exc
        try:
            return token.open(user_pin=self._pin(), rw=True)
        except p11.UserAlreadyLoggedIn:
            # Login is per process and token: another session of ours is still logged in.
            return token.open(rw=True)
        except (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange) as exc:
            raise PinRejected(f"the PIN for token {self._token_label!r} is wrong") from exc
        except p11.PinLocked as exc:
            raise PinRejected(f"the user PIN of token {self._token_label!r} is locked") from exc
        except p11.PKCS11Error as exc:
            raise _Transient(HsmUnavailable(f"cannot open a session: {type(exc).__name__}")) from exc

    def _drop_session(self) -> None:
        session, self._session, self._keys, self._data = self._session, None, {}, {}
        if session is not None:
            try:
                session.close()
            except p11.PKCS11Error:
                pass  # the session is already gone; nothing to release

    def _call(self, operation: str, fn: Callable[[Any], T]) -> T:
        """Run fn(session) under the lock; re-open a lost session once; wrap foreign errors."""
        with self._lock:
            if self._draining:
                raise HsmUnavailable("this process is shutting down: it starts no HSM call")
            started = time.perf_counter()
            ok = False
            try:
                for attempt in (1, 2):
                    session = self._open()
                    try:
                        result = fn(session)
                        ok = True
                        return result
                    except _SESSION_LOST as exc:
                        self._drop_session()
                        if attempt == 2:
                            raise HsmUnavailable(f"HSM {operation} failed: {type(exc).__name__}") from exc
                    except p11.PKCS11Error as exc:
                        raise HsmUnavailable(f"HSM {operation} failed: {type(exc).__name__}") from exc
                raise AssertionError("unreachable")
            finally:
                if self.observer is not None:
                    self.observer(operation, time.perf_counter() - started, ok)

    def _rescan(self) -> Any | None:
        """A session on a fresh view of the token (C_Finalize, C_Initialize, log in), at most once a second; None
        when it was done less than a second ago or fails. Called when an object is not found: SoftHSM2 keeps its
        list of a token's objects from when it last saw the token change, so objects it could not read for a while
        (token files unreadable, being restored) stay invisible to this process until it initializes again."""
        now = time.monotonic()
        if now - self._rescanned < 1.0:
            return None
        self._rescanned = now
        self._drop_session()
        try:
            pkcs11.lib(self._module).reinitialize()
            return self._open()
        except (ApplianceError, RuntimeError, OSError, p11.PKCS11Error):
            return None

    def drain(self) -> None:
        """Start no HSM call from now on; a call in progress finishes. Called when the process is told to stop, so
        that the supervisor's SIGKILL after the grace period (gunicorn's graceful_timeout, systemd's stop timeout)
        never lands inside a call: SoftHSM2 rewrites token files by truncating them first, and a process killed
        in between leaves the token without its objects. Async-signal-safe: it only sets a flag."""
        self._draining = True

    def close(self) -> None:
        """Close the session (logging out when it is the last one)."""
        with self._lock:
            self._drop_session()

    def ping(self) -> None:
        """Raise HsmUnavailable (or ConfigError) unless the token answers."""
        self._call("ping", lambda s: s.token.label)

    # -- keys ----------------------------------------------------------------------------------------------

    def _private_key(self, session: Any, label: str) -> Any:
        key = self._keys.get(label)
        if key is None:
            try:
                key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
            except p11.NoSuchKey as exc:
                again = self._rescan()
                try:
                    if again is None:
                        raise
                    key = again.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
                except p11.NoSuchKey:
                    raise ConfigError(f"no private key labelled {label!r} in token {self._token_label!r}"
                                      " (run `appliance init`)") from exc
            except p11.MultipleObjectsReturned as exc:
                raise ConfigError(f"several private keys are labelled {label!r}: labels must be unique") from exc
            self._keys[label] = key
        return key

    def has_key(self, label: str) -> bool:
        """Whether a private key with this label exists in the token."""

        def find(session: Any) -> bool:
            template = {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: label}
            if any(True for _ in session.get_objects(template)):
                return True
            again = self._rescan()
            return again is not None and any(True for _ in again.get_objects(template))

        return self._call("find", find)

    def generate(self, spec: KeySpec) -> None:
        """Generate a non-extractable, sign-only key pair inside the token (CKA_TOKEN, CKA_PRIVATE)."""

        def gen(session: Any) -> None:
            params = session.create_domain_parameters(
                spec.curve.key_type, {Attribute.EC_PARAMS: spec.curve.ec_params}, local=True)
            params.generate_keypair(
                store=True,
                label=spec.label,
                mechanism=spec.curve.keygen_mechanism,
                public_template={Attribute.TOKEN: True, Attribute.VERIFY: True, Attribute.DERIVE: False,
                                 Attribute.ENCRYPT: False, Attribute.WRAP: False},
                private_template={Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                                  Attribute.EXTRACTABLE: False, Attribute.SIGN: True, Attribute.DERIVE: False,
                                  Attribute.DECRYPT: False, Attribute.UNWRAP: False},
            )

        self._call("generate", gen)

    def attributes(self, label: str) -> KeyAttributes:
        """Read back the security attributes of the private key `label`."""

        def read(session: Any) -> KeyAttributes:
            key = self._private_key(session, label)

            def flag(attr: Any) -> bool:
                try:
                    return bool(key[attr])
                except (p11.AttributeTypeInvalid, p11.AttributeSensitive):
                    return False

            return KeyAttributes(
                label=label, token=flag(Attribute.TOKEN), private=flag(Attribute.PRIVATE),
                sensitive=flag(Attribute.SENSITIVE), extractable=flag(Attribute.EXTRACTABLE),
                always_sensitive=flag(Attribute.ALWAYS_SENSITIVE),
                never_extractable=flag(Attribute.NEVER_EXTRACTABLE), local=flag(Attribute.LOCAL),
                sign=flag(Attribute.SIGN),
                derive=flag(Attribute.DERIVE), decrypt=flag(Attribute.DECRYPT), unwrap=flag(Attribute.UNWRAP))

        return self._call("attributes", read)

    def public_point(self, spec: KeySpec) -> bytes:
        """The public key: 65-byte uncompressed point for ECDSA curves, 32 bytes for Ed25519."""

        def read(session: Any) -> bytes:
            try:
                pub = session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=spec.label)
            except p11.NoSuchKey as exc:
                again = self._rescan()
                try:
                    if again is None:
                        raise
                    pub = again.get_key(object_class=ObjectClass.PUBLIC_KEY, label=spec.label)
                except p11.NoSuchKey:
                    raise ConfigError(f"no public key labelled {spec.label!r} in token {self._token_label!r}"
                                      ) from exc
            params = bytes(pub[Attribute.EC_PARAMS])
            if params != spec.curve.ec_params:
                raise ConfigError(f"key {spec.label!r} is not on curve {spec.curve.value}")
            return _unwrap_octet_string(bytes(pub[Attribute.EC_POINT]))

        return self._call("public-key", read)

    def sign(self, spec: KeySpec, data: bytes) -> bytes:
        """Raw signature: r||s over a host-computed digest (ECDSA), or Ed25519 over the message."""

        def do_sign(session: Any) -> bytes:
            return bytes(self._private_key(session, spec.label).sign(data, mechanism=spec.curve.sign_mechanism))

        return self._call("sign", do_sign)


    # -- data objects ------------------------------------------------------------------------------------------

    def read_data(self, label: str) -> bytes | None:
        """The value of the one data object (CKO_DATA) labelled `label`, or None when there is none."""
        values = self.data_values(label, fresh=True)
        if len(values) > 1:
            raise ConfigError(f"several data objects are labelled {label!r}: labels must be unique")
        return values[0] if values else None

    def store_data(self, label: str, value: bytes) -> None:
        """Create a token data object that only a logged-in user reads and nobody modifies (CKA_PRIVATE,
        CKA_MODIFIABLE=false): a fact the database must not be able to change."""

        def create(session: Any) -> None:
            self._data[label] = [*self._data.get(label, []), _create_data(session, label, value)]

        self._call("store-data", create)

    def data_values(self, label: str, *, fresh: bool = False) -> list[bytes]:
        """The values of every data object labelled `label` (usually one; several after a crash in replace_data).

        Object handles are remembered: without `fresh`, a value is read through the remembered handle (cheap; a
        handle whose object another process replaced is invalid, and then the objects are looked up again) as
        long as it was looked up less than a second ago. `fresh` always looks them up (a search of the whole
        token): use it under the caller's cross-process lock, before replace_data, so that an object another
        process created is never missed."""

        def read(session: Any) -> list[bytes]:
            cached = self._data.get(label)
            if cached is not None and not fresh and time.monotonic() - self._data_at.get(label, 0.0) < 1.0:
                try:
                    return [bytes(o[Attribute.VALUE]) for o in cached]
                except p11.ObjectHandleInvalid:
                    pass  # replaced by another process: look it up again
            template = {Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: label}
            found = list(session.get_objects(template))
            if not found and (again := self._rescan()) is not None:
                found = list(again.get_objects(template))
            if found:  # an absence is never remembered: a token that could not show its objects may again
                self._data[label], self._data_at[label] = found, time.monotonic()
            else:
                self._data.pop(label, None)
            return [bytes(o[Attribute.VALUE]) for o in found]

        return self._call("read-data", read)

    def replace_data(self, label: str, value: bytes) -> None:
        """Replace every data object labelled `label` by one holding `value` (private, not modifiable).

        SoftHSM2 (like the PKCS#11 spec for many tokens) does not let CKA_VALUE change, so the new object is
        created first and the old ones destroyed after: a crash in between leaves both, never neither, and the
        caller's encoding tells them apart (a version counter). The caller holds its cross-process lock."""

        def replace(session: Any) -> None:
            old = list(session.get_objects({Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: label}))
            new = _create_data(session, label, value)
            self._data[label], self._data_at[label] = [new], time.monotonic()
            for obj in old:
                obj.destroy()

        self._call("write-data", replace)

    def destroy_data(self, label: str) -> int:
        """Destroy every data object labelled `label`; returns how many (tests and decommissioning only)."""

        def destroy(session: Any) -> int:
            found = list(session.get_objects({Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: label}))
            for obj in found:
                obj.destroy()
            self._data.pop(label, None)
            return len(found)

        return self._call("destroy-data", destroy)


def _create_data(session: Any, label: str, value: bytes) -> Any:
    return session.create_object({Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: label, Attribute.VALUE: value,
                                  Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.MODIFIABLE: False})


def _unwrap_octet_string(value: bytes) -> bytes:
    """CKA_EC_POINT is a DER OCTET STRING around the point (SoftHSM2 and the spec); accept a bare point too."""
    if len(value) >= 2 and value[0] == 0x04:
        length = value[1]
        if length < 0x80 and len(value) == 2 + length:
            return value[2:]
        if length == 0x81 and len(value) >= 3 and len(value) == 3 + value[2]:
            return value[3:]
    return value


def check_keys(hsm: Hsm, specs: list[KeySpec]) -> None:
    """Refuse to run with a key that is missing, extractable, not sensitive or allows more than signing."""
    problems = []
    for spec in specs:
        if not hsm.has_key(spec.label):
            problems.append(Problem(spec.label, MISSING_KEY))
            continue
        for issue in hsm.attributes(spec.label).problems():
            problems.append(Problem(spec.label, issue))
        hsm.public_point(spec)  # also checks the curve
    if problems:
        raise ConfigError("the HSM keys are not fit for signing", problems)
