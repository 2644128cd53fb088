"""Request helpers shared by the blueprints: strict JSON bodies and typed query parameters."""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

from flask import current_app, g, request
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from appliance.domain import webauthn
from appliance.domain.canonical import parse_json_strict
from appliance.errors import ClientError, InvalidInput, Problem, RequestTimeout
from appliance.services.context import Appliance
from appliance.services.registry import Services


class UnsupportedMediaType(ClientError):
    slug = "unsupported-media-type"
    title = "Unsupported media type"
    status = 415


def appliance() -> Appliance:
    return current_app.extensions["appliance"]  # type: ignore[no-any-return]


def services() -> Services:
    """The services create_app built for this process."""
    return current_app.extensions["services"]  # type: ignore[no-any-return]


def json_body() -> Any:
    """The request body as strict JSON (no duplicate keys, no floats); 415 unless it is JSON."""
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("send the body as application/json")
    return parse_json_strict(_body(), "body")


# A body must arrive within `[service] body_read_seconds`, and no read of it may wait longer than
# RECV_TIMEOUT_SECONDS: a client trickling its body holds one of the process's threads for at most that long.
RECV_TIMEOUT_SECONDS = 5.0


def _body() -> bytes:
    """The whole body, or 413 when it is larger than the limit, whether or not it declared its length; 408 when
    it arrives too slowly (within `[service] body_read_seconds` in all, no gap over RECV_TIMEOUT_SECONDS).

    Werkzeug refuses a declared Content-Length over the limit, but it reads a chunked body only up to the limit
    and returns that prefix without an error: a body that is larger must never be acted on in part. The server
    reads until it has what was asked for, however slowly it comes, so the deadline is kept by a timer that
    shuts the socket's read side: the read then ends at once."""
    limit = request.max_content_length
    sock: Any = request.environ.get("gunicorn.socket")  # None under the test client
    late = threading.Event()

    def cut() -> None:
        late.set()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RD)

    seconds = appliance().settings.body_read_seconds
    timer = threading.Timer(seconds, cut) if sock is not None else None
    if sock is not None and timer is not None:
        sock.settimeout(RECV_TIMEOUT_SECONDS)
        timer.start()
    try:
        if limit is None or request.content_length is not None or not request.environ.get("wsgi.input_terminated"):
            data = request.get_data(cache=False)
        else:
            data = request.environ["wsgi.input"].read(limit + 1)  # the server has undone the chunking
    except (TimeoutError, ClientDisconnected, OSError) as exc:
        if late.is_set() or isinstance(exc, TimeoutError):
            raise RequestTimeout(f"the body did not arrive in time ({seconds:.0f} s in all, "
                                 f"{RECV_TIMEOUT_SECONDS:.0f} s between two parts)") from exc
        raise
    finally:
        if timer is not None:
            timer.cancel()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.settimeout(None)
    if late.is_set():
        raise RequestTimeout(f"the body did not arrive within {seconds:.0f} s")
    if limit is not None and len(data) > limit:
        raise RequestEntityTooLarge(f"the body is larger than {limit} bytes")
    g.body_read = True
    return data


def json_object(*required: str) -> dict[str, Any]:
    body = json_body()
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    missing = [Problem(f"body.{name}", "required") for name in required if name not in body]
    if missing:
        raise InvalidInput("the body is missing required members", missing)
    return body


def signed_body() -> str:
    """The operator signature a write carries: `{"jws": "<compact JWS>"}` or `{"webauthn": {<assertion
    envelope>}}` (a security key's assertion, see domain/webauthn.py), returned as the token the services verify."""
    body = json_body()
    if not isinstance(body, dict) or len(body.keys() & {"jws", "webauthn"}) != 1:
        raise InvalidInput("the body must be {\"jws\": \"<compact JWS>\"} or {\"webauthn\": {<assertion>}}",
                           [Problem("body", "exactly one of jws and webauthn")])
    if "webauthn" in body:
        return webauthn.encode(webauthn.parse(body["webauthn"], "body.webauthn"))
    token = body["jws"]
    if not isinstance(token, str):
        raise InvalidInput("body.jws must be a compact JWS string")
    return token


def query_int(name: str, default: int | None = None, minimum: int = 0, maximum: int | None = None) -> int:
    raw = request.args.get(name)
    if raw is None:
        if default is None:
            raise InvalidInput(f"query parameter {name!r} is required")
        return default
    if not raw.isascii() or not raw.isdigit() or (len(raw) > 1 and raw[0] == "0") or len(raw) > 18:
        raise InvalidInput(f"query parameter {name!r} must be a non-negative integer")
    value = int(raw)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise InvalidInput(f"query parameter {name!r} must be {bound}")
    return value
