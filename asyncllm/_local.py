"""A local SQS-compatible endpoint on 127.0.0.1, for development and the demo.

It is moto's server, run in a thread of the current process; install it with
``pip install 'asyncllm[local]'``. It binds the loopback address only.
"""

from __future__ import annotations

import logging
import os
from types import TracebackType

from ._errors import ConfigurationError

__all__ = ["LocalSQS"]

logger = logging.getLogger(__name__)


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
        self._server: object | None = None

    @property
    def endpoint_url(self) -> str:
        """The endpoint's URL, for ``ASYNCLLM_SQS_ENDPOINT_URL``."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> LocalSQS:
        """Start serving; returns self."""
        try:
            from moto.server import ThreadedMotoServer
        except ImportError:
            message = (
                "the local SQS endpoint needs moto's server; install it with "
                "pip install 'asyncllm[local]'"
            )
            raise ConfigurationError(message) from None
        # Requests reach moto with placeholder credentials; it checks none.
        os.environ.setdefault("MOTO_ALLOW_NONEXISTENT_REGION", "true")
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        server.start()
        self.port = server.get_host_and_port()[1]
        self._server = server
        logger.info("local SQS endpoint listening on %s", self.endpoint_url)
        return self

    def stop(self) -> None:
        """Stop serving; every queue and message is gone with it."""
        if self._server is not None:
            self._server.stop()  # type: ignore[attr-defined]
            self._server = None

    def __enter__(self) -> LocalSQS:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
