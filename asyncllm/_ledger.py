"""The ledger of answered request ids, which keeps a handler from running twice.

SQS delivers at least once: a duplicate submission, or a redelivery after a
worker died between publishing a response and deleting the request, brings an
answered request back. The worker records each id it answered and deletes a
request whose id is already recorded, without calling the handler. The ledger
holds ids and times only, never message content.
"""

from __future__ import annotations

import abc
import sqlite3
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from ._errors import ConfigurationError

__all__ = ["Ledger", "MemoryLedger", "NullLedger", "SQLiteLedger", "open_ledger"]

#: How long an answered id is remembered: SQS keeps a message 14 days at most.
DEFAULT_RETENTION_SECONDS = 14 * 24 * 3600


class Ledger(abc.ABC):
    """Remembers which request ids were answered."""

    @abc.abstractmethod
    def answered(self, request_id: str) -> bool:
        """True if the request was already answered."""

    @abc.abstractmethod
    def record(self, request_id: str) -> None:
        """Remember that the request was answered."""

    def close(self) -> None:  # noqa: B027 - optional for subclasses
        """Release resources."""


class NullLedger(Ledger):
    """Remembers nothing: every delivery runs the handler."""

    def answered(self, request_id: str) -> bool:
        """Always False."""
        return False

    def record(self, request_id: str) -> None:
        """Do nothing."""


class MemoryLedger(Ledger):
    """Remembers answered ids for the life of the process, up to ``max_ids``."""

    def __init__(self, max_ids: int = 100_000) -> None:
        self._ids: dict[str, None] = {}
        self._max_ids = max_ids
        self._lock = threading.Lock()

    def answered(self, request_id: str) -> bool:
        """True if the id was recorded and not yet forgotten."""
        with self._lock:
            return request_id in self._ids

    def record(self, request_id: str) -> None:
        """Remember the id, forgetting the oldest beyond ``max_ids``."""
        with self._lock:
            self._ids[request_id] = None
            while len(self._ids) > self._max_ids:
                del self._ids[next(iter(self._ids))]


class SQLiteLedger(Ledger):
    """Answered ids in a SQLite file, shared by the workers of one machine.

    Args:
        path: The database file; its folder is created if missing.
        retention_seconds: Forget ids older than this. Defaults to 14 days.
    """

    def __init__(
        self, path: str | Path, retention_seconds: float = DEFAULT_RETENTION_SECONDS
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.retention_seconds = retention_seconds
        self._local = threading.local()
        connection = self._connect()
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(
            "CREATE TABLE IF NOT EXISTS answered "
            "(request_id TEXT PRIMARY KEY, answered_at REAL NOT NULL)"
        )
        self._forget_old()

    def _connect(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "db", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._local.db = connection
        return connection

    def _forget_old(self) -> None:
        cutoff = time.time() - self.retention_seconds
        self._connect().execute("DELETE FROM answered WHERE answered_at < ?", (cutoff,))

    def answered(self, request_id: str) -> bool:
        """True if the id was recorded within the retention period."""
        row = (
            self._connect()
            .execute("SELECT 1 FROM answered WHERE request_id = ?", (request_id,))
            .fetchone()
        )
        return row is not None

    def record(self, request_id: str) -> None:
        """Remember the id."""
        self._connect().execute(
            "INSERT OR REPLACE INTO answered VALUES (?, ?)", (request_id, time.time())
        )

    def close(self) -> None:
        """Close this thread's connection."""
        connection = getattr(self._local, "db", None)
        if connection is not None:
            connection.close()
            self._local.db = None


def open_ledger(url: str) -> Ledger:
    """Open the ledger a URL names: ``sqlite:///PATH``, ``memory://`` or ``none://``.

    Raises:
        ConfigurationError: The URL names no supported ledger.
    """
    parts = urlsplit(url)
    if parts.scheme == "memory":
        return MemoryLedger()
    if parts.scheme == "none":
        return NullLedger()
    if parts.scheme == "sqlite" and parts.path[1:]:
        return SQLiteLedger(parts.path[1:])
    message = (
        f"ledger {url!r} is not supported; use sqlite:///PATH, memory:// or none://"
    )
    raise ConfigurationError(message)
