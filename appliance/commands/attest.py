"""`appliance reserves sign`, `appliance attest`, `appliance attestations fetch` and `appliance liabilities proof`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from appliance.commands import url_option
from appliance.domain import messages
from appliance.domain.canonical import parse_json_strict
from appliance.errors import InvalidInput
from appliance.operator import check_enrolled, load_key, sign_request, sign_reserve_report


def _json_file(path: Path) -> Any:
    """The file's JSON, parsed as strictly as the service would (duplicate keys, floats, BOM refused)."""
    try:
        return parse_json_strict(path.read_bytes(), str(path))
    except OSError as exc:
        raise click.ClickException(f"{path}: {exc.strerror}") from exc
    except InvalidInput as exc:
        raise click.ClickException("; ".join(str(p) for p in exc.problems) or f"{path}: {exc}") from exc


def _report_jws(path: Path) -> str:
    """The custodian's signed report from `path` (what `appliance reserves sign` wrote)."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except OSError as exc:
        raise click.ClickException(f"{path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise click.ClickException(f"{path} is not a compact JWS: sign the report with `appliance reserves "
                                   "sign` first") from exc
    if text.startswith("{"):
        raise click.ClickException(f"{path} is the report's JSON: a custodian signs it first, with `appliance "
                                   "reserves sign`")
    return text


@click.group("reserves")
def reserves() -> None:
    """Custodians' reserve reports."""


@reserves.command("sign")
@click.argument("report_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--operator", required=True, help="an enrolled custodian")
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="write the signed report (a compact JWS) here")
@url_option
@click.pass_context
def sign_report(ctx: click.Context, report_file: Path, operator: str, key: str, out: Path) -> None:
    """Sign REPORT_FILE (the reserve report's JSON) as custodian OPERATOR, for an auditor to attest from."""
    signer = load_key(key)
    enrolled = check_enrolled(signer, operator, ctx.obj.client(read_key=key).policy())
    if "custodian" not in enrolled.get("roles", []):
        raise click.ClickException(f"{operator} is not enrolled as a custodian")
    report = _json_file(report_file)
    if not isinstance(report, dict):
        raise click.ClickException(f"{report_file}: a reserve report is a JSON object")
    out.write_text(sign_reserve_report(signer, report) + "\n", encoding="ascii")
    click.echo(f"reserve report as of {report.get('as_of')} signed by {operator}: {out}")


@click.command("attest")
@click.option("--operator", required=True, help="an auditor operator")
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--reserves", "reserves_file", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="the custodian's signed reserve report (from `appliance reserves sign`)")
@click.option("--supply", "supply_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--holders", "holders_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV account,balance for the proof of liabilities")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="also write the compact JWS here")
@click.option("--json", "as_json", is_flag=True, help='print {"seq", "jws"}')
@url_option
@click.pass_context
def attest(ctx: click.Context, operator: str, key: str, reserves_file: Path, supply_file: Path,
           holders_file: Path | None, out: Path | None, as_json: bool) -> None:
    """Ask the service for a signed reserve attestation over these inputs."""
    client = ctx.obj.client(timeout=300, read_key=key)
    signer = load_key(key)
    check_enrolled(signer, operator, client.policy())
    payload = {"reserves": _report_jws(reserves_file), "supply": _json_file(supply_file),
               "holders_csv": holders_file.read_text(encoding="utf-8") if holders_file else None}
    result = client.post("/v1/attestations", {"jws": sign_request(signer, messages.TYP_ATTESTATION_REQUEST, payload)})
    if out is not None:
        out.write_text(result["jws"] + "\n", encoding="ascii")
    if as_json:
        click.echo(json.dumps({"seq": result["seq"], "jws": result["jws"]}))
    else:
        click.echo(f"attestation {result['seq']} as of {result['as_of']}: {result['status']}")


@click.group("attestations")
def attestations() -> None:
    """Published attestations."""


@attestations.command("fetch")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@url_option
@click.pass_context
def fetch(ctx: click.Context, directory: Path) -> None:
    """Download every attestation (as SEQ.jws) and the JWKS into DIRECTORY, for offline verification."""
    client = ctx.obj.client()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "jwks.json").write_text(json.dumps(client.jwks(), indent=2), encoding="utf-8")
    before, count = None, 0
    while True:
        page = client.get("/v1/attestations", limit=200, before=before)
        for item in page["items"]:
            jws = client.get(item["href"], accept="application/jose")
            (directory / f"{item['seq']}.jws").write_text(str(jws).strip() + "\n", encoding="ascii")
            count += 1
        if not page["next"]:
            break
        before = page["items"][-1]["seq"]
    click.echo(f"{count} attestations and jwks.json in {directory}")


@click.group("liabilities")
def liabilities() -> None:
    """Proof of liabilities (needs --config: reads the holders kept by the appliance)."""


@liabilities.command("proof")
@click.argument("account")
@click.option("--attestation", "seq", type=click.IntRange(min=1), required=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="write the proof here (default stdout)")
@click.pass_obj
def proof(obj: Any, account: str, seq: int, out: Path | None) -> None:
    """Write ACCOUNT's inclusion proof in the liabilities of attestation SEQ."""
    from appliance.services import context
    from appliance.services.attestation import AttestationService

    app = context.build(obj.settings())
    text = json.dumps(AttestationService(app).liability_proof(account, seq), indent=2)
    if out is not None:
        out.write_text(text + "\n", encoding="utf-8")
        click.echo(f"proof for {account} in attestation {seq} written to {out}")
    else:
        click.echo(text)
