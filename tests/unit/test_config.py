"""Configuration errors name the file and the field, all at once, and never show a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance import config
from appliance.errors import ConfigError

GOOD = """
[hsm]
token_label = "t"
pin_env = "PIN"
[issuer]
name = "Issuer"
token_symbol = "HKDS"
token_name = "HKD Stablecoin"
[eip712]
name = "HKD Stablecoin"
[[chains]]
chain_id = 1
verifying_contract = "0xCcCCccccCCCCcCCCCCCcCcCccCcCCCcCcccccccC"
[audit]
origin = "example/audit"
"""


def load(tmp_path: Path, text: str) -> config.Settings:
    path = tmp_path / "appliance.toml"
    path.write_text(text)
    return config.load(path)


def test_a_minimal_config_loads_with_defaults(tmp_path: Path) -> None:
    s = load(tmp_path, GOOD)
    assert s.listen_host == "127.0.0.1" and s.listen_port == 8080
    assert s.storage_url == f"sqlite:///{tmp_path / 'appliance.db'}"
    assert s.hsm.mint_key != s.hsm.attestation_key
    assert s.chain(1) is not None and s.chain(2) is None


def test_every_problem_is_named_with_file_and_field(tmp_path: Path) -> None:
    bad = GOOD.replace('token_label = "t"', 'token_label = ""\ntypo = 1').replace("chain_id = 1", 'chain_id = "1"')
    bad += '\n[service]\nlisten = "nowhere"\nworkers = 0\n[storage]\nurl = "mysql://x"\n'
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, bad)
    text = str(caught.value)
    for field in ("appliance.toml: hsm.typo", "appliance.toml: hsm.token_label", "appliance.toml: chains[0].chain_id",
                  "appliance.toml: service.listen", "appliance.toml: service.workers", "appliance.toml: storage.url"):
        assert field in text, field
    assert len(caught.value.problems) >= 6


def test_pin_source_must_be_exactly_one_and_never_inline(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one of pin_env or pin_file"):
        load(tmp_path, GOOD.replace('pin_env = "PIN"', ""))
    with pytest.raises(ConfigError, match="hsm.pin"):
        load(tmp_path, GOOD.replace('pin_env = "PIN"', 'pin_env = "PIN"\npin = "1234"'))


def test_missing_pin_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIN", raising=False)
    with pytest.raises(ConfigError, match="PIN environment variable PIN is not set"):
        load(tmp_path, GOOD).hsm.pin()


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(tmp_path, "[hsm\n")


def test_one_label_per_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="one key, one purpose"):
        load(tmp_path, GOOD + '\n[keys]\nmint = "k"\nattestation = "k"\n')


def test_the_shipped_example_config_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    example = Path(__file__).resolve().parents[2] / "firmware-config" / "appliance.toml"
    settings = config.load(example)
    assert settings.hsm.pin_env == "APPLIANCE_HSM_PIN"
    assert settings.storage_url.startswith("postgresql://")


@pytest.mark.parametrize("origin", ["example audit", "example/audit\\t", "a+b", "", "tab\\u0007"])
def test_an_audit_origin_that_cannot_name_a_note_key_is_refused_at_load(tmp_path: Path, origin: str) -> None:
    with pytest.raises(ConfigError, match="audit.origin"):
        load(tmp_path, GOOD.replace('origin = "example/audit"', f'origin = "{origin}"'))
