"""`appliance policy ...`: propose and approve policy bundles (security admins), show the active one."""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path
from typing import Any

import click

from appliance.commands import ID, url_option, warn_unpinned
from appliance.domain import messages, policy_history, present
from appliance.domain.bundle_diff import readable
from appliance.errors import VerificationFailed
from appliance.operator import check_enrolled, check_proposal, load_key, sign_request


@click.group()
def policy() -> None:
    """Quorum policy and operator set (changes need a quorum of security admins)."""


def _toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{path}: {exc}") from exc


@policy.command("propose")
@click.argument("policy_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--operators", "operators_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="a new operators.toml (default: keep the current operator set)")
@click.option("--operator", required=True)
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
@url_option
@click.pass_context
def propose(ctx: click.Context, policy_file: Path, operators_file: Path | None, operator: str, key: str,
            as_json: bool) -> None:
    """Propose POLICY_FILE (and optionally a new operator set) as the next bundle."""
    client = ctx.obj.client(read_key=key)
    signer = load_key(key)
    current = client.policy()
    check_enrolled(signer, operator, current)
    payload = {"policy": _toml(policy_file), "operators": _toml(operators_file) if operators_file else None,
               "base": current["active"]["hash"]}  # the bundle this proposal changes (stale once another lands)
    result = client.post("/v1/policy/proposals", {"jws": sign_request(signer, messages.TYP_POLICY_PROPOSAL, payload)})
    click.echo(json.dumps(result, indent=2) if as_json else
               f"proposal {result['id']} (bundle {result['hash']}) needs {result['governance']}")
    if not as_json:
        for warning in result.get("warnings", []):
            click.echo(f"warning: {warning}", err=True)


@policy.command("approve")
@click.argument("proposal_id", type=ID)
@click.option("--operator", required=True)
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--reject", is_flag=True)
@click.option("--yes", is_flag=True, help="do not ask for confirmation (scripts)")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON (implies --yes)")
@url_option
@click.pass_context
def approve(ctx: click.Context, proposal_id: str, operator: str, key: str, reject: bool, yes: bool,
            as_json: bool) -> None:
    """Show what the proposal changes, then approve (or reject) it; the bundle hash is signed too.

    The bundle is recomputed here from the proposer's signed proposal and compared with what the service lists:
    a proposal rewritten in the database, or built on an older bundle, is refused before anything is signed."""
    client = ctx.obj.client(read_key=key)
    signer = load_key(key)
    current = client.policy()
    check_enrolled(signer, operator, current)
    proposal = next((p for p in current["proposals"] if p["id"] == proposal_id), None)
    if proposal is None:
        raise click.ClickException(f"no pending proposal {proposal_id}")
    if not reject:
        warn_unpinned(client, as_json)
        proposed = check_proposal(current, proposal)
        if not as_json:
            changes = readable(current["active"]["bundle"], proposed)
            click.echo(f"proposal {proposal_id} by {proposal['proposed_by']}, bundle {proposal['hash']}")
            click.echo(f"changes against the active bundle {current['active']['hash']}:")
            click.echo("\n".join(f"  {line}" for line in changes) or "  (none)")
        if not (yes or as_json):
            click.confirm(f"approve this change as {operator}?", abort=True)
    jws = sign_request(signer, messages.TYP_POLICY_APPROVAL, {"proposal": proposal_id, "hash": proposal["hash"],
                                                          "decision": "reject" if reject else "approve"})
    result = client.post(f"/v1/policy/proposals/{proposal_id}/approvals", {"jws": jws})
    click.echo(json.dumps(result, indent=2) if as_json else f"proposal {proposal_id}: {result['status']}")


@policy.command("enrol")
@click.argument("registration_ids", nargs=-1, type=ID)
@click.option("--operator", required=True, help="you: a security admin")
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--yes", is_flag=True, help="do not ask for confirmation (scripts)")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON (implies --yes)")
@url_option
@click.pass_context
def enrol(ctx: click.Context, registration_ids: tuple[str, ...], operator: str, key: str, yes: bool,
          as_json: bool) -> None:
    """Propose enrolling the security keys registered in the console (all waiting ones, or REGISTRATION_IDS):
    the active policy with each key added to its officer. Shows each key's fingerprint first: compare them with
    their owners. The other security admins then approve it (`appliance policy approve`)."""
    client = ctx.obj.client(read_key=key)
    signer = load_key(key)
    current = client.policy()
    check_enrolled(signer, operator, current)
    waiting = client.get("/v1/security-keys/registrations")["registrations"]
    chosen = [r for r in waiting if not registration_ids or r["id"] in registration_ids]
    if not chosen or (registration_ids and len(chosen) != len(set(registration_ids))):
        raise click.ClickException("no such security key is waiting for enrolment: see `appliance security-keys "
                                   "pending`")
    bundle = copy.deepcopy(current["active"]["bundle"])
    bundle["policy"]["version"] = int(bundle["policy"]["version"]) + 1  # every change is a new revision
    for entry in bundle["operators"]["operators"]:
        entry.setdefault("webauthn", []).extend(r["credential"] for r in chosen if r["operator"] == entry["name"])
        if not entry["webauthn"]:
            del entry["webauthn"]
    _propose_changed(client, signer, current, bundle, f"propose this enrolment as {operator}?", yes, as_json)


@policy.command("unenrol")
@click.argument("keys", nargs=-1, required=True)
@click.option("--operator", required=True, help="you: a security admin")
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--yes", is_flag=True, help="do not ask for confirmation (scripts)")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON (implies --yes)")
@url_option
@click.pass_context
def unenrol(ctx: click.Context, keys: tuple[str, ...], operator: str, key: str, yes: bool, as_json: bool) -> None:
    """Propose removing enrolled security keys (a lost or retired key), each named by its credential id or by a
    unique prefix of its fingerprint as `policy show --json` and the console show it ("3c20 a97f")."""
    client = ctx.obj.client(read_key=key)
    signer = load_key(key)
    current = client.policy()
    check_enrolled(signer, operator, current)
    bundle = copy.deepcopy(current["active"]["bundle"])
    bundle["policy"]["version"] = int(bundle["policy"]["version"]) + 1  # every change is a new revision
    enrolled = [(entry, c) for entry in bundle["operators"]["operators"] for c in entry.get("webauthn", [])]
    doomed = []
    for wanted in keys:
        matches = [c["id"] for _, c in enrolled
                   if c["id"] == wanted or _fingerprint(c).replace(" ", "").startswith(wanted.replace(" ", ""))]
        if len(matches) != 1:
            raise click.ClickException(f"{wanted!r} names {len(matches)} enrolled security keys, not one")
        doomed += matches
    for entry, _ in enrolled:
        entry["webauthn"] = [c for c in entry.get("webauthn", []) if c["id"] not in doomed]
        if not entry["webauthn"]:
            del entry["webauthn"]
    question = f"propose removing {'this key' if len(doomed) == 1 else 'these keys'} as {operator}?"
    _propose_changed(client, signer, current, bundle, question, yes, as_json)


def _propose_changed(client: Any, signer: Any, current: dict[str, Any], bundle: dict[str, Any], question: str,
                     yes: bool, as_json: bool) -> None:
    """Show what `bundle` changes against the active one, ask `question` (unless --yes or --json), then sign and
    send it as a proposal on the active bundle."""
    if not as_json:
        click.echo("\n".join(readable(current["active"]["bundle"], bundle)))
        if not yes:
            click.confirm(question, abort=True)
    payload = {"policy": bundle["policy"], "operators": bundle["operators"], "base": current["active"]["hash"]}
    result = client.post("/v1/policy/proposals", {"jws": sign_request(signer, messages.TYP_POLICY_PROPOSAL, payload)})
    click.echo(json.dumps(result, indent=2) if as_json else
               f"proposal {result['id']} (bundle {result['hash']}) needs {result['governance']}")


def _fingerprint(credential: dict[str, Any]) -> str:
    from appliance.domain.webauthn import Credential, fingerprint

    return fingerprint(Credential(str(credential["id"]), str(credential["public_key"])))


@policy.command("show")
@click.option("--json", "as_json", is_flag=True)
@url_option
@click.pass_context
def show(ctx: click.Context, as_json: bool) -> None:
    """The active bundle in clear (limits, tiers, allowlist, governance, operators and their keys), its hash,
    and the open proposals."""
    current = ctx.obj.client().policy()
    if as_json:
        click.echo(json.dumps(current, indent=2))
        return
    click.echo("\n".join(present.policy_lines(current)))


@policy.command("history")
@click.option("--json", "as_json", is_flag=True)
@url_option
@click.pass_context
def history(ctx: click.Context, as_json: bool) -> None:
    """The policy activation history, verified here from the pinned trust anchor: who proposed and who approved
    each bundle. With no anchor pinned it is verified from the first bundle the service names: compare that hash
    with the one `appliance init` printed, and pin it."""
    client = ctx.obj.client()
    served = client.policy_history()
    anchor = client.trust_anchor or (served.get("anchor") if isinstance(served, dict) else None)
    try:
        activations = policy_history.parse_served(served)
        policy_history.verify_history(str(anchor), activations)
    except policy_history.HistoryBroken as exc:
        raise VerificationFailed(f"the policy history does not verify from the trust anchor {anchor}: {exc}") from exc
    steps = policy_history.summary(activations)
    result = {"anchor": anchor, "pinned": client.trust_anchor is not None, "verified": True, "activations": steps}
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for s in steps:
        click.echo(f"{s['seq']:>3} {s['hash']} proposed by {s['proposer']}"
                   + (f", approved by {', '.join(s['approvers'])}" if s["approvers"] else ""))
    click.echo(f"verified from the {'pinned' if result['pinned'] else 'served (NOT pinned)'} trust anchor {anchor}")
