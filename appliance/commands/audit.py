"""`appliance audit verify`: an auditor's independent check of the transparency log (see verify.verify_log).

The state file remembers the last verified checkpoint and the leaf hashes under it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from appliance.commands import url_option
from appliance.errors import InvalidInput
from appliance.verify import check_state, verify_log


@click.group()
def audit() -> None:
    """The tamper-evident audit log."""


def _load_state(path: Path | None) -> dict[str, Any]:
    if path is None or not path.exists():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot read the state file {path}: {exc}") from exc
    try:
        return check_state(state)
    except InvalidInput as exc:
        raise click.ClickException(f"{path}: {exc}: " + "; ".join(str(p) for p in exc.problems)) from exc


def _save_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(state), encoding="utf-8")
    os.replace(tmp, path)


@audit.command("verify")
@click.option("--state", "state_path", type=click.Path(dir_okay=False, path_type=Path),
              help="remembers the last verified checkpoint (created if missing)")
@click.option("--key", help="the audit key's signed-note verifier key (default: the state file's)")
@click.option("--jwks", "jwks_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="on first use, the published JWKS obtained independently: its audit key must be the service's")
@click.option("--json", "as_json", is_flag=True)
@url_option
@click.pass_context
def verify(ctx: click.Context, state_path: Path | None, key: str | None, jwks_file: Path | None,
           as_json: bool) -> None:
    """Fetch checkpoint and entries, recompute the tree, check consistency with the last checkpoint seen."""
    client = ctx.obj.client()
    state = _load_state(state_path)
    jwks = None
    if jwks_file is not None:
        try:
            jwks = json.loads(jwks_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise click.ClickException(f"cannot read the JWKS {jwks_file}: {exc}") from exc
        if not isinstance(jwks, dict):
            raise click.ClickException(f"{jwks_file} is not a JWKS")
    new_state, said = verify_log(client, state, key, jwks)
    if state_path is not None:
        _save_state(state_path, new_state)
    result = {"ok": True, "size": new_state["size"], "root": new_state["root"], "notes": said}
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for line in said:
        click.echo(line)
    click.echo(f"OK: {new_state['size']} entries, root {new_state['root']}")
