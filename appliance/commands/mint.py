"""`appliance mint ...`: request, approve, show, list and cancel mints from an officer's workstation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from appliance.commands import ID, url_option, warn_unpinned
from appliance.domain import amounts, messages, present
from appliance.errors import VerificationFailed

# eip712 (keccak) and appliance.operator (keys, JWS, policy) are imported by the commands that sign or check, so
# that `--help` and the group's listing stay fast
if TYPE_CHECKING:
    from appliance.client import Client


@click.group()
def mint() -> None:
    """Mint authorizations under quorum."""


def _client(ctx: click.Context, key: str | None = None) -> Client:
    client: Client = ctx.obj.client(read_key=key)
    return client


def _operator(client: Client, name: str, key: str) -> Any:
    from appliance.operator import check_enrolled, load_key

    signer = load_key(key)
    check_enrolled(signer, name, client.policy())
    return signer


def _chain_for(client: Client, to: str) -> int:
    allowlist = client.policy()["active"]["bundle"]["policy"]["mint"]["allowlist"]
    chains = sorted({entry["chain_id"] for entry in allowlist if entry["address"] == to})
    if len(chains) != 1:
        raise click.UsageError("give --chain-id: the recipient is allowlisted on "
                               + (", ".join(map(str, chains)) if chains else "no chain"))
    return int(chains[0])


def describe(req: dict[str, Any]) -> str:
    """The request in clear, as an approver must read it before signing."""
    lines = [
        f"request   {req['id']}  ({req['status']})",
        f"amount    {_trimmed(req['amount_tokens'])} {req['token']}  ({int(req['amount']):,} base units)",
        f"to        {req['to']}",
        f"chain     {req['chain_id']}  contract {req['typedData']['domain']['verifyingContract']}",
        f"valid     {present.utc(req['valid_after'])} to {present.utc(req['valid_before'])}",
        f"expires   {present.utc(req['expires_at'])} (the request, unless authorized before)",
        f"nonce     {req['nonce']}",
        f"digest    {req['digest']}",
        f"requester {req['requester']}",
        f"needs     {req['required'].get('text', req['required'])}",
        f"progress  {present.progress(req['quorum'])}",
        "approvals " + (", ".join(f"{a['operator']}:{a['decision']}" for a in req["approvals"]) or "none"),
    ]
    lines += [f"WARNING   {w}" for w in req.get("warnings", [])]
    if req.get("authorization"):
        lines.append(f"signature {req['authorization']['signature']}")
        lines.append(f"signer    {req['authorization']['signer']}")
    return "\n".join(lines)


def _trimmed(tokens: str) -> str:
    """ "250,000.000000" -> "250,000" (no trailing fraction zeros)."""
    return tokens.rstrip("0").rstrip(".") if "." in tokens else tokens


def _resolve(client: Client, request_id: str) -> str:
    """A full request id from a unique prefix of one (among the newest 200 requests); a full id as is."""
    if len(request_id) == 36:
        return request_id
    items = client.get("/v1/mint-requests", limit=200)["items"]
    found = [item["id"] for item in items if item["id"].startswith(request_id)]
    if len(found) == 1:
        return str(found[0])
    if not found:
        raise click.ClickException(f"no mint request id starts with {request_id!r}")
    raise click.ClickException(f"{request_id!r} is the start of {len(found)} request ids: give more of it "
                               f"({', '.join(f[:12] for f in found[:5])}...)")


def _amount(client: Client, amount: str, unit: str) -> str:
    """Base units of `--amount`: a decimal string of base units, or tokens (`--unit tokens`, or the amount
    followed by the token's symbol, e.g. "250000 HKDS")."""
    token = client.policy().get("token", {})
    symbol, decimals = str(token.get("symbol", "")), token.get("decimals")
    in_tokens = unit == "tokens" or bool(symbol and amount.strip().upper().endswith(symbol.upper()))
    if not in_tokens:
        return str(amounts.parse_amount(amount, "--amount"))
    if not isinstance(decimals, int):
        raise click.ClickException("the service does not say how many decimals the token has: give base units")
    return str(amounts.parse_tokens(amount, decimals, "--amount", symbol=symbol))


@mint.command("request")
@click.option("--operator", required=True, help="your operator name")
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False), help="your private key (PEM)")
@click.option("--to", "to", required=True, help="EIP-55 recipient address (allowlisted)")
@click.option("--amount", required=True,
              help='amount: base units ("250000000000"), or tokens with --unit tokens or the symbol ("250,000 HKDS")')
@click.option("--unit", type=click.Choice(["base", "tokens"]), default="base", show_default=True,
              help="what --amount counts")
@click.option("--chain-id", type=int, help="chain (default: the one the recipient is allowlisted on)")
@click.option("--json", "as_json", is_flag=True)
@url_option
@click.pass_context
def request(ctx: click.Context, operator: str, key: str, to: str, amount: str, unit: str, chain_id: int | None,
            as_json: bool) -> None:
    """Create a mint request; prints it in clear (amount in tokens and base units, validity in UTC)."""
    from appliance.domain import eip712
    from appliance.operator import sign_request

    client = _client(ctx, key)
    signer = _operator(client, operator, key)
    to = eip712.parse_address(to, "--to")
    amount = _amount(client, amount, unit)
    chain = chain_id if chain_id is not None else _chain_for(client, to)
    jws = sign_request(signer, messages.TYP_MINT_REQUEST, {"to": to, "amount": amount, "chain_id": chain})
    created = client.post("/v1/mint-requests", {"jws": jws})
    if as_json:
        click.echo(_json(created))
    else:
        click.echo(describe(created))


@mint.command("approve")
@click.argument("request_id", type=ID)
@click.option("--operator", required=True)
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--reject", is_flag=True, help="reject (veto) instead of approving")
@click.option("--yes", is_flag=True, help="do not ask for confirmation (scripts)")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON (implies --yes)")
@url_option
@click.pass_context
def approve(ctx: click.Context, request_id: str, operator: str, key: str, reject: bool, yes: bool,
            as_json: bool) -> None:
    """Show the request in clear, then sign and submit your approval (or rejection). REQUEST_ID may be a unique
    prefix of the id."""
    from appliance.domain import eip712
    from appliance.operator import check_requester_signed, check_within_policy, sign_request

    client = _client(ctx, key)
    signer = _operator(client, operator, key)
    request_id = _resolve(client, request_id)
    req = client.get(f"/v1/mint-requests/{request_id}")
    roles = next((frozenset(op["roles"]) for op in client.policy()["active"]["bundle"]["operators"]["operators"]
                  if op["name"] == operator), frozenset())
    why_not = present.may_decide(req, operator, roles)
    if why_not is not None:  # before anything is shown or asked: the service would refuse it anyway
        raise click.ClickException(f"{operator} cannot decide on request {request_id}: {why_not}")
    domain, message = eip712.mint_from_typed_data(req["typedData"])
    digest = "0x" + eip712.mint_digest(domain, message).hex()
    if digest != req["digest"]:
        raise VerificationFailed("the service's digest does not match its typed data: refusing to sign")
    if (message.to, str(message.amount), domain.chain_id, "0x" + message.nonce.hex()) != (
            req["to"], req["amount"], req["chain_id"], str(req["nonce"]).lower()):
        raise VerificationFailed("the typed data does not match the request fields: refusing to sign")
    decision = "reject" if reject else "approve"
    if not reject:
        warn_unpinned(client, as_json)
        policy = client.policy()
        check_requester_signed(policy, req)
        check_within_policy(policy, req)
        if req.get("warnings"):
            raise VerificationFailed("the appliance would not sign this request: " + "; ".join(req["warnings"]))
    if not as_json:
        click.echo(describe(req))
    if not (yes or as_json):
        click.confirm(f"{decision} this mint as {operator}?", abort=True)
    jws = sign_request(signer, messages.TYP_MINT_APPROVAL, {"request_id": request_id, "digest": digest,
                                                        "decision": decision, "policy": req["policy"]})
    result = client.post(f"/v1/mint-requests/{request_id}/approvals", {"jws": jws})
    click.echo(_json(result) if as_json else f"\n{decision}d; status {result['status']}; "
               f"{present.progress(result['quorum'])}"
               + (f"; signature {result['authorization']['signature']}" if result.get("authorization") else ""))


@mint.command("show")
@click.argument("request_id", type=ID)
@click.option("--json", "as_json", is_flag=True)
@url_option
@click.pass_context
def show(ctx: click.Context, request_id: str, as_json: bool) -> None:
    """A request, its approvals, status, and the authorization once issued (REQUEST_ID: or a unique prefix)."""
    client = _client(ctx)
    req = client.get(f"/v1/mint-requests/{_resolve(client, request_id)}")
    click.echo(_json(req) if as_json else describe(req))


@mint.command("list")
@click.option("--status", type=click.Choice(["pending", "authorized", "rejected", "cancelled", "expired"]))
@click.option("--limit", type=click.IntRange(1, 200), default=50)
@click.option("--json", "as_json", is_flag=True)
@url_option
@click.pass_context
def list_requests(ctx: click.Context, status: str | None, limit: int, as_json: bool) -> None:
    """Requests, newest first."""
    listing = _client(ctx).get("/v1/mint-requests", status=status, limit=limit)
    if as_json:
        click.echo(_json(listing))
        return
    for item in listing["items"]:
        click.echo(f"{item['id']}  {item['status']:<10} {int(item['amount']):>26,}  chain {item['chain_id']}  "
                   f"{item['to']}  by {item['requester']}  {present.utc(item['created_at'])}")
    click.echo(f"{len(listing['items'])} of {listing['total']}")


@mint.command("cancel")
@click.argument("request_id", type=ID)
@click.option("--operator", required=True)
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
@url_option
@click.pass_context
def cancel(ctx: click.Context, request_id: str, operator: str, key: str, as_json: bool) -> None:
    """Cancel a pending request (its requester or a security admin); REQUEST_ID may be a unique prefix."""
    from appliance.operator import sign_request

    client = _client(ctx, key)
    signer = _operator(client, operator, key)
    request_id = _resolve(client, request_id)
    jws = sign_request(signer, messages.TYP_MINT_CANCEL, {"request_id": request_id})
    result = client.post(f"/v1/mint-requests/{request_id}/cancel", {"jws": jws})
    click.echo(_json(result) if as_json else f"request {request_id} is {result['status']}")


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2)
