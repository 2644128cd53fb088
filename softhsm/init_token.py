"""Initialise a free SoftHSM2 token with PINs read from the environment, never from a command line.

    SO_PIN=... USER_PIN=... python3 softhsm/init_token.py MODULE LABEL

`softhsm2-util --init-token` takes the PINs as arguments (readable by every user in /proc/PID/cmdline) or from a
terminal; this does the same through PKCS#11 itself (C_InitToken, then C_InitPIN as the SO), with the PINs in
this process's environment only (/proc/PID/environ is readable by its owner alone). Standard library only, so
it runs before the project's virtualenv exists. Exit status 0 on success; a message on stderr otherwise.
"""

from __future__ import annotations

import ctypes
import os
import sys

CKF_RW_SESSION, CKF_SERIAL_SESSION = 0x2, 0x4
CKF_TOKEN_INITIALIZED = 0x400
CKU_SO = 0
FLAGS_OFFSET = 96  # CK_TOKEN_INFO: label[32], manufacturerID[32], model[16], serialNumber[16], then flags


class Pkcs11Error(Exception):
    pass


def _check(name: str, rv: int) -> None:
    if rv != 0:
        raise Pkcs11Error(f"{name} returned CKR 0x{rv:08x}")


def _slots(lib: ctypes.CDLL) -> list[int]:
    count = ctypes.c_ulong(0)
    _check("C_GetSlotList", lib.C_GetSlotList(ctypes.c_ubyte(1), None, ctypes.byref(count)))
    slots = (ctypes.c_ulong * count.value)()
    _check("C_GetSlotList", lib.C_GetSlotList(ctypes.c_ubyte(1), slots, ctypes.byref(count)))
    return list(slots[: count.value])


def _token(lib: ctypes.CDLL, slot: int) -> tuple[str, int]:
    """(label, flags) of the token in `slot`."""
    info = ctypes.create_string_buffer(512)  # larger than CK_TOKEN_INFO on every ABI
    _check("C_GetTokenInfo", lib.C_GetTokenInfo(ctypes.c_ulong(slot), info))
    flags = ctypes.c_ulong.from_buffer_copy(info.raw[FLAGS_OFFSET: FLAGS_OFFSET + ctypes.sizeof(ctypes.c_ulong)])
    return info.raw[:32].decode("utf-8", "replace").rstrip(" "), flags.value


def init_token(module: str, label: str, so_pin: bytes, user_pin: bytes) -> int:
    """Initialise the first free token as `label` with the SO and user PINs; returns its slot id."""
    lib = ctypes.CDLL(module)
    _check("C_Initialize", lib.C_Initialize(None))
    try:
        free = [s for s in _slots(lib) if not _token(lib, s)[1] & CKF_TOKEN_INITIALIZED]
        if not free:
            raise Pkcs11Error("no free token slot")
        padded = label.encode("utf-8").ljust(32, b" ")
        if len(padded) > 32:
            raise Pkcs11Error("the label is longer than 32 bytes")
        _check("C_InitToken", lib.C_InitToken(ctypes.c_ulong(free[0]), so_pin, ctypes.c_ulong(len(so_pin)), padded))
        slot = next((s for s in _slots(lib) if _token(lib, s)[0] == label), None)  # SoftHSM2 renumbers it
        if slot is None:
            raise Pkcs11Error(f"the token {label!r} is not listed after its initialisation")
        session = ctypes.c_ulong(0)
        _check("C_OpenSession", lib.C_OpenSession(ctypes.c_ulong(slot), ctypes.c_ulong(CKF_SERIAL_SESSION
                                                                                      | CKF_RW_SESSION),
                                                  None, None, ctypes.byref(session)))
        try:
            _check("C_Login", lib.C_Login(session, ctypes.c_ulong(CKU_SO), so_pin, ctypes.c_ulong(len(so_pin))))
            _check("C_InitPIN", lib.C_InitPIN(session, user_pin, ctypes.c_ulong(len(user_pin))))
            _check("C_Logout", lib.C_Logout(session))
        finally:
            lib.C_CloseSession(session)
        return slot
    finally:
        lib.C_Finalize(None)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: SO_PIN=... USER_PIN=... init_token.py MODULE LABEL", file=sys.stderr)
        return 2
    so_pin, user_pin = os.environ.get("SO_PIN", ""), os.environ.get("USER_PIN", "")
    if not (4 <= len(so_pin) <= 255 and 4 <= len(user_pin) <= 255):
        print("SO_PIN and USER_PIN must be set in the environment, 4 to 255 characters each", file=sys.stderr)
        return 2
    try:
        init_token(argv[1], argv[2], so_pin.encode(), user_pin.encode())
    except (OSError, Pkcs11Error) as exc:
        print(f"cannot initialise the token {argv[2]!r}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
