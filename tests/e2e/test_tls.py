"""`appliance serve` over TLS, with and without client certificates, and the CLI talking to it; plain HTTP is
refused on an address other machines can reach."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import os
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.e2e.test_cli import run
from tests.served import free_port, serve


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_key(key: Any, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _certificate(subject: str, key: Any, issuer: tuple[str, Any] | None, *, ca: bool = False,
                 server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = (subject, key) if issuer is None else issuer
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer_name))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                                        critical=True)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(
            "127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_ca: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA with a certificate for 127.0.0.1, and a second CA issuing an officer's client certificate."""
    d = tmp_path_factory.mktemp("pki")
    for kind in ("server", "client"):
        ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        ca = _certificate(f"test {kind} CA", ca_key, None, ca=True)
        cert = _certificate("127.0.0.1" if kind == "server" else "bob", key, (f"test {kind} CA", ca_key),
                            server=kind == "server")
        (d / f"{kind}-ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        (d / f"{kind}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, d / f"{kind}.key")
    return Pki(d / "server-ca.pem", d / "server.pem", d / "server.key", d / "client-ca.pem", d / "client.pem",
               d / "client.key")


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("tls") / "dev"
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    return json.loads(run("dev-init", str(directory), "--json", env=env).stdout)  # type: ignore[no-any-return]


def _configure(dev: dict[str, Any], settings: str) -> Path:
    """A copy of the dev config with extra [service] settings."""
    base = Path(dev["config"])
    text = base.read_text().replace("max_body_bytes = 1048576", "max_body_bytes = 1048576\n" + settings)
    path = base.with_name(f"tls-{abs(hash(settings))}.toml")
    path.write_text(text)
    return path


def _context(pki: Pki, client: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if client:
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return context


@pytest.fixture
def served(dev: dict[str, Any], pki: Pki) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(config: Path, client: bool = False) -> str:
        proc, url = serve(config, config.with_suffix(".log"), tls=_context(pki, client))
        procs.append(proc)
        return url

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(15)


def _reader(dev: dict[str, Any]) -> str:
    return next(op["key"] for op in dev["operators"] if op["name"] == "grace")


def _cli(url: str, *args: str, **tls: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SOFTHSM2_CONF", "APPLIANCE_CA_FILE", "APPLIANCE_CLIENT_CERT", "APPLIANCE_CLIENT_KEY")}
    env["APPLIANCE_URL"] = url
    env.update({f"APPLIANCE_{k.upper()}": v for k, v in tls.items()})
    return run(*args, env=env, check=False)


def test_serve_over_tls_and_the_cli_trusts_only_its_ca(dev: dict[str, Any], pki: Pki, served: Any) -> None:
    url = served(_configure(dev, f'tls_cert_file = "{pki.server_cert}"\ntls_key_file = "{pki.server_key}"'))
    shown = _cli(url, "policy", "show", "--json", ca_file=str(pki.ca), read_key=_reader(dev))
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["active"]["hash"]
    untrusted = _cli(url, "policy", "show", "--json")  # the system's trust store does not know the test CA
    assert untrusted.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
    assert "Traceback" not in untrusted.stderr
    plain = url.replace("https://", "http://")
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
        urllib.request.urlopen(plain + "/healthz", timeout=5).read()  # noqa: S310 - plain HTTP gets no answer


def test_client_certificates_are_required_when_a_client_ca_is_configured(dev: dict[str, Any], pki: Pki,
                                                                         served: Any) -> None:
    url = served(_configure(dev, f'tls_cert_file = "{pki.server_cert}"\ntls_key_file = "{pki.server_key}"\n'
                                 f'tls_client_ca_file = "{pki.client_ca}"'), client=True)
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(url + "/healthz", timeout=5, context=_context(pki)).read()  # noqa: S310
    refused = _cli(url, "policy", "show", ca_file=str(pki.ca), read_key=_reader(dev))
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    ok = _cli(url, "policy", "show", "--json", ca_file=str(pki.ca), read_key=_reader(dev),
              client_cert=str(pki.client_cert), client_key=str(pki.client_key))
    assert ok.returncode == 0, ok.stderr


def test_plain_http_on_a_reachable_address_is_refused_before_anything_starts(dev: dict[str, Any]) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    out = run("--config", dev["config"], "serve", "--listen", f"0.0.0.0:{free_port()}", env=env, check=False)
    assert out.returncode != 0 and "refusing plain HTTP on 0.0.0.0" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
