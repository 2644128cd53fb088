"""Crash points for the crash-safety suite (`tests/reliability/`): where a power cut is simulated.

With `APPLIANCE_CRASH_FILE=PATH` in the environment of `appliance serve`, and `NAME` (or `NAME:N`: the N-th time
this process gets there after it was written; default the first) written into PATH, the whole serving process
group (gunicorn's master and every worker; the server must lead its own group, e.g. started with setsid, or only
the worker dies) is killed with SIGKILL when a worker reaches the point NAME, exactly as a power cut there would
leave it: no exception handler, no `finally`, no flush. The file can be written while the server runs, so a
server is crashed at a chosen moment (after the checks of the last crash). Unset, as in production, `reach` costs
one comparison. No point is inside an HSM call: SoftHSM2 rewrites token files in place, and a kill there is a
lost token, not a test of the appliance (see `Hsm.drain` for how the appliance keeps its own supervisor from
doing that).
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "mint.approval.committed",  # an approval's transaction committed, before anything else
    "mint.reserve.before-commit",  # the nonce reservation written, its transaction not yet committed
    "mint.reserve.committed",  # the reservation committed, before the HSM is asked
    "mint.sign.after-hsm",  # the HSM signed, nothing stored yet
    "mint.sign.stored",  # the signature stored, before the checkpoint that follows it
    "mint.before-response",  # everything done, the response not yet sent
    "checkpoint.before-hsm",  # the token's checkpoint head moved, the note not yet signed
    "checkpoint.after-hsm",  # the note signed, not yet stored
    "attestation.before-hsm",  # the token holds the pending payload, not yet signed
    "attestation.after-hsm",  # signed, not yet stored
    "attestation.stored",  # stored, the token's head not yet moved
)


_FILE = os.environ.get("APPLIANCE_CRASH_FILE")  # read once: unset in production
_armed: tuple[str, int] | None = None  # the armed text, and how often this process reached its point since
_seen = 0


def _target() -> tuple[str, int] | None:
    """The point named in the crash file now (NAME or NAME:N), or None."""
    if not _FILE:
        return None
    try:
        raw = open(_FILE, encoding="utf-8").read().strip()  # noqa: SIM115 - tiny, test-only
    except OSError:
        return None
    if not raw:
        return None
    name, _, count = raw.partition(":")
    if name not in POINTS:
        raise SystemExit(f"{_FILE} names no crash point: {name!r} (one of {', '.join(POINTS)})")
    return name, int(count or "1")


def reach(name: str) -> None:
    """The crash point `name`: SIGKILL to the whole process group if it is the armed one (see the module)."""
    global _armed, _seen
    if _FILE is None:
        return
    target = _target()
    if target is None or target[0] != name:
        return
    if target != _armed:  # armed anew: count from here
        _armed, _seen = target, 0
    _seen += 1
    if _seen == target[1]:
        group = os.getpgrp()
        if group in (os.getpid(), os.getppid()):  # the server leads its own group (started in a new session)
            os.killpg(group, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)  # otherwise only this process: never the caller's whole group
