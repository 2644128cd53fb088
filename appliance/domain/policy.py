"""The policy model: operators, quorum tiers, limits, allowlist, governance and the reserve guard.

Pure: plain dicts in (the shell reads the TOML), values out; no I/O, no clock. Parsing reports every problem
at once, each located by file and field (`policy.toml: mint.tiers[1].approvals`), and refuses unknown keys so
that a typo can never silently disable a control. Amounts are decimal strings of integer base units, never
TOML numbers. The bundle of policy and operators has one hash, SHA-256 of its RFC 8785 canonical JSON: the
"policy hash" that approvals, authorizations and audit entries name.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar

from appliance.domain import patterns
from appliance.domain.canonical import json_digest
from appliance.domain.eip712 import to_checksum_address
from appliance.domain.jose import thumbprint
from appliance.domain.webauthn import Credential, RelyingParty, parse_credentials, parse_relying_party
from appliance.errors import InvalidInput, PolicyViolation, Problem, Problems

ROLES = frozenset({"treasury", "cfo", "security-admin", "auditor", "custodian"})
RESERVE_REPORTER_ROLE = "custodian"  # signs the reserve reports an attestation is made from
# Roles appear in this order in JSON and text, so the normalized form never depends on a file's list order.
ROLE_ORDER = ("treasury", "cfo", "security-admin", "auditor", "custodian")
MAX_AMOUNT = 2**256 - 1  # amounts are uint256 on chain
MAX_INTEGER = 2**53 - 1  # counts, durations, chain ids: the largest integer exact in (canonical) JSON
# Used only when the reserve guard is disabled and the file leaves the age out; an enabled guard must name it.
DEFAULT_MAX_ATTESTATION_AGE_SECONDS = 172800

# Operator key types and their public coordinates (each 32 bytes, unpadded canonical base64url).
_KEY_TYPES = {("OKP", "Ed25519"): ("x",), ("EC", "P-256"): ("x", "y")}
_KEY_MEMBERS = ("kty", "crv", "x", "y")
# Optional RFC 7517 members tolerated in operators.toml and dropped: the stored key is its public members only.
_OPTIONAL_JWK_MEMBERS = frozenset({"kid", "alg", "use", "key_ops"})
_COORDINATE_BYTES = 32
_T = TypeVar("_T")


def _ordered(roles: Iterable[str]) -> list[str]:
    return sorted(roles, key=lambda r: (ROLE_ORDER.index(r) if r in ROLE_ORDER else len(ROLE_ORDER), r))


def _plural(count: int, noun: str) -> str:
    return noun if count == 1 else noun + "s"


# -- operators -----------------------------------------------------------------------------------------------------

class PublicJwk(Mapping[str, str]):
    """An immutable, hashable public JWK (string members), so that an Operator can be a frozen value."""

    __slots__ = ("_members",)

    def __init__(self, members: Mapping[str, str]) -> None:
        self._members = tuple(sorted(dict(members).items()))

    def __getitem__(self, key: str) -> str:
        for name, value in self._members:
            if name == key:
                return value
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._members)

    def __len__(self) -> int:
        return len(self._members)

    def __hash__(self) -> int:
        return hash(self._members)

    def __repr__(self) -> str:
        return f"PublicJwk({dict(self._members)!r})"


@dataclass(frozen=True)
class Operator:
    """An enrolled person. `enabled` false keeps them on record while nothing they sign counts."""

    name: str
    roles: frozenset[str]
    jwk: Mapping[str, str]
    enabled: bool = True
    webauthn: tuple[Credential, ...] = ()  # security keys, besides the JWK

    def __post_init__(self) -> None:
        object.__setattr__(self, "roles", frozenset(self.roles))
        object.__setattr__(self, "webauthn", tuple(self.webauthn))
        if not isinstance(self.jwk, PublicJwk):
            object.__setattr__(self, "jwk", PublicJwk(self.jwk))

    @property
    def key_identity(self) -> tuple[str, ...]:
        """The members that identify the key (kty, crv, x, y): two operators never share them."""
        return tuple(self.jwk.get(m, "") for m in _KEY_MEMBERS)

    def to_json(self) -> dict[str, Any]:
        """operators.toml's entry for this operator, normalized."""
        out: dict[str, Any] = {"name": self.name, "roles": _ordered(self.roles), "enabled": self.enabled,
                               "jwk": dict(self.jwk)}
        if self.webauthn:  # written only when enrolled: a bundle from before security keys keeps its hash
            out["webauthn"] = [c.to_json() for c in self.webauthn]
        return out

    def credential(self, credential_id: str) -> Credential | None:
        """The security key enrolled under this id, or None."""
        return next((c for c in self.webauthn if c.id == credential_id), None)


def _duplicate_problems(entries: Sequence[tuple[str, Operator]]) -> list[Problem]:
    """Problems for every (location, operator) repeating an earlier name or public key."""
    problems: list[Problem] = []
    names: dict[str, str] = {}
    keys: dict[tuple[str, ...], tuple[str, str]] = {}
    credentials: dict[str, str] = {}
    for where, op in entries:
        for credential in op.webauthn:
            owner = credentials.setdefault(credential.id, op.name)
            if owner != op.name:  # one security key under two names would count twice too
                problems.append(Problem(f"{where}.webauthn", f"security key {credential.id[:16]}... is also "
                                                             f"enrolled by {owner}: one key, one person"))
        if op.name in names:
            problems.append(Problem(f"{where}.name", f"{op.name} is enrolled twice (also at {names[op.name]})"))
        else:
            names[op.name] = where
        if op.key_identity in keys:
            first, owner = keys[op.key_identity]
            # One key under two names would let one person count twice toward a quorum.
            problems.append(Problem(f"{where}.jwk", f"the public key of {owner} ({first}): one key, one person"))
        else:
            keys[op.key_identity] = (where, op.name)
    return problems


class OperatorSet:
    """The enrolled operators, iterated in name order.

    Construction raises InvalidInput when two operators share a name or a public key.
    """

    __slots__ = ("_by_name", "_by_kid", "_by_credential")

    def __init__(self, operators: Iterable[Operator]) -> None:
        ops = list(operators)
        problems = _duplicate_problems([(f"operators[{i}]", op) for i, op in enumerate(ops)])
        if problems:
            raise InvalidInput("an operator is enrolled twice", problems)
        self._by_name: dict[str, Operator] = {op.name: op for op in sorted(ops, key=lambda o: o.name)}
        self._by_kid: dict[str, Operator] | None = None
        self._by_credential = {c.id: op for op in self._by_name.values() for c in op.webauthn}

    def __iter__(self) -> Iterator[Operator]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OperatorSet) and tuple(self) == tuple(other)

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"OperatorSet({list(self)!r})"

    def get(self, name: str) -> Operator | None:
        """The operator enrolled under exactly this name, or None."""
        return self._by_name.get(name)

    def by_kid(self, kid: str) -> Operator | None:
        """The operator whose key's RFC 7638 thumbprint is `kid`, or None. The index is built on first use;
        a key that has no thumbprint (not a valid JWK) names nobody."""
        if self._by_kid is None:
            index = {}
            for op in self:
                try:
                    index[thumbprint(dict(op.jwk))] = op
                except InvalidInput:
                    continue
            self._by_kid = index
        return self._by_kid.get(kid)

    def by_credential(self, credential_id: str) -> tuple[Operator, Credential] | None:
        """The operator who enrolled the security key `credential_id`, and that key; None if nobody did."""
        op = self._by_credential.get(credential_id)
        credential = None if op is None else op.credential(credential_id)
        return None if op is None or credential is None else (op, credential)

    def with_role(self, role: str) -> list[Operator]:
        """Operators holding `role` (enabled or not), in name order."""
        return [op for op in self if role in op.roles]

    def to_json(self) -> dict[str, Any]:
        """operators.toml's table, normalized: {"operators": [...]} in name order."""
        return {"operators": [op.to_json() for op in self]}


# -- policy --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tier:
    """Quorum for amounts up to `up_to` (inclusive; None = unbounded): `approvals` distinct approvers holding
    one of `eligible_roles`, among them at least `count` holding `role` for each (role, count) in `required`."""

    up_to: int | None
    approvals: int
    eligible_roles: frozenset[str]
    required: tuple[tuple[str, int], ...] = ()
    hardware_keys_only: bool = False  # only WebAuthn approvals (security keys, passkeys) count

    def __post_init__(self) -> None:
        object.__setattr__(self, "eligible_roles", frozenset(self.eligible_roles))
        object.__setattr__(self, "required", tuple(sorted(self.required)))

    def to_json(self) -> dict[str, Any]:
        """policy.toml's [[mint.tiers]] entry, normalized (up_to as a decimal string, absent when unbounded)."""
        out: dict[str, Any] = {"approvals": self.approvals, "eligible_roles": _ordered(self.eligible_roles),
                               "required": dict(self.required)}
        if self.up_to is not None:
            out["up_to"] = str(self.up_to)
        if self.hardware_keys_only:  # written only when set: older bundles keep their hash
            out["hardware_keys_only"] = True
        return out


@dataclass(frozen=True)
class AllowlistEntry:
    chain_id: int
    address: str  # kept exactly as written; compared exactly
    label: str = ""


@dataclass(frozen=True)
class MintPolicy:
    max_per_request: int
    velocity_limit: int
    velocity_window_seconds: int
    request_ttl_seconds: int
    approval_ttl_seconds: int
    authorization_validity_seconds: int
    veto_on_reject: bool
    tiers: tuple[Tier, ...]
    allowlist: tuple[AllowlistEntry, ...]


DEFAULT_PROPOSAL_TTL_SECONDS = 7 * 86400


@dataclass(frozen=True)
class Governance:
    """Who changes the bundle: `approvals` distinct enabled holders of `eligible_roles`. A proposal expires
    `proposal_ttl_seconds` after its proposer signed it; `proposer_counts` says whether the proposer's own
    vote counts towards the quorum (true: two admins can change the bundle; false: the proposer plus two)."""

    approvals: int
    eligible_roles: frozenset[str]
    proposal_ttl_seconds: int = DEFAULT_PROPOSAL_TTL_SECONDS
    proposer_counts: bool = True
    hardware_keys_only: bool = False  # only WebAuthn votes count

    def to_json(self) -> dict[str, Any]:
        # the newer members are written only when not the default: a bundle from before them keeps its hash
        out: dict[str, Any] = {"approvals": self.approvals, "eligible_roles": _ordered(self.eligible_roles)}
        if self.proposal_ttl_seconds != DEFAULT_PROPOSAL_TTL_SECONDS:
            out["proposal_ttl_seconds"] = self.proposal_ttl_seconds
        if not self.proposer_counts:
            out["proposer_counts"] = False
        if self.hardware_keys_only:
            out["hardware_keys_only"] = True
        return out


@dataclass(frozen=True)
class ReserveGuard:
    enabled: bool
    max_attestation_age_seconds: int


def describe(tier: Tier) -> dict[str, Any]:
    """The tier as data plus a sentence, e.g. "3 approvals from treasury or cfo, including 1 cfo; requester
    excluded"."""
    text = f"{tier.approvals} {_plural(tier.approvals, 'approval')} from {' or '.join(_ordered(tier.eligible_roles))}"
    counts = dict(tier.required)
    including = [f"{counts[role]} {role}" for role in _ordered(counts) if counts[role]]
    if including:
        text += ", including " + " and ".join(including)
    if tier.hardware_keys_only:
        text += ", by security key only"
    return {**tier.to_json(), "text": text + "; requester excluded"}


@dataclass(frozen=True)
class Policy:
    version: int
    name: str
    mint: MintPolicy
    governance: Governance
    reserve_guard: ReserveGuard
    webauthn: RelyingParty | None = None  # where security-key assertions come from; None: none count

    def tier_for(self, amount: int) -> Tier:
        """The first tier whose inclusive bound covers `amount` (the last tier is unbounded)."""
        for tier in self.mint.tiers:
            if tier.up_to is None or amount <= tier.up_to:
                return tier
        raise ValueError("a policy's last tier must be unbounded")  # parse_policy guarantees it

    def is_allowlisted(self, chain_id: int, address: str) -> bool:
        """Whether (chain_id, address) is on the allowlist, comparing the address exactly as written."""
        return any(e.chain_id == chain_id and e.address == address for e in self.mint.allowlist)

    def describe(self, tier: Tier) -> dict[str, Any]:
        """Same as the module's describe(tier)."""
        return describe(tier)

    def to_json(self) -> dict[str, Any]:
        """policy.toml's table, normalized: amounts as decimal strings, roles in ROLE_ORDER, every default
        written out."""
        m, g, r = self.mint, self.governance, self.reserve_guard
        out: dict[str, Any] = {
            "version": self.version,
            "name": self.name,
            "mint": {
                "max_per_request": str(m.max_per_request),
                "velocity_limit": str(m.velocity_limit),
                "velocity_window_seconds": m.velocity_window_seconds,
                "request_ttl_seconds": m.request_ttl_seconds,
                "approval_ttl_seconds": m.approval_ttl_seconds,
                "authorization_validity_seconds": m.authorization_validity_seconds,
                "veto_on_reject": m.veto_on_reject,
                "tiers": [t.to_json() for t in m.tiers],
                "allowlist": [{"chain_id": e.chain_id, "address": e.address, "label": e.label} for e in m.allowlist],
            },
            "governance": g.to_json(),
            "reserve_guard": {"enabled": r.enabled, "max_attestation_age_seconds": r.max_attestation_age_seconds},
        }
        if self.webauthn is not None:  # written only when configured: older bundles keep their hash
            out["webauthn"] = self.webauthn.to_json()
        return out


@dataclass(frozen=True)
class PolicyBundle:
    """The policy and the operator set it is enforced with; `hash` is THE policy hash."""

    policy: Policy
    operators: OperatorSet

    def to_json(self) -> dict[str, Any]:
        """{"policy": policy.toml's table, "operators": operators.toml's table}, both normalized, JSON-safe."""
        return {"policy": self.policy.to_json(), "operators": self.operators.to_json()}

    @staticmethod
    def from_json(data: Any) -> PolicyBundle:
        """The bundle of a to_json() value (exact inverse); InvalidInput listing every problem otherwise."""
        if not isinstance(data, Mapping) or set(data) != {"policy", "operators"}:
            raise InvalidInput("a policy bundle is an object with exactly the members policy and operators",
                               [Problem("bundle", "must be {\"policy\": {...}, \"operators\": {...}}")])
        problems: list[Problem] = []
        policy: Policy | None = None
        operators: OperatorSet | None = None
        try:
            policy = parse_policy(data["policy"], "bundle.policy")
        except InvalidInput as exc:
            problems.extend(exc.problems)
        try:
            operators = parse_operators(data["operators"], "bundle.operators")
        except InvalidInput as exc:
            problems.extend(exc.problems)
        if policy is None or operators is None:
            raise InvalidInput(f"the policy bundle has {len(problems)} problem(s)", problems)
        return PolicyBundle(policy, operators)

    @cached_property
    def hash(self) -> str:
        """Lowercase hex SHA-256 of the RFC 8785 canonical JSON of to_json() (computed once: a bundle is
        immutable, and every request reads the active one)."""
        return json_digest(self.to_json())


MINT_REQUESTER_ROLES = frozenset({"treasury", "cfo"})  # who may request or approve a mint
POLICY_PROPOSER_ROLE = "security-admin"  # who may propose a policy change


def unreachable_governance(bundle: PolicyBundle) -> list[Problem]:
    """The governance quorum, if the bundle's own enabled operators could never meet it: such a bundle could
    never be changed again (every change needs that quorum). Pure; raises nothing."""
    governance = bundle.policy.governance
    enabled = [op for op in bundle.operators if op.enabled]
    problems = []
    if not any(POLICY_PROPOSER_ROLE in op.roles for op in enabled):
        problems.append(Problem("operators", f"no enabled {POLICY_PROPOSER_ROLE} is left to propose a change"))
    holders = sum(1 for op in enabled if op.roles & governance.eligible_roles
                  and (op.webauthn or not governance.hardware_keys_only))
    needed = governance.approvals + (0 if governance.proposer_counts else 1)  # the proposer plus the quorum
    if holders < needed:
        problems.append(Problem("policy.governance.approvals", f"needs {governance.approvals} approvals from "
                                f"{' or '.join(_ordered(governance.eligible_roles))}"
                                + ("" if governance.proposer_counts else " besides the proposer")
                                + f" but only {holders} enabled operators hold those roles"
                                + (" and a security key" if governance.hardware_keys_only else "")))
    return problems


def unreachable_mint_tiers(bundle: PolicyBundle) -> list[Problem]:
    """Mint tiers no request could ever get approved under this bundle: no possible requester leaves enough
    other enabled holders of the eligible roles and of each required role (the requester never counts).
    Necessary conditions only. Pure; raises nothing.

    These are warnings, not errors: disabling a compromised officer must stay possible even when it leaves a
    small team unable to approve large mints until governance enrols someone."""
    enabled = [op for op in bundle.operators if op.enabled]
    requesters = [op for op in enabled if op.roles & MINT_REQUESTER_ROLES]  # approvers need these roles too
    if not requesters:
        return [Problem("operators", "no enabled operator can request a mint (roles "
                        f"{' or '.join(_ordered(MINT_REQUESTER_ROLES))})")]

    def holders(roles: frozenset[str], besides: Operator, hardware: bool) -> int:
        return sum(1 for op in requesters if op.roles & roles and op is not besides and (op.webauthn or not hardware))

    def tier_problems(i: int, tier: Tier, requester: Operator) -> list[Problem]:
        found = []
        eligible = holders(tier.eligible_roles, requester, tier.hardware_keys_only)
        if eligible < tier.approvals:
            found.append(Problem(f"policy.mint.tiers[{i}].approvals", f"needs {tier.approvals} approvals but "
                                 f"only {eligible} enabled operators besides the requester are eligible"))
        for role, count in tier.required:
            held = holders(frozenset({role}), requester, tier.hardware_keys_only)
            if held < count:
                found.append(Problem(f"policy.mint.tiers[{i}].required.{role}", f"needs {count} {role} but "
                                     f"only {held} enabled operators besides the requester hold that role"))
        return found

    problems: list[Problem] = []
    for i, tier in enumerate(bundle.policy.mint.tiers):
        candidates = [tier_problems(i, tier, r) for r in requesters]
        problems += sorted(candidates, key=len)[0]  # for the most favourable requester
    return problems


# -- parsing -------------------------------------------------------------------------------------------------------

class _Problems(Problems):
    """The collector of one policy or operators file, with the readers of its TOML tables."""

    def table(self, data: Any, where: str, allowed: Iterable[str], required: Iterable[str] = ()) -> Mapping[str, Any]:
        """`data` as a table (empty if it is not one), reporting unknown and missing keys."""
        if not isinstance(data, Mapping):
            self.add(where or "(top level)", "must be a table")
            return {}
        allowed = set(allowed)
        for key in data:
            if key not in allowed:
                self.add(_join(where, str(key)), "unknown key")
        for key in sorted(set(required) - set(data)):
            self.add(_join(where, key), "required")
        return data

    def integer(self, data: Mapping[str, Any], key: str, where: str, minimum: int = 1) -> int | None:
        """An integer from `minimum` to MAX_INTEGER; None (reported) if wrong, None (silently) if absent."""
        if key not in data:
            return None
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(_join(where, key), "must be an integer")
            return None
        if not minimum <= value <= MAX_INTEGER:
            self.add(_join(where, key), f"must be an integer from {minimum} to {MAX_INTEGER}")
            return None
        return value

    def amount(self, data: Mapping[str, Any], key: str, where: str) -> int | None:
        """A decimal string of base units from 1 to 2^256 - 1; None (reported) if wrong, None if absent."""
        if key not in data:
            return None
        value, field = data[key], _join(where, key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # A TOML number is refused even when exact: floats round, and one rule for every amount is clearer.
            kind = "float" if isinstance(value, float) else "integer"
            self.add(field, f'must be a decimal string of base units, e.g. "1000000", not a TOML {kind}')
            return None
        if not isinstance(value, str) or not patterns.DECIMAL.fullmatch(value):
            self.add(field, 'must be a decimal string of base units, e.g. "1000000"')
            return None
        if len(value) > len(str(MAX_AMOUNT)) or not 1 <= int(value) <= MAX_AMOUNT:  # length first: no huge int()
            self.add(field, "must be from 1 to 2^256 - 1")
            return None
        return int(value)

    def boolean(self, data: Mapping[str, Any], key: str, where: str, default: bool | None = None) -> bool | None:
        if key not in data:
            return default
        if not isinstance(data[key], bool):
            self.add(_join(where, key), "must be true or false")
            return None
        return bool(data[key])

    def roles(self, data: Mapping[str, Any], key: str, where: str) -> frozenset[str] | None:
        """A non-empty list of distinct known roles; None (reported) if wrong, None if absent."""
        if key not in data:
            return None
        value, field = data[key], _join(where, key)
        if not isinstance(value, list) or not value or not all(isinstance(r, str) for r in value):
            self.add(field, f"must be a non-empty list of roles ({', '.join(ROLE_ORDER)})")
            return None
        unknown = [r for r in value if r not in ROLES]
        if unknown:
            self.add(field, f"unknown role(s) {', '.join(unknown)} (roles: {', '.join(ROLE_ORDER)})")
        if len(set(value)) != len(value):
            self.add(field, "lists a role twice")
        return None if unknown or len(set(value)) != len(value) else frozenset(value)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _table_list(p: _Problems, data: Mapping[str, Any], key: str, where: str) -> list[Any]:
    """An array of tables (an absent one is empty); reports anything else."""
    value = data.get(key, [])
    if not isinstance(value, list):
        p.add(_join(where, key), f"must be an array of tables ([[{_join(where, key)}]])")
        return []
    return value


def parse_operators(data: Mapping[str, Any], source: str = "operators.toml") -> OperatorSet:
    """The operator set of operators.toml's table.

    Raises InvalidInput listing every problem (`operators.toml: operators[2].roles`): unknown or missing keys,
    bad names or roles, keys that are not a public Ed25519 or P-256 JWK, and two operators sharing a name or
    a public key. The key material itself (point on the curve) is checked by the shell.
    """
    p = _Problems(source)
    top = p.table(data, "", {"operators"}, {"operators"})
    entries = _table_list(p, top, "operators", "")
    if isinstance(top.get("operators"), list) and not entries:
        p.add("operators", "at least one [[operators]] entry")
    parsed: list[tuple[str, Operator]] = []
    for i, entry in enumerate(entries):
        where = f"operators[{i}]"
        t = p.table(entry, where, {"name", "roles", "enabled", "jwk", "webauthn"}, {"name", "roles", "jwk"})
        name = t.get("name")
        if "name" in t and (not isinstance(name, str) or not patterns.NAME.fullmatch(name)):
            p.add(f"{where}.name", "must match ^[a-z][a-z0-9_-]{0,31}$")
            name = None
        roles = p.roles(t, "roles", where)
        enabled = p.boolean(t, "enabled", where, default=True)
        jwk = _public_jwk(p, t["jwk"], f"{where}.jwk") if "jwk" in t else None
        keys = parse_credentials(t["webauthn"], f"{where}.webauthn", p.add) if "webauthn" in t else ()
        if isinstance(name, str) and roles is not None and enabled is not None and jwk is not None \
                and keys is not None:
            parsed.append((f"{source}: {where}", Operator(name, roles, jwk, enabled, keys)))
    p.items.extend(_duplicate_problems(parsed))
    p.raise_if_any("the operators")
    return OperatorSet(op for _, op in parsed)


def _public_jwk(p: _Problems, jwk: Any, where: str) -> dict[str, str] | None:
    """The public members of an Ed25519 or P-256 JWK (shape only); None (reported) if it is not one."""
    if not isinstance(jwk, Mapping):
        p.add(where, "must be a public JWK table")
        return None
    if "d" in jwk:
        p.add(f"{where}.d", "a private key member: enrol public keys only")
        return None
    kty, crv = jwk.get("kty"), jwk.get("crv")
    coordinates = _KEY_TYPES.get((kty, crv)) if isinstance(kty, str) and isinstance(crv, str) else None
    if coordinates is None:
        p.add(where, "must be an Ed25519 (kty OKP, crv Ed25519) or P-256 (kty EC, crv P-256) public JWK")
        return None
    ok = True
    for member in jwk:
        if member not in ("kty", "crv", *coordinates) and member not in _OPTIONAL_JWK_MEMBERS:
            p.add(f"{where}.{member}", "unknown member (an operator JWK holds kty, crv, x and, for P-256, y)")
            ok = False
    for member in coordinates:
        if member not in jwk:
            p.add(f"{where}.{member}", "required")
            ok = False
        elif not _is_coordinate(jwk[member]):
            p.add(f"{where}.{member}", f"must be {_COORDINATE_BYTES} bytes as unpadded canonical base64url")
            ok = False
    return {m: str(jwk[m]) for m in ("kty", "crv", *coordinates)} if ok else None


def _is_coordinate(value: Any) -> bool:
    # Canonical (re-encodes to itself): every key then has exactly one spelling, so comparing strings compares
    # keys and the same key cannot be enrolled twice under two spellings.
    if not isinstance(value, str) or not value or not patterns.B64URL.fullmatch(value) or len(value) % 4 == 1:
        return False
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return False
    return len(raw) == _COORDINATE_BYTES and base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == value


def parse_policy(data: Mapping[str, Any], source: str = "policy.toml") -> Policy:
    """The policy of policy.toml's table.

    Raises InvalidInput listing every problem (`policy.toml: mint.tiers[1].approvals`): unknown or missing keys,
    amounts that are not decimal strings, non-positive durations, tier bounds not strictly increasing or a
    bounded last tier, required roles that are not eligible or counts above the tier's approvals,
    max_per_request above velocity_limit, repeated allowlist entries.
    """
    p = _Problems(source)
    top = p.table(data, "", {"version", "name", "mint", "governance", "reserve_guard", "webauthn"},
                  {"version", "name", "mint", "governance", "reserve_guard"})
    version = p.integer(top, "version", "")
    name = top.get("name")
    if "name" in top and (not isinstance(name, str) or not name.strip()):
        p.add("name", "must be a non-empty string")

    durations = ("velocity_window_seconds", "request_ttl_seconds", "approval_ttl_seconds",
                 "authorization_validity_seconds")
    amounts = ("max_per_request", "velocity_limit")
    m = p.table(top["mint"], "mint", {*amounts, *durations, "veto_on_reject", "tiers", "allowlist"},
                {*amounts, *durations, "tiers"}) if "mint" in top else {}
    limits = {key: p.amount(m, key, "mint") for key in amounts}
    seconds = {key: p.integer(m, key, "mint") for key in durations}
    per_request, velocity = limits["max_per_request"], limits["velocity_limit"]
    if per_request is not None and velocity is not None and per_request > velocity:
        p.add("mint.max_per_request", f"must not exceed mint.velocity_limit ({velocity})")
    veto = p.boolean(m, "veto_on_reject", "mint", default=True)  # fail safe: a rejection vetoes unless turned off
    tiers = _tiers(p, m) if "tiers" in m else None
    allowlist = _allowlist(p, m)

    g = p.table(top["governance"], "governance", {"approvals", "eligible_roles", "proposal_ttl_seconds",
                                                  "proposer_counts", "hardware_keys_only"},
                {"approvals", "eligible_roles"}) if "governance" in top else {}
    governance_approvals = p.integer(g, "approvals", "governance")
    governance_roles = p.roles(g, "eligible_roles", "governance")
    proposal_ttl = p.integer(g, "proposal_ttl_seconds", "governance") if "proposal_ttl_seconds" in g \
        else DEFAULT_PROPOSAL_TTL_SECONDS
    proposer_counts = p.boolean(g, "proposer_counts", "governance", default=True)
    governance_hardware = p.boolean(g, "hardware_keys_only", "governance", default=False)
    rp = parse_relying_party(top["webauthn"], "webauthn", p.add) if "webauthn" in top else None
    if "webauthn" not in top and (governance_hardware or any(t.hardware_keys_only for t in tiers or ())):
        p.add("webauthn", "required when a tier or the governance demands security keys (hardware_keys_only)")

    r = p.table(top["reserve_guard"], "reserve_guard", {"enabled", "max_attestation_age_seconds"},
                {"enabled"}) if "reserve_guard" in top else {}
    guard_enabled = p.boolean(r, "enabled", "reserve_guard")
    max_age = p.integer(r, "max_attestation_age_seconds", "reserve_guard")
    if guard_enabled and "max_attestation_age_seconds" not in r:
        p.add("reserve_guard.max_attestation_age_seconds", "required when the reserve guard is enabled")
    elif not guard_enabled and "max_attestation_age_seconds" not in r:
        max_age = DEFAULT_MAX_ATTESTATION_AGE_SECONDS  # unused while disabled; written out by to_json

    p.raise_if_any("the policy")
    window, request_ttl, approval_ttl, validity = (_present(seconds[key]) for key in durations)
    return Policy(
        version=_present(version), name=str(name),
        mint=MintPolicy(max_per_request=_present(per_request), velocity_limit=_present(velocity),
                        velocity_window_seconds=window, request_ttl_seconds=request_ttl,
                        approval_ttl_seconds=approval_ttl, authorization_validity_seconds=validity,
                        veto_on_reject=_present(veto), tiers=_present(tiers), allowlist=allowlist),
        governance=Governance(_present(governance_approvals), _present(governance_roles), _present(proposal_ttl),
                              _present(proposer_counts), _present(governance_hardware)),
        reserve_guard=ReserveGuard(_present(guard_enabled), _present(max_age)), webauthn=rp)


def _present(value: _T | None) -> _T:
    """A value parsing promised (no problem was reported, so every required field was read)."""
    if value is None:
        raise RuntimeError("policy parsing reported no problem but a required value is missing")
    return value


def _tiers(p: _Problems, m: Mapping[str, Any]) -> tuple[Tier, ...] | None:
    entries = _table_list(p, m, "tiers", "mint")
    if isinstance(m["tiers"], list) and not entries:
        p.add("mint.tiers", "at least one [[mint.tiers]] entry")
    if not entries:
        return None
    tiers: list[Tier] = []
    previous: tuple[str, int] | None = None  # (location, bound) of the last bounded tier
    for i, entry in enumerate(entries):
        where, last = f"mint.tiers[{i}]", i == len(entries) - 1
        t = p.table(entry, where, {"up_to", "approvals", "eligible_roles", "required", "hardware_keys_only"},
                    {"approvals", "eligible_roles"})
        up_to = p.amount(t, "up_to", where)
        if last and "up_to" in t:
            p.add(f"{where}.up_to", "the last tier has no up_to: it covers every larger amount")
        elif not last and "up_to" not in t:
            p.add(f"{where}.up_to", "required on every tier but the last")
        if up_to is not None and previous is not None and up_to <= previous[1]:
            p.add(f"{where}.up_to", f"must be greater than {previous[0]}.up_to ({previous[1]}): bounds increase "
                                    "strictly")
        if up_to is not None:
            previous = (where, up_to)
        approvals = p.integer(t, "approvals", where)
        eligible = p.roles(t, "eligible_roles", where)
        required = _required(p, t, where, approvals, eligible)
        hardware = p.boolean(t, "hardware_keys_only", where, default=False)
        if approvals is not None and eligible is not None and required is not None and hardware is not None:
            tiers.append(Tier(None if last else up_to, approvals, eligible, required, hardware))
    return tuple(tiers) if len(tiers) == len(entries) else None


def _required(p: _Problems, t: Mapping[str, Any], where: str, approvals: int | None,
              eligible: frozenset[str] | None) -> tuple[tuple[str, int], ...] | None:
    value = t.get("required", {})
    if not isinstance(value, Mapping):
        p.add(f"{where}.required", "must be a table of role = minimum count, e.g. { cfo = 1 }")
        return None
    ok, required = True, []
    for role, count in value.items():
        field = f"{where}.required.{role}"
        if role not in ROLES:
            p.add(field, f"unknown role (roles: {', '.join(ROLE_ORDER)})")
            ok = False
        elif eligible is not None and role not in eligible:
            p.add(field, f"must be one of this tier's eligible_roles ({', '.join(_ordered(eligible))})")
            ok = False
        if isinstance(count, bool) or not isinstance(count, int):
            p.add(field, "must be an integer")
            ok = False
        elif count < 0 or (approvals is not None and count > approvals):
            p.add(field, f"must be from 0 to the tier's approvals ({approvals})" if approvals is not None
                  else "must not be negative")
            ok = False
        else:
            required.append((str(role), count))
    return tuple(required) if ok else None


def _allowlist(p: _Problems, m: Mapping[str, Any]) -> tuple[AllowlistEntry, ...]:
    # Absent or empty: no recipient is allowed at all (fails closed).
    entries: list[AllowlistEntry] = []
    seen: dict[tuple[int, str], str] = {}
    for i, entry in enumerate(_table_list(p, m, "allowlist", "mint")):
        where = f"mint.allowlist[{i}]"
        t = p.table(entry, where, {"chain_id", "address", "label"}, {"chain_id", "address"})
        chain_id = p.integer(t, "chain_id", where)
        address, label = t.get("address"), t.get("label", "")
        if "address" in t and (not isinstance(address, str) or not patterns.ADDRESS.fullmatch(address)):
            p.add(f"{where}.address", "must be a 0x-prefixed 20-byte hex address")
            address = None
        elif isinstance(address, str) and to_checksum_address(address) != address:
            # A typo in the allowlist would send minted tokens where nobody holds the key: insist on EIP-55.
            p.add(f"{where}.address", f"must be EIP-55 checksummed: {to_checksum_address(address)}")
            address = None
        if not isinstance(label, str):
            p.add(f"{where}.label", "must be a string")
            label = None
        if chain_id is None or not isinstance(address, str) or label is None:
            continue
        if (chain_id, address) in seen:
            p.add(where, f"repeats {seen[chain_id, address]} (chain {chain_id}, {address})")
            continue
        seen[chain_id, address] = where
        entries.append(AllowlistEntry(chain_id, address, label))
    return tuple(entries)


# -- rules on new requests -----------------------------------------------------------------------------------------

def check_new_request(policy: Policy, *, chain_id: int, to: str, amount: int, authorized_in_window: int) -> None:
    """Raise PolicyViolation listing every reason the policy refuses a new mint request: recipient not on the
    allowlist for the chain, amount not positive or above max_per_request, or authorized_in_window + amount above
    the velocity limit (the request that would cross the limit is the one refused)."""
    m = policy.mint
    reasons: list[Problem] = []
    if not policy.is_allowlisted(chain_id, to):
        reasons.append(Problem("to", f"{to} is not on the allowlist for chain {chain_id}"))
    if amount <= 0:
        reasons.append(Problem("amount", "must be positive"))
    if amount > m.max_per_request:
        reasons.append(Problem("amount", f"above the per-request maximum: {amount} > {m.max_per_request}"))
    if authorized_in_window + amount > m.velocity_limit:
        reasons.append(Problem("amount", f"velocity limit: {authorized_in_window} authorized in the last "
                                         f"{m.velocity_window_seconds} s + {amount} > {m.velocity_limit}"))
    if reasons:
        raise PolicyViolation("the policy refuses this mint request", reasons)


@dataclass(frozen=True)
class ReserveFacts:
    """The latest reserve attestation, with reserves and supply already scaled to the token's base units.

    `as_of` is the instant its figures describe (Unix seconds), not when it was signed: an attestation signed
    today over last month's report is last month's evidence."""

    as_of: int
    status: str
    reserves: int
    supply: int


def reserve_guard_reasons(policy: Policy, facts: ReserveFacts | None, *, authorized_since: int, amount: int,
                          now: int) -> list[str]:
    """Why the reserve guard refuses a mint of `amount` at `now` (empty when it allows it or is disabled).

    `authorized_since`: base units authorized since the attestation. Refused: no attestation, one whose as_of is
    older than max_attestation_age_seconds, a status other than FULLY_BACKED, supply + authorized_since + amount
    > reserves.
    """
    guard = policy.reserve_guard
    if not guard.enabled:
        return []
    if facts is None:
        return ["no reserve attestation yet"]
    reasons = []
    if now - facts.as_of > guard.max_attestation_age_seconds:
        reasons.append(f"the latest attestation's figures are older than {guard.max_attestation_age_seconds} s "
                       f"(as of {now - facts.as_of} s ago)")
    if facts.status == "UNDER_BACKED":
        reasons.append("the latest attestation is UNDER_BACKED")
    elif facts.status != "FULLY_BACKED":  # fail closed on any status we do not know
        reasons.append(f"the latest attestation has the unknown status {facts.status!r}")
    total = facts.supply + authorized_since + amount
    if total > facts.reserves:
        reasons.append(f"supply {facts.supply} + authorized since {authorized_since} + this mint {amount} = {total} "
                       f"would exceed reserves {facts.reserves}")
    return reasons
