"""Slow clients before the application is reached: gunicorn's threaded worker reads a request's line and headers
with a blocking parser and no deadline of its own, so a client trickling them a byte at a time would hold one of
the process's threads for as long as it likes (and 16 such clients every thread of a default server, probes
included).

`HeaderTimedWorker` hands a connection to the parser only once its whole header block is in the socket's
buffer (peeked, not read): until then the connection waits in gunicorn's poller, holding no thread, and it is
closed when the headers have not all arrived within `[service] header_read_seconds` of the first byte (gunicorn
itself closes a connection that sends nothing for its keep-alive timeout). Under TLS the bytes cannot be peeked
at: there a timer shuts the socket's read side at the deadline instead, so the parser sees the end of the stream
at once. Bodies have their own deadline (api/util._body).

Its own module, not `appliance.server`: that one runs as `__main__`, and gunicorn imports the worker class by
name, so state kept there would exist twice.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from typing import Any

from gunicorn.workers.gthread import _DEFER, ThreadWorker

from appliance.config import DEFAULT_HEADER_READ_SECONDS

log = logging.getLogger("appliance.server")

#: the deadline for a request line and its headers (`[service] header_read_seconds`, set as the worker loads)
deadline = DEFAULT_HEADER_READ_SECONDS
FIRST_BYTE_WAIT = 0.05  # seconds a thread waits for a new connection's first byte before the poller takes over
PEEK_LIMIT = 65536  # a header block longer than this goes to the parser, which enforces gunicorn's own limits
_STARTED = "appliance_headers_since"
_reading = threading.local()  # under TLS: the timer of the request this worker thread is reading


class HeaderTimedWorker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's threaded worker, with a deadline on each request's line and headers (see the module)."""

    def handle(self, conn: Any) -> Any:
        if self.cfg.is_ssl:
            return self._handle_with_timer(conn)
        if not conn.initialized and not conn.data_ready:
            if not conn.wait_for_data(FIRST_BYTE_WAIT):
                return _DEFER  # nothing yet: the poller waits for it, no thread does
        if _buffered(conn):
            return self._handle_with_timer(conn)  # a pipelined request the parser already holds
        complete = _headers_in(conn.sock)
        if complete is False:
            started = conn.__dict__.setdefault(_STARTED, time.monotonic())
            if time.monotonic() - started >= deadline:
                log.info("closing a connection from %s: its request headers did not arrive within %.0f s",
                         getattr(conn, "client", "?"), deadline)
                _abort(conn.sock)
                return False  # gunicorn forgets it
            conn.data_ready = False
            return _DEFER  # back to the poller until more of it arrives
        conn.__dict__.pop(_STARTED, None)
        return self._handle_with_timer(conn)  # complete, closed or unknown: the parser takes it from here

    def _handle_with_timer(self, conn: Any) -> Any:
        timer = threading.Timer(deadline, _cut, (conn,))
        timer.daemon = True
        _reading.timer = timer
        timer.start()
        try:
            return super().handle(conn)
        finally:
            timer.cancel()
            _reading.timer = None


def headers_read() -> None:
    """The application is reached, so the request's headers are in: their deadline no longer applies."""
    timer = getattr(_reading, "timer", None)
    if timer is not None:
        timer.cancel()
        _reading.timer = None


def _buffered(conn: Any) -> bool:
    parser = getattr(conn, "parser", None)
    unreader = getattr(parser, "unreader", None)
    buf = getattr(unreader, "buf", None)
    return bool(buf is not None and buf.getvalue())


def _headers_in(sock: socket.socket) -> bool | None:
    """True when the socket's buffer holds a whole header block (or more than PEEK_LIMIT bytes), False when it
    holds only part of one, None when it cannot tell (the peer closed, an error): the parser then decides."""
    try:
        data = sock.recv(PEEK_LIMIT, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except OSError:
        return None
    if not data:
        return None
    return b"\r\n\r\n" in data or len(data) >= PEEK_LIMIT


def _abort(sock: socket.socket) -> None:
    """Close at once, without the graceful close's lingering (gunicorn drains a closing socket for up to 2 s on
    its main thread, which a client that keeps trickling would turn into a stall of every connection)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


def _cut(conn: Any) -> None:
    log.info("closing a connection from %s: its request headers did not arrive within %.0f s",
             getattr(conn, "client", "?"), deadline)
    with contextlib.suppress(OSError):
        conn.sock.shutdown(socket.SHUT_RD)
