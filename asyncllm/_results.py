"""Result stores: where responses read from the response queue are kept.

SQS is not a key-value store: a response message can be read once and then it
is gone. Lookups therefore drain the response queue into a store and answer
from the store. A store knows three things per request id: its tenant, its
status and, once answered, the `AsyncResponse`.
"""

from __future__ import annotations

import abc
import enum
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ._errors import ConfigurationError
from ._models import AsyncResponse
from ._wire import decode_response, encode

__all__ = [
    "MemoryResultStore",
    "ResultStore",
    "SQLiteResultStore",
    "Status",
    "StoredResult",
    "open_result_store",
]


class Status(str, enum.Enum):
    """Where a request stands, as far as the result store knows."""

    #: Submitted through asyncllm; no answer has been read yet.
    QUEUED = "queued"
    #: Answered with a completion.
    COMPLETED = "completed"
    #: Answered with an error.
    FAILED = "failed"
    #: Neither submitted here nor answered: unknown id, or another tenant's.
    NOT_FOUND = "not_found"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class StoredResult:
    """What a store holds for one request id."""

    request_id: str
    tenant_id: str
    status: Status
    response: AsyncResponse | None = None


def _status_of(response: AsyncResponse) -> Status:
    return Status.COMPLETED if response.ok else Status.FAILED


class ResultStore(abc.ABC):
    """Keeps responses by request id; the first final answer for an id wins."""

    @abc.abstractmethod
    def mark_queued(self, request_id: str, tenant_id: str) -> None:
        """Record that a request was submitted; an existing record is kept."""

    @abc.abstractmethod
    def put(self, response: AsyncResponse) -> bool:
        """Store a response.

        Returns:
            True if it became the request's answer, False if the request was
            already answered (the later response is then ignored).
        """

    @abc.abstractmethod
    def get(self, request_id: str, tenant_id: str | None = None) -> StoredResult | None:
        """Return the record of a request, or None if unknown.

        Args:
            request_id: The request id.
            tenant_id: When given, a record of another tenant reads as unknown.
        """

    def close(self) -> None:  # noqa: B027 - optional for subclasses
        """Release the store's resources."""


class MemoryResultStore(ResultStore):
    """A store that lives as long as the process: for tests and one-off scripts."""

    def __init__(self) -> None:
        self._records: dict[str, StoredResult] = {}
        self._lock = threading.Lock()

    def mark_queued(self, request_id: str, tenant_id: str) -> None:
        """Record that a request was submitted; an existing record is kept."""
        with self._lock:
            self._records.setdefault(
                request_id, StoredResult(request_id, tenant_id, Status.QUEUED)
            )

    def put(self, response: AsyncResponse) -> bool:
        """Store a response unless the request already has an answer."""
        record = StoredResult(
            response.request_id, response.tenant_id, _status_of(response), response
        )
        with self._lock:
            current = self._records.get(response.request_id)
            if current is not None and current.response is not None:
                return False
            self._records[response.request_id] = record
        return True

    def get(self, request_id: str, tenant_id: str | None = None) -> StoredResult | None:
        """Return the record of a request, scoped to ``tenant_id`` when given."""
        with self._lock:
            record = self._records.get(request_id)
        if record is None or (tenant_id is not None and record.tenant_id != tenant_id):
            return None
        return record


_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    request_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    status TEXT NOT NULL,
    body TEXT,
    updated_at REAL NOT NULL
)
"""

_PUT = """
INSERT INTO results (request_id, tenant_id, status, body, updated_at)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (request_id) DO UPDATE SET
    tenant_id = excluded.tenant_id, status = excluded.status,
    body = excluded.body, updated_at = excluded.updated_at
WHERE results.body IS NULL
"""


class SQLiteResultStore(ResultStore):
    """A store in one SQLite file, shared safely by processes on one machine (WAL).

    Args:
        path: The database file; its folder is created if missing.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connect() as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            connection.execute("PRAGMA busy_timeout=30000")
            self._local.connection = connection
        return connection

    def mark_queued(self, request_id: str, tenant_id: str) -> None:
        """Record that a request was submitted; an existing record is kept."""
        self._connect().execute(
            "INSERT OR IGNORE INTO results VALUES (?, ?, ?, NULL, ?)",
            (request_id, tenant_id, Status.QUEUED.value, time.time()),
        )

    def put(self, response: AsyncResponse) -> bool:
        """Store a response unless the request already has an answer."""
        cursor = self._connect().execute(
            _PUT,
            (
                response.request_id,
                response.tenant_id,
                _status_of(response).value,
                encode(response),
                time.time(),
            ),
        )
        return cursor.rowcount > 0

    def get(self, request_id: str, tenant_id: str | None = None) -> StoredResult | None:
        """Return the record of a request, scoped to ``tenant_id`` when given."""
        row = (
            self._connect()
            .execute(
                "SELECT tenant_id, status, body FROM results WHERE request_id = ?",
                (request_id,),
            )
            .fetchone()
        )
        if row is None or (tenant_id is not None and row[0] != tenant_id):
            return None
        response = decode_response(row[2]) if row[2] is not None else None
        return StoredResult(request_id, row[0], Status(row[1]), response)

    def close(self) -> None:
        """Close this thread's connection."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


def open_result_store(url: str) -> ResultStore:
    """Open the store a URL names: ``sqlite:///PATH`` or ``memory://``.

    ``sqlite:///results.db`` is relative to the working directory and
    ``sqlite:////var/lib/asyncllm/results.db`` is absolute.

    Raises:
        ConfigurationError: The URL names no supported store.
    """
    parts = urlsplit(url)
    if parts.scheme == "memory":
        return MemoryResultStore()
    # As in SQLAlchemy: sqlite:///relative.db and sqlite:////absolute/path.db.
    path = parts.path[1:]
    if parts.scheme == "sqlite" and path:
        return SQLiteResultStore(path)
    message = f"result store {url!r} is not supported; use sqlite:///PATH or memory://"
    raise ConfigurationError(message)
