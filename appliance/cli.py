"""The `appliance` command line: thin click commands that format what the services and the client return.

Expected failures (bad config, wrong PIN, a refused request, a failed verification) print one clear message
and exit non-zero; they never show a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from appliance.commands import ANCHOR, url_option
from appliance.errors import ApplianceError, VerificationFailed

if TYPE_CHECKING:  # the client (http, policy history) is imported by the commands that talk to a service
    from appliance.client import Client

EXIT_FAILED = 1
EXIT_UNREADY = 3  # `check`: fit to serve, but the HSM cannot be used right now (module, token or keys not visible)


class Context:
    def __init__(self, config: str | None, url: str | None, trust_anchor: str | None = None,
                 tls: tuple[str | None, str | None, str | None] = (None, None, None),
                 read_key: str | None = None) -> None:
        self.config_path = config
        self.read_key = read_key
        self.url_option = url
        self.trust_anchor = trust_anchor
        self.tls = tls  # (CA file, client certificate, client key)

    def client(self, timeout: float = 30.0, read_key: str | None = None) -> Client:
        """The service's client, verifying the policy history from the pinned trust anchor when one is set, and
        signing its reads with `read_key` (a command's own --key), else --read-key, else not at all."""
        from appliance.client import Client

        ca_file, cert, key = self.tls
        reader = None
        if read_key or self.read_key:
            from appliance.operator import load_key, read_authorization

            reader = read_authorization(load_key(read_key or self.read_key or ""))
        return Client(self.url(), timeout=timeout, trust_anchor=self.trust_anchor, ca_file=ca_file,
                      client_cert=cert, client_key=key, reader=reader)

    def settings(self) -> Any:
        from appliance import config

        if not self.config_path:
            raise click.UsageError("this command needs --config FILE (or APPLIANCE_CONFIG)")
        return config.load(self.config_path)

    def url(self) -> str:
        if self.url_option:
            return self.url_option.rstrip("/")
        if self.config_path:
            s = self.settings()
            host = f"[{s.listen_host}]" if ":" in s.listen_host else s.listen_host
            return f"{'https' if s.tls else 'http'}://{host}:{s.listen_port}"
        return "http://127.0.0.1:8080"


def emit(obj: Any, as_json: bool, text: str | None = None) -> None:
    if as_json:
        click.echo(json.dumps(obj, indent=2, sort_keys=False))
    else:
        click.echo(text if text is not None else json.dumps(obj, indent=2))


@click.group()
@click.option("--config", envvar="APPLIANCE_CONFIG", type=click.Path(dir_okay=False),
              help="appliance.toml (default: $APPLIANCE_CONFIG)")
@click.option("--url", envvar="APPLIANCE_URL", help="service URL (default: $APPLIANCE_URL, then the config)")
@click.option("--trust-anchor", envvar="APPLIANCE_TRUST_ANCHOR", type=ANCHOR,
              help="the first policy bundle's hash (`appliance init` prints it): verify the served policy history "
                   "from it before signing anything (default: $APPLIANCE_TRUST_ANCHOR)")
@click.option("--ca-file", envvar="APPLIANCE_CA_FILE", type=click.Path(dir_okay=False),
              help="trust only this CA for an https:// service (default: $APPLIANCE_CA_FILE, else the system's)")
@click.option("--client-cert", envvar="APPLIANCE_CLIENT_CERT", type=click.Path(dir_okay=False),
              help="client certificate (PEM) for a service that asks for one ($APPLIANCE_CLIENT_CERT)")
@click.option("--client-key", envvar="APPLIANCE_CLIENT_KEY", type=click.Path(dir_okay=False),
              help="its private key, if not in the certificate file ($APPLIANCE_CLIENT_KEY)")
@click.option("--read-key", envvar="APPLIANCE_READ_KEY", type=click.Path(dir_okay=False),
              help="your operator key (PEM), to sign reads of requests and policy details; commands that take "
                   "--key sign with that ($APPLIANCE_READ_KEY)")
@click.pass_context
def cli(ctx: click.Context, config: str | None, url: str | None, trust_anchor: str | None, ca_file: str | None,
        client_cert: str | None, client_key: str | None, read_key: str | None) -> None:
    """Reserve-attestation signing appliance."""
    os.umask(0o077)  # the store, its WAL, attestations and holder files: owner only
    ctx.obj = Context(config, url, trust_anchor, (ca_file, client_cert, client_key), read_key)


@cli.command("dev-init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="print the summary as one JSON object")
def dev_init(directory: Path, as_json: bool) -> None:
    """A complete throwaway environment in DIRECTORY: SoftHSM2 token, keys, config, dev operators."""
    from appliance.devenv import dev_init as make

    env = make(directory)
    summary = env.summary()
    if as_json:
        emit(summary, True)
        return
    click.echo(f"dev environment ready in {directory}")
    click.echo(f"  config:   {env.config}")
    click.echo(f"  token:    {env.token} (user PIN {env.user_pin}: a throwaway test PIN)")
    click.echo(f"  chain:    {env.chain_id}, verifying contract {env.verifying_contract}")
    click.echo(f"  allowlist: {', '.join(env.allowlist)}")
    click.echo(f"  trust anchor: {env.trust_anchor} (officers: export APPLIANCE_TRUST_ANCHOR={env.trust_anchor})")
    for op in env.operators:
        click.echo(f"  operator {op['name']:<6} {','.join(op['roles']):<15} {op['key']}")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def init(obj: Context, as_json: bool) -> None:
    """Create (idempotently) and check the HSM keys, migrate the store, pin the first policy."""
    from appliance.services import setup

    result = setup.init(obj.settings())
    lines = [f"{k['purpose']:<12} {k['label']:<20} {'created' if k['created'] else 'present'}"
             for k in result["keys"]]
    lines.append(f"mint signer  {result['mint_signer']}")
    lines.append(f"policy       {result['policy_hash']}{' (pinned now)' if result['policy_pinned_now'] else ''}")
    lines.append(f"trust anchor {result['trust_anchor']} (officers pin it: APPLIANCE_TRUST_ANCHOR)")
    emit(result, as_json, "\n".join(lines))


@cli.command()
@click.pass_obj
def check(obj: Context) -> None:
    """Check the HSM keys and the store as `serve` would; exit 0 when fit to serve, 3 when fit but the HSM cannot
    be used right now (serve then starts unready), 1 when it must not serve (unfit key, refused PIN, old schema)."""
    from appliance.services import context, keys
    from appliance.services.policy import PolicyService
    from appliance.store import schema

    app = context.build(obj.settings())
    unready = keys.check_at_start(app)  # raises on an unfit key or a refused PIN
    if not schema.is_current(app.db):
        raise click.ClickException("the database schema is not current: run `appliance init`")
    if unready:
        click.echo(f"not ready: the HSM cannot be used now: {unready}", err=True)
        sys.exit(EXIT_UNREADY)
    PolicyService(app).active()
    app.hsm.close()
    click.echo("ok: keys are sensitive, non-extractable and sign-only; store and policy ready")


@cli.command()
@click.option("--listen", help="HOST:PORT (default: service.listen in the config)")
@click.pass_obj
def serve(obj: Context, listen: str | None) -> None:
    """Serve HTTP with worker processes; refuses to start unless `check` passes (or finds only the HSM away: then
    it serves unready, 503 and /readyz false, until the HSM is back)."""
    import shutil
    import subprocess
    import tempfile

    from appliance import config

    settings = obj.settings()
    listen = listen or f"{settings.listen_host}:{settings.listen_port}"
    host = config.listen_host(listen)
    if host is None:
        raise click.UsageError(f"--listen must be HOST:PORT, not {listen!r}")
    refusal = config.plaintext_refusal(settings, host)
    if refusal:
        raise click.ClickException(refusal)
    preflight = subprocess.run(  # noqa: S603 - our own interpreter and module, no shell
        [sys.executable, "-m", "appliance.cli", "--config", str(settings.path), "check"],
                               capture_output=True, text=True, check=False)
    if preflight.returncode == EXIT_UNREADY:  # the HSM is away: serve unready (503, /readyz false) until it is back
        click.echo(f"warning: {preflight.stderr.strip()}; serving unready until it can", err=True)
    elif preflight.returncode != 0:
        raise click.ClickException("refusing to serve: " + (preflight.stderr or preflight.stdout).strip())
    from appliance.server import METRICS_PREFIX, remove_stale_metrics_dirs

    # without `metrics_dir` configured: a directory of this run, removed when the server exits (and, when it was
    # killed, by the next `serve`)
    own = settings.metrics_dir is None
    if own:
        remove_stale_metrics_dirs(Path(tempfile.gettempdir()))
    metrics_dir = settings.metrics_dir or Path(tempfile.gettempdir()) / f"{METRICS_PREFIX}{os.getpid()}"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    tls = settings.tls
    scheme = "https" if tls else "http"
    click.echo(f"serving on {scheme}://{listen} with {settings.workers} workers"
               + (" (client certificates required)" if tls and tls.client_ca_file else ""), err=True)
    args = [sys.executable, "-m", "appliance.server", "--config", str(settings.path), "--listen", listen,
            "--workers", str(settings.workers), "--threads", str(settings.threads),
            "--max-body", str(settings.max_body_bytes)] + (["--own-metrics-dir"] if own else [])
    if tls:
        args += ["--certfile", str(tls.cert_file), "--keyfile", str(tls.key_file)]
        args += ["--client-ca", str(tls.client_ca_file)] if tls.client_ca_file else []
    os.execve(sys.executable, args, env)  # noqa: S606 - replaces this process with the server


@cli.group()
def keys() -> None:
    """Public keys."""


@keys.command("export")
@click.option("--format", "fmt", type=click.Choice(["jwks", "pem", "note"]), default="jwks")
@url_option
@click.pass_obj
def keys_export(obj: Context, fmt: str) -> None:
    """Print the public keys: a JWKS, PEM for openssl, or the audit signed-note verifier key.

    With --config the keys are read from the HSM; otherwise they are fetched from the service (--url); PEM is
    made from the service's JWKS then, so a regulator gets it without the HSM.
    """
    if obj.config_path:
        from appliance.services import context
        from appliance.services import keys as key_service
        from appliance.services.audit import AuditLog

        app = context.build(obj.settings())
        if fmt == "jwks":
            click.echo(json.dumps(key_service.public_jwks(app), indent=2))
        elif fmt == "pem":
            click.echo(key_service.public_pems(app), nl=False)
        else:
            click.echo(AuditLog(app).verifier_key())
        app.hsm.close()
        return
    client = obj.client()
    if fmt == "jwks":
        click.echo(json.dumps(client.jwks(), indent=2))
    elif fmt == "note":
        click.echo(client.verifier_key())
    else:
        from appliance.verify import jwks_pem

        click.echo(jwks_pem(client.jwks()), nl=False)


# Command groups, imported only when used: `appliance mint show` loads neither the HSM adapter nor the store,
# and `appliance --help` shows each group's short help from here (tests check it is the group's own).
_LAZY: dict[str, tuple[str, str, str]] = {
    "mint": ("mint", "mint", "Mint authorizations under quorum."),
    "audit": ("audit", "audit", "The tamper-evident audit log."),
    "policy": ("policy", "policy", "Quorum policy and operator set (changes need a quorum of security admins)."),
    "attest": ("attest", "attest", "Ask the service for a signed reserve attestation over these inputs."),
    "attestations": ("attest", "attestations", "Published attestations."),
    "liabilities": ("attest", "liabilities",
                    "Proof of liabilities (needs --config: reads the holders kept by the appliance)."),
    "reserves": ("attest", "reserves", "Custodians' reserve reports."),
    "verify": ("verify", "verify", "Offline verification with the published keys only."),
    "security-keys": ("security_keys", "security_keys",
                      "Officers' security keys: invitations and registrations waiting for enrolment."),
}


def lazy_command(name: str) -> click.Command:
    """The command group `name` of _LAZY, imported now."""
    import importlib

    module, attr, _help = _LAZY[name]
    command: click.Command = getattr(importlib.import_module(f"appliance.commands.{module}"), attr)
    return command


def _lazy_list(ctx: click.Context) -> list[str]:
    return sorted([*click.Group.list_commands(cli, ctx), *_LAZY])


def _lazy_get(ctx: click.Context, name: str) -> click.Command | None:
    return lazy_command(name) if name in _LAZY else click.Group.get_command(cli, ctx, name)


def _lazy_format_commands(ctx: click.Context, formatter: click.HelpFormatter) -> None:
    """Click's listing of the subcommands, with the lazy groups' short help taken from _LAZY (not imported)."""
    eager: dict[str, click.Command] = {}
    for n in click.Group.list_commands(cli, ctx):
        command = click.Group.get_command(cli, ctx, n)
        if command is not None and not command.hidden:
            eager[n] = command
    names = sorted([*eager, *_LAZY])
    limit = formatter.width - 6 - max(len(n) for n in names)
    rows: list[tuple[str, str]] = []
    for n in names:
        shown = click.Command(n, help=_LAZY[n][2]) if n in _LAZY else eager[n]  # a stand-in: same wording
        rows.append((n, shown.get_short_help_str(limit)))
    with formatter.section("Commands"):
        formatter.write_dl(rows)


cli.list_commands = _lazy_list  # type: ignore[method-assign]
cli.get_command = _lazy_get  # type: ignore[method-assign,assignment]
cli.format_commands = _lazy_format_commands  # type: ignore[method-assign]


def main() -> None:
    """Entry point: one error path for every expected failure.

    With --json an expected failure also prints a JSON object on stdout, {"ok": false, "error": {...}}, so a
    script reading stdout never mistakes a failure for empty output; the message goes to stderr as always."""
    as_json = "--json" in sys.argv[1:]
    try:
        code = cli.main(standalone_mode=False, prog_name="appliance")
        if isinstance(code, int) and code:
            sys.exit(code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(EXIT_FAILED)
    except click.ClickException as exc:
        exc.show()
        _json_failure(as_json, "usage", "Usage error", exc.format_message())
        sys.exit(exc.exit_code)
    except VerificationFailed as exc:
        click.echo(f"FAILED: {exc}", err=True)
        _json_failure(as_json, exc.slug, exc.title, exc.detail, exc.problems)
        sys.exit(EXIT_FAILED)
    except ApplianceError as exc:
        click.echo(f"error: {exc}", err=True)
        _json_failure(as_json, exc.slug, exc.title, exc.detail, exc.problems)
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt:
        sys.exit(130)


def _json_failure(as_json: bool, slug: str, title: str, detail: str, problems: Any = ()) -> None:
    if as_json:
        error = {"type": slug, "title": title, "detail": detail,
                 "errors": [{"location": p.location, "message": p.message} for p in problems]}
        click.echo(json.dumps({"ok": False, "error": error}, indent=2))


if __name__ == "__main__":
    main()
