"""A webhook receiver on 127.0.0.1 for the tests: records POSTs, answers a script."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: The longest a test waits for deliveries.
PATIENCE_SECONDS = 20.0


@dataclass(frozen=True)
class Received:
    """One POST the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """Records every POST; answers the statuses of ``script`` in turn, then 200.

    Args:
        script: The statuses of the first answers.
        delay_seconds: How long each answer waits before it is sent.
        answer_body: The body of every answer.
        location: A ``Location`` header for every answer (for redirects).
        tls: Serve https with this context; the URL then names ``localhost``.
    """

    def __init__(
        self,
        script: Sequence[int] = (),
        delay_seconds: float = 0.0,
        answer_body: bytes = b"ok",
        location: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.script = list(script)
        self.delay_seconds = delay_seconds
        self.answer_body = answer_body
        self.location = location
        self.received: list[Received] = []
        self.answered = 0
        self._changed = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.tls = tls
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"https://localhost:{self.port}/hook"
        return f"http://127.0.0.1:{self.port}/hook"

    def wait_for(self, count: int, timeout: float = PATIENCE_SECONDS) -> list[Received]:
        """Wait until ``count`` POSTs arrived (bounded); returns what arrived."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.received) < count and time.monotonic() < deadline:
                self._changed.wait(max(0.0, deadline - time.monotonic()))
            return list(self.received)

    def _record(self, request: Received) -> int:
        with self._changed:
            self.received.append(request)
            self._changed.notify_all()
            return self.script.pop(0) if self.script else 200

    def _mark_answered(self) -> None:
        with self._changed:
            self.answered += 1
            self._changed.notify_all()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                headers = {name.lower(): value for name, value in self.headers.items()}
                status = receiver._record(Received(self.path, headers, body))
                time.sleep(receiver.delay_seconds)
                self.send_response(status)
                if receiver.location:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", str(len(receiver.answer_body)))
                self.end_headers()
                self.wfile.write(receiver.answer_body)
                receiver._mark_answered()

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler

    def start(self) -> None:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def receiver(**options: object) -> Iterator[Receiver]:
    """Run a `Receiver` on 127.0.0.1 for the block."""
    server = Receiver(**options)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()
