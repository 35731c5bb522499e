"""A local SQS-compatible endpoint on 127.0.0.1, for development and the demo.

It is moto's server, run in a thread of the current process; install it with
``pip install 'asyncllm[local]'``. It binds the loopback address only.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._errors import ConfigurationError

if TYPE_CHECKING:
    from werkzeug.serving import BaseWSGIServer

__all__ = ["LocalSQS", "PortInUse"]

logger = logging.getLogger(__name__)


class PortInUse(ConfigurationError):
    """The local endpoint's port is taken by another program.

    Attributes:
        host: The address that was asked for.
        port: The port that was asked for.
    """

    def __init__(self, host: str, port: int) -> None:
        super().__init__(f"port {port} on {host} is already in use")
        self.host = host
        self.port = port


class LocalSQS:
    """An SQS endpoint for this machine only.

    Args:
        port: The TCP port on 127.0.0.1; 0 picks a free one. Defaults to 0.

    Example:
        >>> with LocalSQS() as sqs:  # doctest: +SKIP
        ...     app = AsyncLLM(endpoint_url=sqs.endpoint_url)
    """

    host = "127.0.0.1"

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint_url(self) -> str:
        """The endpoint's URL, for ``ASYNCLLM_SQS_ENDPOINT_URL``."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> LocalSQS:
        """Start serving; returns self.

        Raises:
            PortInUse: Another program listens on the port.
            ConfigurationError: moto's server is not installed.
        """
        app, handler = _moto_application()
        # Requests reach moto with placeholder credentials; it checks none.
        os.environ.setdefault("MOTO_ALLOW_NONEXISTENT_REGION", "true")
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        server = _bind(self.host, self.port, app, handler)
        thread = threading.Thread(
            target=server.serve_forever, name="local-sqs", daemon=True
        )
        thread.start()
        self.port = server.server_address[1]
        self._server, self._thread = server, thread
        logger.info("local SQS endpoint listening on %s", self.endpoint_url)
        return self

    def stop(self) -> None:
        """Stop serving; every queue and message is gone with it."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> LocalSQS:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _moto_application() -> tuple[Any, Any]:
    """Return moto's WSGI app for every AWS service and its request handler."""
    try:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
    except ImportError:
        message = (
            "the local SQS endpoint needs moto's server; install it with "
            "pip install 'asyncllm[local]'"
        )
        raise ConfigurationError(message) from None
    return DomainDispatcherApplication(create_backend_app), MotoRequestHandler


def _bind(host: str, port: int, app: Any, handler: Any) -> BaseWSGIServer:
    """Bind the server in this thread, so a taken port fails here and at once."""
    from werkzeug.serving import make_server

    _check_port_free(host, port)
    try:
        return make_server(host, port, app, threaded=True, request_handler=handler)
    except SystemExit:  # werkzeug exits when it cannot bind (taken since the check)
        raise PortInUse(host, port) from None


def _check_port_free(host: str, port: int) -> None:
    """Raise `PortInUse` when a server could not bind ``host:port``.

    Raises:
        PortInUse: Another program listens on the port.
        ConfigurationError: The address cannot be bound for another reason.
    """
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the server does, so a port left in TIME_WAIT counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(host, port) from None
            message = f"cannot listen on {host}:{port}: {exc.strerror}"
            raise ConfigurationError(message) from None
