"""`appliance verify ...`: offline checks for regulators and holders (no HSM, no database, no network)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import click

from appliance.errors import VerificationFailed


@click.group("verify")
def verify() -> None:
    """Offline verification with the published keys only."""


def _offline() -> ModuleType:
    """appliance.verify (JOSE, Merkle, signed notes), imported when a check runs, not for `--help`."""
    from appliance import verify as offline

    return offline


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror}") from exc


def _jwks(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(_read(path))
    except ValueError as exc:
        raise click.ClickException(f"{path} is not JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise click.ClickException(f"{path} is not a JWKS")
    return data


def _report(ok: bool, as_json: bool, summary: dict[str, Any], failure: VerificationFailed | None) -> None:
    if as_json:
        body = {"valid": ok, **summary}
        if failure is not None:
            body["failures"] = [str(p) for p in failure.problems] or [failure.detail]
        click.echo(json.dumps(body, indent=2))
    elif ok:
        click.echo("VALID: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    if failure is not None:
        if not as_json:
            click.echo(f"INVALID: {failure}", err=True)
        raise SystemExit(1)


@verify.command("attestation")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--jwks", "jwks_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--prev", "prev_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def attestation(file: Path, jwks_file: Path, prev_file: Path | None, as_json: bool) -> None:
    """Signature, kid, header, recomputed totals and coverage, and the link to --prev."""
    try:
        payload = _offline().verify_attestation(_read(file), _jwks(jwks_file), _read(prev_file) if prev_file else None)
    except VerificationFailed as exc:
        _report(False, as_json, {"file": str(file)}, exc)
        return
    _report(True, as_json, {"seq": payload["seq"], "as_of": payload["as_of"], "status": payload["status"],
                            "coverage_bps": payload["coverage_bps"]}, None)


@verify.command("chain")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--jwks", "jwks_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def chain(directory: Path, jwks_file: Path, as_json: bool) -> None:
    """A whole history (every *.jws in DIRECTORY): no gaps in seq, every prev right, as_of increasing."""
    files = sorted(directory.glob("*.jws"))
    tokens = [_read(p) for p in files]
    if not tokens:
        raise click.ClickException(f"no *.jws files in {directory}")
    try:
        payloads = _offline().verify_chain(tokens, _jwks(jwks_file), [p.name for p in files])
    except VerificationFailed as exc:
        _report(False, as_json, {"directory": str(directory)}, exc)
        return
    _report(True, as_json, {"attestations": len(payloads), "latest_seq": payloads[-1]["seq"],
                            "latest_status": payloads[-1]["status"]}, None)


@verify.command("liability")
@click.argument("proof_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--attestation", "attestation_file", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--jwks", "jwks_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def liability(proof_file: Path, attestation_file: Path, jwks_file: Path, as_json: bool) -> None:
    """A holder's balance is included in the liabilities of a signed attestation."""
    try:
        proof = json.loads(_read(proof_file))
        payload = _offline().verify_liability(proof, _read(attestation_file), _jwks(jwks_file))
    except ValueError as exc:
        raise click.ClickException(f"{proof_file} is not JSON: {exc}") from exc
    except VerificationFailed as exc:
        _report(False, as_json, {"proof": str(proof_file)}, exc)
        return
    _report(True, as_json, {"account": proof.get("account"), "balance": proof.get("balance"),
                            "attestation": payload["seq"]}, None)
