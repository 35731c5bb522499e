"""The gateway's collector: a thread that drains the response queue into the store."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from .._collector import Collector

if TYPE_CHECKING:
    from .._app import AsyncLLM

__all__ = ["CollectorThread"]

logger = logging.getLogger(__name__)

#: How long to wait before restarting a collector that stopped on an error.
_RESTART_SECONDS = 1.0


class CollectorThread:
    """Runs a `Collector` in a daemon thread until `stop`.

    The gateway answers lookups from the result store; this thread keeps the
    store fed. A collector that stops on an unexpected error is restarted
    after a second, until the thread is stopped.

    Args:
        app: The app whose response queue and result store to use.
    """

    def __init__(self, app: AsyncLLM) -> None:
        self.app = app
        self._stopped = threading.Event()
        self._collector: Collector | None = None
        self._thread = threading.Thread(
            target=self._run, name="asyncllm-gateway-collector", daemon=True
        )

    @property
    def alive(self) -> bool:
        """True while the thread runs."""
        return self._thread.is_alive()

    def start(self) -> None:
        """Start collecting."""
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Stop after the current receive; returns True if the thread ended in time."""
        self._stopped.set()
        collector = self._collector
        if collector is not None:
            collector.stop()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._collector = Collector(self.app)
            if self._stopped.is_set():
                break
            try:
                self._collector.run(install_signal_handlers=False)
            except Exception:
                logger.exception("gateway collector failed; restarting")
                self._stopped.wait(_RESTART_SECONDS)
