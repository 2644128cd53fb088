"""`appliance security-keys ...`: security keys (WebAuthn) from the command line: invite an officer to register one in
the console, and list the registered keys waiting for the enrolment quorum (`appliance policy enrol`)."""

from __future__ import annotations

import json

import click

from appliance.commands import url_option
from appliance.domain import messages, patterns
from appliance.operator import check_enrolled, load_key, sign_request


@click.group("security-keys")
def security_keys() -> None:
    """Officers' security keys: invitations and registrations waiting for enrolment."""


@security_keys.command("invite")
@click.argument("name")
@click.option("--operator", required=True, help="you: a security admin")
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
@url_option
@click.pass_context
def invite(ctx: click.Context, name: str, operator: str, key: str, as_json: bool) -> None:
    """A link (valid for a day) with which officer NAME registers a security key in the console. The key counts
    once the governance quorum approves its enrolment (`appliance policy enrol`, then `policy approve`)."""
    if not patterns.NAME.fullmatch(name):
        raise click.BadParameter(f"{name!r} is not an officer name", param_hint="NAME")
    client = ctx.obj.client(read_key=key)
    signer = load_key(key)
    check_enrolled(signer, operator, client.policy())
    result = client.post("/v1/security-keys/invitations",
                         {"jws": sign_request(signer, messages.TYP_KEY_INVITATION, {"operator": name})})
    click.echo(json.dumps(result, indent=2) if as_json else
               f"give {name} this link (valid for 24 h), and compare the key's fingerprint with them:\n"
               f"{result['link']}")


@security_keys.command("pending")
@click.option("--json", "as_json", is_flag=True)
@url_option
@click.pass_context
def pending(ctx: click.Context, as_json: bool) -> None:
    """Security keys registered in the console and waiting for their enrolment quorum."""
    found = ctx.obj.client().get("/v1/security-keys/registrations")["registrations"]
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    for r in found:
        click.echo(f"{r['id']}  {r['operator']:<12} {r['fingerprint']}  {r['credential']['label']}")
    if not found:
        click.echo("no security key is waiting for enrolment")
