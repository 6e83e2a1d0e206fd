"""ClickHouse for this process: one DSN, embedded chDB or a server, and the clients on it.

The same code serves both: `clickhouse-connect` takes `chdb:///path` or `http(s)://…`.
Three kinds of client are handed out, each its own session (a chDB client is its own
engine handle, so session settings never leak between them):

- the **writer**, for migrations, the sink and `seed`: full rights;
- **readers**, a small pool for the reporting API: `readonly=1` and a time limit;
- the **SQL** client for `POST /v1/admin/sql`: `readonly=1` plus the execution-time and
  result-row limits. `readonly` is set last, so the caller's SQL cannot change any of them.

Every call runs in a thread (`asyncio.to_thread`): the chDB client is synchronous.
ClickHouse errors leave here as `analytics.exceptions` errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.common import StreamContext
from clickhouse_connect.driver.exceptions import ClickHouseError, DatabaseError, ProgrammingError

from analytics.exceptions import (
    AnalyticsError,
    EngineLocked,
    WarehouseFailure,
    WarehouseUnavailable,
)
from analytics.settings import Settings

log = logging.getLogger("sluice.analytics")

T = TypeVar("T")
Row = tuple[Any, ...]

UNKNOWN_DATABASE = 81


def translate(exc: BaseException) -> AnalyticsError:
    """The analytics error for a ClickHouse client failure."""
    if isinstance(exc, AnalyticsError):
        return exc
    message = str(exc).strip()
    if isinstance(exc, ProgrammingError) and "Unable to open the chdb engine" in message:
        return EngineLocked(
            "The chDB data path is open in another process (chDB opens a path in one process "
            "only): stop the other `sluice analytics` first. " + message)
    code = getattr(exc, "code", None)
    if isinstance(exc, DatabaseError) and code is None and _looks_like_transport(message):
        return WarehouseUnavailable(f"ClickHouse is unreachable: {_first_line(message)}")
    return WarehouseFailure(_first_line(message) or type(exc).__name__, clickhouse_code=code)


def _looks_like_transport(message: str) -> bool:
    words = ("connect", "Connection", "HTTPConnectionPool", "HTTPSConnectionPool", "timed out",
             "Max retries", "Errno")
    return any(w in message for w in words)


def _first_line(message: str) -> str:
    return message.splitlines()[0][:2000] if message else ""


@dataclass(frozen=True)
class Result:
    columns: tuple[str, ...]
    rows: list[Row]

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r, strict=True)) for r in self.rows]


class _Pool:
    """Clients for concurrent callers; a client is held for a whole call or stream."""

    def __init__(self, make: Callable[[], Client], size: int) -> None:
        self._make = make
        self._slots = asyncio.Semaphore(size)
        self._idle: list[Client] = []

    async def acquire(self) -> Client:
        await self._slots.acquire()
        try:
            return self._idle.pop() if self._idle else await _in_thread(self._make)
        except BaseException:
            self._slots.release()
            raise

    def release(self, client: Client, healthy: bool = True) -> None:
        """Give a client back; one that lost its server is closed, to be made anew."""
        if healthy:
            self._idle.append(client)
        else:
            with contextlib.suppress(Exception):
                client.close()
        self._slots.release()

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[Client]:
        client = await self.acquire()
        healthy = True
        try:
            yield client
        except WarehouseUnavailable:
            healthy = False
            raise
        finally:
            self.release(client, healthy)

    def close(self) -> None:
        while self._idle:
            with contextlib.suppress(Exception):
                self._idle.pop().close()


class RowStream:
    """An open streaming query: its column names, then its rows a block at a time. It
    holds a client until `close()`."""

    def __init__(self, pool: _Pool, client: Client, context: StreamContext,
                 first: Sequence[Row] | None) -> None:
        self._pool = pool
        self._client = client
        self._context = context
        self._first = first
        self._healthy = True
        self.columns: tuple[str, ...] = tuple(context.source.column_names)

    async def blocks(self) -> AsyncIterator[Sequence[Row]]:
        block, self._first = self._first, None
        while block is not None:
            yield block
            try:
                block = await _in_thread(next, self._context, None)
            except WarehouseUnavailable:
                self._healthy = False
                raise

    def close(self) -> None:
        """Stop the query (if it still runs) and give the client back."""
        if self._context is None:
            return
        context, self._context = self._context, None  # type: ignore[assignment]
        with contextlib.suppress(Exception):
            context.__exit__(None, None, None)
        self._pool.release(self._client, self._healthy)


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    try:
        return await asyncio.to_thread(fn, *args)
    except ClickHouseError as exc:
        raise translate(exc) from exc


class Warehouse:
    """The ClickHouse this process reads and writes, named by `settings.clickhouse_dsn`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dsn = settings.clickhouse_dsn
        self.embedded = self.dsn.startswith("chdb:")
        self._writer: Client | None = None
        self._writer_lock = threading.Lock()
        reader_limits = {"max_execution_time": settings.analytics_query_timeout_s}
        self._readers = _Pool(lambda: self._connect(reader_limits, readonly=True),
                              settings.analytics_query_clients)
        sql_limits = {
            "max_execution_time": settings.sql_max_execution_s,
            "max_result_rows": settings.sql_max_result_rows,
            "result_overflow_mode": "throw",
            "max_query_size": settings.sql_max_query_bytes,
        }
        self._sql = _Pool(lambda: self._connect(sql_limits, readonly=True), 2)

    # -- connecting -------------------------------------------------------------------------

    def _connect(self, limits: dict[str, Any] | None = None, readonly: bool = False) -> Client:
        settings: dict[str, Any] = dict(limits or {})
        if readonly:
            # Last, so the limits above are set before the session stops accepting changes.
            settings["readonly"] = 1
        try:
            if self.embedded:
                Path(self.dsn.removeprefix("chdb://")).mkdir(parents=True, exist_ok=True)
                return clickhouse_connect.get_client(dsn=self.dsn, settings=settings)
            return clickhouse_connect.get_client(dsn=self.dsn, settings=settings,
                                                 connect_timeout=3, send_receive_timeout=60)
        except ClickHouseError as exc:
            if getattr(exc, "code", None) == UNKNOWN_DATABASE and not readonly:
                self._create_database()
                return clickhouse_connect.get_client(dsn=self.dsn, settings=settings)
            raise translate(exc) from exc

    def _create_database(self) -> None:
        """A server DSN may name a database that does not exist yet; the writer makes it."""
        parts = urlsplit(self.dsn)
        database = parts.path.strip("/")
        root = urlunsplit((parts.scheme, parts.netloc, "", parts.query, ""))
        client = clickhouse_connect.get_client(dsn=root)
        try:
            client.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
        finally:
            client.close()

    @contextlib.contextmanager
    def writer(self) -> Iterator[Client]:
        """The one full-rights client (blocking: call it from a worker thread)."""
        with self._writer_lock:
            if self._writer is None:
                self._writer = self._connect()
            try:
                yield self._writer
            except ClickHouseError as exc:
                failure = translate(exc)
                if isinstance(failure, WarehouseUnavailable):
                    self._drop_writer()
                raise failure from exc

    def _drop_writer(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None

    # -- reading ----------------------------------------------------------------------------

    async def query(self, sql: str, parameters: dict[str, Any] | None = None) -> Result:
        """Run a reporting query on a read-only client."""
        async with self._readers.client() as client:
            result = await _in_thread(lambda: client.query(sql, parameters=parameters))
        return Result(tuple(result.column_names), list(result.result_rows))

    async def stream(self, sql: str, parameters: dict[str, Any] | None = None) -> RowStream:
        """Run a reporting query whose rows are read block by block, never all at once.
        The first block is read here, so a failing query fails before anything is sent."""
        client = await self._readers.acquire()

        def start() -> tuple[StreamContext, Sequence[Row] | None]:
            context = client.query_row_block_stream(sql, parameters=parameters)
            context.__enter__()
            try:
                return context, next(context, None)
            except BaseException:
                context.__exit__(None, None, None)
                raise

        try:
            context, first = await _in_thread(start)
        except AnalyticsError as exc:
            self._readers.release(client, healthy=not isinstance(exc, WarehouseUnavailable))
            raise
        return RowStream(self._readers, client, context, first)

    async def sql(self, query: str) -> Result:
        """Run caller-written SQL on the read-only, limited client."""
        async with self._sql.client() as client:
            result = await _in_thread(lambda: client.query(query))
        return Result(tuple(result.column_names), list(result.result_rows))

    async def ping(self) -> bool:
        try:
            await self.query("SELECT 1")
            return True
        except AnalyticsError:
            return False

    def close(self) -> None:
        self._readers.close()
        self._sql.close()
        with self._writer_lock:
            self._drop_writer()
