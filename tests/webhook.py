"""A webhook receiver on loopback for the notification tests (tests/flow/test_notifications.py and the
server-mode test): every JSON body POSTed to it, with when it arrived."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

WAIT_SECONDS = 60  # bounded wait for a message; the measured delay is printed (pytest -s)


@dataclass
class Receiver:
    """A webhook on loopback: every JSON body POSTed to it, with when it arrived."""

    url: str = ""
    received: list[tuple[float, dict]] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, *words: str, timeout: float = WAIT_SECONDS) -> tuple[float, dict]:
        """The first body whose text holds every word; fails after `timeout` naming what did arrive."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while True:
                for at, body in self.received:
                    if all(w in str(body.get("text", "")) for w in words):
                        return at, body
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"no message with {words} within {timeout} s; received: {self.received}")
                self.arrived.wait(left)


@contextmanager
def receiving(token: str = "hook") -> Iterator[Receiver]:
    """A receiver listening on a free loopback port at /services/<token> until the block ends."""
    found = Receiver()

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with found.arrived:
                found.received.append((time.monotonic(), body))
                found.arrived.notify_all()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    found.url = f"http://127.0.0.1:{server.server_address[1]}/services/{token}"
    try:
        yield found
    finally:
        server.shutdown()
        server.server_close()
