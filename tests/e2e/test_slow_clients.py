"""Clients that send slowly, against `appliance serve`: a body trickled in is cut at `[service] body_read_seconds`
(408, connection closed), headers trickled in are cut at `header_read_seconds` (connection closed), and a write
refused before its body was read closes its connection, so the rest of that body is never parsed as a next
request that would hold a thread for as long as it trickles."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.served import APPLIANCE, serve


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("slow") / "dev"
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    made = subprocess.run([*APPLIANCE, "dev-init", str(directory), "--json"], capture_output=True, text=True,
                          env=env, timeout=120, check=True)
    config = Path(json.loads(made.stdout)["config"])
    config.write_text(config.read_text().replace(
        "max_body_bytes = 1048576", "max_body_bytes = 1048576\nbody_read_seconds = 2\nheader_read_seconds = 2"))
    proc, served = serve(config, directory / "serve.log", env)
    yield served
    proc.terminate()
    proc.wait(15)


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=15)


def _response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(4096)
        if not piece:
            break
        data += piece
    return data


def test_a_trickled_body_is_cut_with_408(url: str) -> None:
    sock = _connect(url)
    sock.sendall(b"POST /v1/mint-requests HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n{")
    started = time.monotonic()
    sock.settimeout(0.4)
    answer = b""
    while time.monotonic() - started < 12 and b"\r\n\r\n" not in answer:
        try:
            sock.sendall(b" ")  # one byte at a time, never the whole body
            answer += sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            break
    took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"request-timeout" in answer or b"Connection: close" in answer
    assert 1.5 <= took < 8, took
    sock.close()


def test_a_write_refused_before_its_body_is_read_closes_the_connection(url: str) -> Any:
    sock = _connect(url)
    sock.sendall(b"POST /v1/mint-requests HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nabc")
    answer = _response(sock)
    assert answer.startswith(b"HTTP/1.1 415"), answer[:200]
    assert b"Connection: close" in answer
    sock.close()


def test_trickled_headers_are_cut_and_probes_are_answered_meanwhile(url: str) -> None:
    """40 connections (more than the server's 16 threads) send a request line and then one header byte every
    0.3 s: each is closed at header_read_seconds (2 s here), and /healthz is answered while they trickle."""
    tricklers = []
    for _ in range(40):
        sock = _connect(url)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        sock.settimeout(0.05)
        tricklers.append(sock)
    started = time.monotonic()
    closed_at: dict[int, float] = {}
    probes: list[float] = []
    next_probe = started + 0.5
    while len(closed_at) < len(tricklers) and time.monotonic() - started < 15:
        for i, sock in enumerate(tricklers):
            if i in closed_at:
                continue
            try:
                sock.sendall(b"a")
                if sock.recv(1) == b"":
                    closed_at[i] = time.monotonic() - started
            except TimeoutError:
                pass
            except OSError:
                closed_at[i] = time.monotonic() - started
        if time.monotonic() >= next_probe:
            probe_started = time.monotonic()
            probe = _connect(url)
            probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert _response(probe).startswith(b"HTTP/1.1 200"), "a probe was not answered"
            probe.close()
            probes.append(time.monotonic() - probe_started)
            next_probe = time.monotonic() + 0.5
        time.sleep(0.3)
    for sock in tricklers:
        sock.close()
    assert len(closed_at) == len(tricklers), f"{len(tricklers) - len(closed_at)} trickling connections still open"
    assert max(closed_at.values()) < 5, sorted(closed_at.values())
    assert probes and max(probes) < 2, probes  # the trickling connections hold no thread
