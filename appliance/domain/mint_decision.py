"""Whether the HSM may sign a mint authorization now: one decision, as a value.

Pure. The shell (services.mint) gathers facts it has verified into a `Case` and calls `decide`; every path that
can reach the HSM (the approval that completes the quorum, asking for the authorization again, the takeover of
a stale reservation) acts on the `Decision` it returns and on nothing else:

    Stored    the authorization is signed and stored: return it, sign nothing
    InFlight  a reservation without a signature exists: whoever made it is signing (or a takeover may, later)
    Closed    the request is closed (rejected, cancelled, authorized, expired), or a veto closes it now
    Pending   the quorum is not met yet
    Refuse    the quorum is met but something forbids signing: reasons, and whether it is a conflict (409:
              the nonce is taken, which nothing can resolve) or a refusal of the policy (422)
    Sign      reserve the nonce and sign

The quorum is judged under both the policy the request was made under and the policy in force (`Quorum`): it is
met only when both are met, and its explanation is the stricter one's with both tiers' requirements.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from appliance.domain.quorum import QuorumResult


@dataclass(frozen=True)
class Quorum:
    """The quorum under the policy in force (`current`) and, when the request was made under another one, under
    that one too (`recorded`). Met only when both are; vetoed when either is."""

    current: QuorumResult
    recorded: QuorumResult | None = None

    @property
    def met(self) -> bool:
        return self.current.met and (self.recorded is None or self.recorded.met)

    @property
    def vetoed(self) -> bool:
        return self.current.vetoed or (self.recorded is not None and self.recorded.vetoed)

    @property
    def deciding(self) -> QuorumResult:
        """The result that explains the outcome: the first of (current, recorded) not met, else the recorded
        one (whose tier the request was made under)."""
        if not self.current.met or self.recorded is None:
            return self.current
        return self.recorded

    def required(self) -> dict[str, Any]:
        """What the quorum requires: the active tier; when the recorded policy's tier differs, both, with one
        sentence naming each and the recorded tier under "recorded"."""
        active = self.current.tier
        earlier = None if self.recorded is None else self.recorded.tier
        if earlier is None or earlier.get("text") == active.get("text"):
            return dict(active)
        return {**active, "text": f"{active['text']} (active policy); and {earlier['text']} (policy the request "
                                  "was made under)", "recorded": earlier}

    def to_json(self) -> dict[str, Any]:
        return self.deciding.to_json()


@dataclass(frozen=True)
class ReservationState:
    signed: bool
    last_taken: int  # when it was made, or last taken over


@dataclass(frozen=True)
class Case:
    """The verified facts about one request at `now`.

    `refusals` are every reason not to sign (mint_rules.signing_refusals, the log's closures, the reserve guard,
    the digest): gathered only once the quorum is met (None: not gathered). `nonce_holder` is another request
    whose reservation holds this request's nonce."""

    status: str  # as stored
    expires_at: int
    now: int
    reservation: ReservationState | None
    quorum: Quorum | None  # None: not evaluated (a reservation exists, or the request is closed)
    refusals: Sequence[str] | None = None
    nonce_holder: str | None = None


@dataclass(frozen=True)
class Stored:
    pass


@dataclass(frozen=True)
class InFlight:
    last_taken: int


@dataclass(frozen=True)
class Closed:
    status: str
    veto: bool = False  # True: this decision closes the request (a valid rejection vetoes it now)
    quorum: Quorum | None = None


@dataclass(frozen=True)
class Pending:
    quorum: Quorum


@dataclass(frozen=True)
class Refuse:
    quorum: Quorum
    reasons: tuple[str, ...]
    conflict: bool  # the nonce is held by another request: 409, final; otherwise 422


@dataclass(frozen=True)
class Sign:
    quorum: Quorum
    entry: int = -1  # set by the shell once persisted: the index of the audit entry that records the reservation


Decision = Stored | InFlight | Closed | Pending | Refuse | Sign

NONCE_CONSUMED = "the nonce of this request was already consumed"


def needs_quorum(status: str, expires_at: int, now: int, reservation: ReservationState | None) -> bool:
    """Whether decide() will look at the quorum (the shell evaluates it only then)."""
    return reservation is None and status == "pending" and now < expires_at


def decide(case: Case) -> Decision:
    """The one decision (see the module). Raises ValueError when a fact it needs was not gathered."""
    if case.reservation is not None:
        return Stored() if case.reservation.signed else InFlight(case.reservation.last_taken)
    if case.status != "pending":
        return Closed(case.status)
    if case.now >= case.expires_at:
        return Closed("expired")
    if case.quorum is None:
        raise ValueError("the quorum of an open request was not evaluated")
    if case.quorum.vetoed:
        return Closed("rejected", veto=True, quorum=case.quorum)
    if not case.quorum.met:
        return Pending(case.quorum)
    if case.refusals is None:
        raise ValueError("the refusals of a request whose quorum is met were not gathered")
    reasons = list(case.refusals)
    if case.nonce_holder is not None:  # a nonce is signed at most once: another payload under it, never
        reasons.append(f"{NONCE_CONSUMED}: request {case.nonce_holder} holds its authorization")
    if reasons:
        return Refuse(case.quorum, tuple(dict.fromkeys(reasons)), conflict=case.nonce_holder is not None)
    return Sign(case.quorum)


QUORUM_GONE = "its quorum does not hold now under the request's and the current policy"


def decide_takeover(status: str, quorum: Quorum, refusals: Sequence[str] | None,
                    nonce_holder: str | None) -> Sign | Refuse:
    """The decision on a stale reservation (its signer is gone): sign it, or refuse and void it.

    The same rules as a first signature, judged at now, except that `quorum` is evaluated when the reservation
    was made (as the checkpointed log records it), so an outage longer than the approvals' TTL does not void it;
    the expiry and the validity window are among `refusals` (judged at now). `refusals` None: not gathered,
    allowed only when the quorum is not met. The request's stored status must still be pending."""
    reasons: list[str] = []
    if not quorum.met:
        reasons.append(QUORUM_GONE)
    elif refusals is None:
        raise ValueError("the refusals of a request whose quorum is met were not gathered")
    else:
        reasons += refusals
    if nonce_holder is not None:
        reasons.append(f"{NONCE_CONSUMED}: request {nonce_holder} holds its authorization")
    if status != "pending":
        reasons.append(f"the request is {status}")
    if reasons:
        return Refuse(quorum, tuple(dict.fromkeys(reasons)), conflict=nonce_holder is not None)
    return Sign(quorum)
