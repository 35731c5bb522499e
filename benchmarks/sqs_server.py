"""moto's SQS server on 127.0.0.1, counting the SQS calls it answers.

This is the application ``python -m moto.server`` runs (moto's own WSGI app
and request handler on werkzeug's threaded server), wrapped in a small
middleware that counts each call by its action (``SendMessageBatch``,
``DeleteMessage``, ...). The benchmark reads the counts at the start and end of
a measured run to report SQS calls per request, the number that explains most
of the differences between the clients.

``GET /_bench/calls`` returns the counts as JSON; everything else goes to moto
unchanged (``POST /moto-api/reset`` empties it). Run it with::

    python -m benchmarks.sqs_server --port 5000
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

#: The path of the call counts.
CALLS_PATH = "/_bench/calls"


class CallCounter:
    """WSGI middleware that counts SQS calls by action.

    Args:
        app: The application to pass calls on to.
    """

    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """Count the call's action, then pass it on (or report the counts)."""
        if environ.get("PATH_INFO") == CALLS_PATH:
            return self._report(start_response)
        action = _action(environ)
        if action:
            with self._lock:
                self.calls[action] += 1
        return self.app(environ, start_response)

    def _report(self, start_response: Callable[..., Any]) -> Iterable[bytes]:
        with self._lock:
            body = json.dumps(dict(self.calls)).encode()
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
        ]
        start_response("200 OK", headers)
        return [body]


def _action(environ: dict[str, Any]) -> str | None:
    """The SQS action of a call: JSON protocol header, or a query-protocol form."""
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        return str(target).rsplit(".", 1)[-1]
    content_type = environ.get("CONTENT_TYPE", "")
    if not content_type.startswith("application/x-www-form-urlencoded"):
        return None
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)
    actions = parse_qs(body.decode("latin-1")).get("Action")
    return actions[0] if actions else None


def main(argv: list[str] | None = None) -> None:
    """Serve moto's SQS on 127.0.0.1 with call counting until SIGTERM."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)

    os.environ.setdefault("MOTO_PORT", str(args.port))
    # One line per request on stderr would cost the server CPU in every run.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    app = DomainDispatcherApplication(create_backend_app)
    run_simple(
        "127.0.0.1",
        args.port,
        CallCounter(app),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
