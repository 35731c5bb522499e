"""Result stores: where responses read from the response queue are kept.

SQS is not a key-value store: a response message can be read once and then it
is gone. Lookups therefore drain the response queue into a store and answer
from the store. A store keeps, per request id, its tenant, its status and,
once answered, the `AsyncResponse`, for ``ttl_seconds`` after the last change;
after that the id reads as `Status.EXPIRED`.

Which store to pick:

- ``memory://``: tests and one-process scripts; gone with the process.
- ``sqlite:///PATH``: the default; one file shared safely by the processes of
  one machine (WAL mode). Nothing to install or run.
- ``dynamodb://TABLE``: fleets of submitters, workers and gateways on many
  machines; create the table with ``asyncllm results create``.
"""

from __future__ import annotations

import abc
import enum
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ._errors import ConfigurationError
from ._models import AsyncResponse
from ._wire import decode_response, encode

if TYPE_CHECKING:
    from ._config import Settings

__all__ = [
    "DEFAULT_TTL_SECONDS",
    "MemoryResultStore",
    "ResultStore",
    "SQLiteResultStore",
    "Status",
    "StoredResult",
    "open_result_store",
]

#: How long a result is kept after its last change: 7 days.
DEFAULT_TTL_SECONDS = 7 * 24 * 3600


class Status(str, enum.Enum):
    """Where a request stands, as far as the result store knows."""

    #: Submitted through asyncllm; no answer has been read yet.
    QUEUED = "queued"
    #: Answered with a completion.
    COMPLETED = "completed"
    #: Answered with an error.
    FAILED = "failed"
    #: Known once, but kept for longer than the store's TTL.
    EXPIRED = "expired"
    #: Never submitted through this store and not answered: an unknown id, or
    #: another tenant's.
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


@dataclass(frozen=True)
class _Row:
    """One stored record, as every backend keeps it."""

    request_id: str
    tenant_id: str
    status: Status
    body: str | None
    expires_at: float


def _replaces(current: _Row, new: _Row) -> bool:
    """The first answer wins, but a success replaces a failure (after a redrive).

    Only an answer of the record's own tenant counts: a response carrying
    another tenant's id never takes over a request.
    """
    if current.tenant_id != new.tenant_id:
        return False
    return current.status is Status.QUEUED or (
        current.status is Status.FAILED and new.status is Status.COMPLETED
    )


def _status_of(response: AsyncResponse) -> Status:
    return Status.COMPLETED if response.ok else Status.FAILED


class ResultStore(abc.ABC):
    """Keeps responses by request id.

    The first answer for an id wins, with one exception: a success replaces a
    failure, so a request redriven from the dead-letter queue and answered
    again reads as completed.

    Args:
        ttl_seconds: How long a record is kept after its last change.
            Defaults to 7 days.
    """

    def __init__(self, ttl_seconds: float = DEFAULT_TTL_SECONDS) -> None:
        self.ttl_seconds = ttl_seconds

    def mark_queued(self, request_id: str, tenant_id: str) -> None:
        """Record that a request was submitted; an existing record is kept."""
        row = _Row(request_id, tenant_id, Status.QUEUED, None, self._expiry())
        self._insert_queued(row)

    def put(self, response: AsyncResponse) -> bool:
        """Store a response.

        Returns:
            True if it became the request's answer, False if the request was
            already answered (the later response is then ignored).
        """
        row = _Row(
            response.request_id,
            response.tenant_id,
            _status_of(response),
            encode(response),
            self._expiry(),
        )
        return self._put_answer(row)

    def get(self, request_id: str, tenant_id: str | None = None) -> StoredResult | None:
        """Return the record of a request, or None if unknown.

        Args:
            request_id: The request id.
            tenant_id: When given, a record of another tenant reads as unknown.
        """
        row = self._load(request_id)
        if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
            return None
        if row.expires_at <= time.time():
            return StoredResult(request_id, row.tenant_id, Status.EXPIRED)
        response = decode_response(row.body) if row.body is not None else None
        return StoredResult(request_id, row.tenant_id, row.status, response)

    def status(self, request_id: str, tenant_id: str | None = None) -> Status:
        """Return the status of a request, `Status.NOT_FOUND` when unknown."""
        record = self.get(request_id, tenant_id)
        return record.status if record is not None else Status.NOT_FOUND

    def stats(self) -> dict[Status, int]:
        """Count the records per status, expired ones as `Status.EXPIRED`."""
        counts = dict.fromkeys(
            (Status.QUEUED, Status.COMPLETED, Status.FAILED, Status.EXPIRED), 0
        )
        now = time.time()
        for status, expires_at in self._statuses():
            key = Status.EXPIRED if expires_at <= now else status
            counts[key] += 1
        return counts

    def expire(self) -> int:
        """Drop the responses of expired records, keeping their ids as expired.

        Returns:
            How many records were expired by this call.
        """
        return self._expire(time.time())

    def _expiry(self) -> float:
        return time.time() + self.ttl_seconds

    @abc.abstractmethod
    def _insert_queued(self, row: _Row) -> None:
        """Insert a queued record unless the id exists."""

    @abc.abstractmethod
    def _put_answer(self, row: _Row) -> bool:
        """Store an answer unless the id already has one; True if stored."""

    @abc.abstractmethod
    def _load(self, request_id: str) -> _Row | None:
        """Return the record of an id."""

    @abc.abstractmethod
    def _statuses(self) -> list[tuple[Status, float]]:
        """Return (status, expires_at) of every record."""

    @abc.abstractmethod
    def _expire(self, now: float) -> int:
        """Mark records past ``now`` as expired and drop their bodies."""

    def close(self) -> None:  # noqa: B027 - optional for subclasses
        """Release the store's resources."""


class MemoryResultStore(ResultStore):
    """A store that lives as long as the process: for tests and one-off scripts."""

    def __init__(self, ttl_seconds: float = DEFAULT_TTL_SECONDS) -> None:
        super().__init__(ttl_seconds)
        self._rows: dict[str, _Row] = {}
        self._lock = threading.Lock()

    def _insert_queued(self, row: _Row) -> None:
        with self._lock:
            self._rows.setdefault(row.request_id, row)

    def _put_answer(self, row: _Row) -> bool:
        with self._lock:
            current = self._rows.get(row.request_id)
            if current is not None and not _replaces(current, row):
                return False
            self._rows[row.request_id] = row
        return True

    def _load(self, request_id: str) -> _Row | None:
        with self._lock:
            return self._rows.get(request_id)

    def _statuses(self) -> list[tuple[Status, float]]:
        with self._lock:
            return [(row.status, row.expires_at) for row in self._rows.values()]

    def _expire(self, now: float) -> int:
        with self._lock:
            expired = [
                row
                for row in self._rows.values()
                if row.expires_at <= now and row.status is not Status.EXPIRED
            ]
            for row in expired:
                self._rows[row.request_id] = _Row(
                    row.request_id, row.tenant_id, Status.EXPIRED, None, row.expires_at
                )
        return len(expired)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    request_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    status TEXT NOT NULL,
    body TEXT,
    expires_at REAL NOT NULL
)
"""

# The first answer wins, except that a success replaces a failure (a request
# redriven from the dead-letter queue and answered again); only an answer of
# the record's own tenant counts.
_PUT = """
INSERT INTO results (request_id, tenant_id, status, body, expires_at)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (request_id) DO UPDATE SET
    status = excluded.status, body = excluded.body,
    expires_at = excluded.expires_at
WHERE results.tenant_id = excluded.tenant_id
  AND (results.status = 'queued'
       OR (results.status = 'failed' AND excluded.status = 'completed'))
"""


class SQLiteResultStore(ResultStore):
    """A store in one SQLite file, shared safely by processes on one machine (WAL).

    Args:
        path: The database file; its folder is created if missing.
        ttl_seconds: How long a record is kept. Defaults to 7 days.
    """

    def __init__(
        self, path: str | Path, ttl_seconds: float = DEFAULT_TTL_SECONDS
    ) -> None:
        super().__init__(ttl_seconds)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        connection = self._connect()
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "db", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            connection.execute("PRAGMA busy_timeout=30000")
            self._local.db = connection
        return connection

    def _insert_queued(self, row: _Row) -> None:
        self._connect().execute(
            "INSERT OR IGNORE INTO results VALUES (?, ?, ?, NULL, ?)",
            (row.request_id, row.tenant_id, row.status.value, row.expires_at),
        )

    def _put_answer(self, row: _Row) -> bool:
        values = (
            row.request_id,
            row.tenant_id,
            row.status.value,
            row.body,
            row.expires_at,
        )
        return self._connect().execute(_PUT, values).rowcount > 0

    def _load(self, request_id: str) -> _Row | None:
        found = (
            self._connect()
            .execute(
                "SELECT tenant_id, status, body, expires_at FROM results "
                "WHERE request_id = ?",
                (request_id,),
            )
            .fetchone()
        )
        if found is None:
            return None
        return _Row(request_id, found[0], Status(found[1]), found[2], found[3])

    def _statuses(self) -> list[tuple[Status, float]]:
        rows = self._connect().execute("SELECT status, expires_at FROM results")
        return [(Status(status), expires_at) for status, expires_at in rows]

    def _expire(self, now: float) -> int:
        cursor = self._connect().execute(
            "UPDATE results SET status = 'expired', body = NULL "
            "WHERE expires_at <= ? AND status != 'expired'",
            (now,),
        )
        return cursor.rowcount

    def close(self) -> None:
        """Close this thread's connection."""
        connection = getattr(self._local, "db", None)
        if connection is not None:
            connection.close()
            self._local.db = None


def open_result_store(
    url: str,
    ttl_seconds: float = DEFAULT_TTL_SECONDS,
    settings: Settings | None = None,
) -> ResultStore:
    """Open the store a URL names.

    ``sqlite:///results.db`` is relative to the working directory and
    ``sqlite:////var/lib/asyncllm/results.db`` is absolute (as in SQLAlchemy).

    Args:
        url: ``memory://``, ``sqlite:///PATH`` or ``dynamodb://TABLE``.
        ttl_seconds: How long records are kept. Defaults to 7 days.
        settings: Region, endpoint and credentials, for DynamoDB.

    Raises:
        ConfigurationError: The URL names no supported store.
    """
    parts = urlsplit(url)
    if parts.scheme == "memory":
        return MemoryResultStore(ttl_seconds)
    if parts.scheme == "sqlite" and parts.path[1:]:
        return SQLiteResultStore(parts.path[1:], ttl_seconds)
    if parts.scheme == "dynamodb" and parts.netloc:
        from ._config import Settings
        from ._dynamodb import DynamoDBResultStore

        return DynamoDBResultStore(parts.netloc, settings or Settings(), ttl_seconds)
    message = (
        f"result store {url!r} is not supported; use sqlite:///PATH, "
        "dynamodb://TABLE or memory://"
    )
    raise ConfigurationError(message)
