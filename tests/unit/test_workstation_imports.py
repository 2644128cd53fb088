"""An officer's workstation runs the CLI's client commands: they need neither the service, its store nor an HSM
library (issue 11: the JWS helpers and TYP_* constants live in the domain)."""

from __future__ import annotations

import json
import subprocess
import sys

CLIENT_COMMANDS = ["appliance.cli", "appliance.commands.mint", "appliance.commands.policy",
                   "appliance.commands.attest", "appliance.commands.audit", "appliance.commands.verify",
                   "appliance.operator", "appliance.client"]
FORBIDDEN = ("sqlalchemy", "pkcs11", "flask", "alembic", "prometheus_client", "appliance.services",
             "appliance.store", "appliance.hsm", "appliance.api", "appliance.signing")


def imported(modules: list[str], prefixes: tuple[str, ...]) -> list[str]:
    """The modules starting with one of `prefixes` that a fresh interpreter holds after importing `modules`."""
    code = ("import importlib, json, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({prefixes!r}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    found: list[str] = json.loads(out.stdout)
    return found


def test_the_client_commands_import_no_service_store_or_hsm_code() -> None:
    assert imported(CLIENT_COMMANDS, FORBIDDEN) == []


# What `appliance mint show --help` and `appliance verify attestation --help` load: the command modules only,
# never keccak, the JOSE/crypto stack, the policy parser or the HTTP client (imported by the commands that run).
HELP_MODULES = ["appliance.cli", "appliance.commands.mint", "appliance.commands.verify"]
HEAVY = ("Crypto", "cryptography", "appliance.domain.eip712", "appliance.domain.policy", "appliance.operator",
         "appliance.client", "appliance.verify", "http.client")


def test_help_of_the_client_commands_imports_no_crypto_policy_or_http() -> None:
    assert imported(HELP_MODULES, HEAVY) == []


def test_the_top_level_help_imports_no_command_group() -> None:
    """`appliance --help` lists each group's short help from the CLI's table, not by importing the group."""
    code = ("import json, sys\nfrom appliance.cli import cli\n"
            "cli.main(['--help'], prog_name='appliance', standalone_mode=False)\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({(*HEAVY, 'appliance.commands.')!r}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert "Mint authorizations under quorum." in out.stdout
    assert json.loads(out.stdout.splitlines()[-1]) == []


def test_the_short_help_the_top_level_shows_is_each_groups_own() -> None:
    from appliance import cli

    for name, (_module, _attr, short) in cli._LAZY.items():
        group = cli.lazy_command(name)
        assert group.name == name and (group.help or "").split("\n\n")[0].strip() == short, name
