"""The appliance's error vocabulary, split by blame.

`ClientError` subclasses are the caller's fault (bad input, policy, quorum, authentication): they map to a 4xx
problem+json and change nothing. `InfrastructureError` subclasses are ours (HSM, storage): they map to 503.
This module imports nothing from the appliance, so the pure domain may raise these too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One problem with one input: where it is (file, field, index) and what is wrong."""

    location: str
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}" if self.location else self.message


class Problems:
    """The one collector of an input's problems (a policy file, a reserve report, a holders file), each located as
    `<source>: <where>`, so that the sender hears of all of them at once."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[Problem] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(Problem(f"{self.source}: {where}" if where else self.source, message))

    def raise_if_any(self, what: str) -> None:
        """InvalidInput with every problem, e.g. "policy.toml: 3 problem(s) in the policy", if there is one."""
        if self.items:
            raise InvalidInput(f"{self.source}: {len(self.items)} problem(s) in {what}", self.items)


PROBLEM_BASE = "urn:appliance:problem:"  # + slug: the `type` of a problem+json response


class ApplianceError(Exception):
    """Base of every expected failure. `slug` is the stable problem type; `status` the HTTP status."""

    slug = "error"
    title = "Error"
    status = 500

    def __init__(self, detail: str, problems: Sequence[Problem] = ()) -> None:
        super().__init__(detail)
        self.detail = detail
        self.problems = tuple(problems)

    def __str__(self) -> str:
        if not self.problems:
            return self.detail
        return self.detail + "\n" + "\n".join(f"  - {p}" for p in self.problems)


class ClientError(ApplianceError):
    slug = "bad-request"
    title = "Bad request"
    status = 400


class InvalidInput(ClientError):
    slug = "invalid-input"
    title = "Invalid input"
    status = 400


class Unauthenticated(ClientError):
    slug = "unauthenticated"
    title = "Signature or credentials not valid"
    status = 401


class Forbidden(ClientError):
    slug = "forbidden"
    title = "Not allowed for this operator"
    status = 403


class NotFound(ClientError):
    slug = "not-found"
    title = "Not found"
    status = 404


class Conflict(ClientError):
    slug = "conflict"
    title = "Conflicts with the current state"
    status = 409


class PolicyViolation(ClientError):
    slug = "policy-violation"
    title = "Refused by the active policy"
    status = 422


class VerificationFailed(ClientError):
    """An offline check (signature, chain, proof, checkpoint) did not hold."""

    slug = "verification-failed"
    title = "Verification failed"
    status = 422


class InfrastructureError(ApplianceError):
    slug = "unavailable"
    title = "Service unavailable"
    status = 503


class ConfigError(InfrastructureError):
    """A configuration file is missing or wrong (`problems` name the file and field), or, at run time, what it
    names is gone (the token, a key, a file): the service cannot act until an operator fixes it (503)."""

    slug = "config-error"
    title = "Configuration error"


class HsmUnavailable(InfrastructureError):
    slug = "hsm-unavailable"
    title = "HSM unavailable"


class StorageUnavailable(InfrastructureError):
    slug = "storage-unavailable"
    title = "Storage unavailable"


class RateLimited(ClientError):
    """This client sent more writes, or more failed authentications, than its budget allows: retry later."""

    slug = "rate-limited"
    title = "Too many requests"
    status = 429


class RequestTimeout(ClientError):
    """The client sent its request body too slowly: it is dropped unread and nothing was done."""

    slug = "request-timeout"
    title = "Request body too slow"
    status = 408


class Busy(InfrastructureError):
    """A bounded resource (such as the one large request body a process reads at a time) is in use: retry."""

    slug = "busy"
    title = "Busy"


class StoreInconsistent(InfrastructureError):
    """The store refused a write the appliance's own reading of it said could not conflict: its rows were changed
    outside the appliance (or another instance got there first in a way no caller expected). Nothing is returned
    as signed; the caller may retry, and an operator should run `appliance audit verify`."""

    slug = "store-inconsistent"
    title = "Store inconsistent"
