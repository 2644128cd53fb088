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


def test_tls_files_go_together_and_must_exist(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("x")
    (tmp_path / "key.pem").write_text("x")
    s = load(tmp_path, GOOD + '[service]\ntls_cert_file = "cert.pem"\ntls_key_file = "key.pem"\n')
    assert s.tls == config.Tls(tmp_path / "cert.pem", tmp_path / "key.pem", None)
    for extra, field in (('tls_cert_file = "cert.pem"', "service.tls_key_file"),
                         ('tls_key_file = "key.pem"', "service.tls_cert_file"),
                         ('tls_cert_file = "cert.pem"\ntls_key_file = "nope.pem"', "service.tls_key_file"),
                         ('tls_client_ca_file = "cert.pem"', "service.tls_client_ca_file"),
                         ("allow_plaintext = 1", "service.allow_plaintext")):
        with pytest.raises(ConfigError) as caught:
            load(tmp_path, GOOD + f"[service]\n{extra}\n")
        assert f"appliance.toml: {field}" in str(caught.value), (extra, caught.value.problems)


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.9.9.9", True), ("::1", True),
                                                ("localhost", True), ("0.0.0.0", False), ("::", False),
                                                ("10.0.0.5", False), ("appliance.example", False)])
def test_plain_http_is_refused_off_loopback_unless_allowed(tmp_path: Path, host: str, loopback: bool) -> None:
    plain = load(tmp_path, GOOD)
    assert (config.plaintext_refusal(plain, host) is None) == loopback
    allowed = load(tmp_path, GOOD + "[service]\nallow_plaintext = true\n")
    assert config.plaintext_refusal(allowed, host) is None
    (tmp_path / "c.pem").write_text("x")
    tls = load(tmp_path, GOOD + '[service]\ntls_cert_file = "c.pem"\ntls_key_file = "c.pem"\n')
    assert config.plaintext_refusal(tls, host) is None
