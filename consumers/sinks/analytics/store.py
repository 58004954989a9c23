"""The analytics store: the `events` table behind a clickhouse-connect client.

The store is the embedded chDB engine under ``<home>/clickhouse`` by default, or a ClickHouse server
when ``[sinks.analytics] url`` is set; both are driven through the same clickhouse-connect client API.

- **Inserts are idempotent.** A batch is deduplicated by event id, and ids already in the table are
  dropped before inserting, so a replay (crash before commit, rebalance, a reset consumer group)
  does not double-count, even without ``FINAL``.
- **Ad-hoc SQL is read-only** (``readonly=2``), time-bounded and row-bounded (`QUERY_LIMITS`, set on
  a second client session of its own, so nothing an analyst sends touches the writer's session;
  ``SET`` is refused since it would outlive the request, a ``SETTINGS`` clause works).
- **One engine per process.** chDB lets exactly one process open a data directory, and one process
  one directory at a time. All engine calls are blocking; from asyncio they run on one dedicated
  worker thread (`AsyncAnalyticsStore`).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import Error as ClickHouseError

from consumers.sinks.analytics.rows import EPOCH, Origin, event_row
from consumers.sinks.analytics.schema import EVENT_COLUMNS, MIGRATIONS, MIGRATIONS_DDL, Migration
from pipeline.clients.analytics import QUERY_LIMITS, QueryError
from pipeline.settings import Settings
from schemas.events import Event

__all__ = ["QueryError", "QUERY_LIMITS", "AnalyticsStore", "AsyncAnalyticsStore", "store_target"]

log = logging.getLogger(__name__)

T = TypeVar("T")

ID_LOOKUP_CHUNK = 5_000  # ids per "already stored?" query

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SET_STATEMENT = re.compile(r"^\s*SET\s", re.IGNORECASE)


def store_target(settings: Settings) -> str:
    """The clickhouse-connect DSN: the server URL, or ``chdb:///<home>/clickhouse``."""
    url = settings.sinks.analytics.url
    if url:
        return url
    return f"chdb://{(settings.home / 'clickhouse').resolve()}"


def _connect(target: str, database: str | None, settings: dict[str, Any] | None = None) -> Client:
    """A client (its own session) for the target; datetimes come back timezone-aware (UTC)."""
    if target.startswith("chdb:"):
        path = Path(target.removeprefix("chdb://"))
        path.mkdir(parents=True, exist_ok=True)
        # the path as such, not inside a DSN: a home with "?" or "#" in it must not parse as a URL
        client = clickhouse_connect.get_client(interface="chdb", path=str(path), tz_mode="aware", settings=settings)
    else:
        client = clickhouse_connect.get_client(dsn=target, tz_mode="aware", settings=settings)
    if database:
        client.database = database
    return client


def _sql_text(sql: str) -> str:
    """An ad-hoc statement without surrounding blanks and trailing semicolons."""
    return sql.strip().rstrip(";").rstrip()


class AnalyticsStore:
    """The `events` table behind a clickhouse-connect client (blocking; see AsyncAnalyticsStore).

    Writes, migrations and id look-ups share one client; ad-hoc SQL runs on a second client (its own
    session) under `QUERY_LIMITS`.
    """

    def __init__(self, client: Client, target: str, database: str) -> None:
        self._client = client
        self._target = target
        self._database = database
        self._reader: Client | None = None

    @classmethod
    def open(cls, settings: Settings, *, migrate: bool = True) -> "AnalyticsStore":
        """Connect to the configured store, create the database and bring the schema up to date."""
        database = settings.sinks.analytics.database
        if not _IDENTIFIER.match(database):
            raise ValueError(f"sinks.analytics.database: {database!r} is not a plain identifier")
        target = store_target(settings)
        client = _connect(target, None)
        try:
            client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
            client.database = database
            store = cls(client, target, database)
            if migrate:
                store.migrate()
        except BaseException:
            client.close()
            raise
        return store

    @property
    def database(self) -> str:
        return self._database

    @property
    def embedded(self) -> bool:
        return self._target.startswith("chdb:")

    # -- schema

    def applied_versions(self) -> list[int]:
        """Schema versions recorded in ``schema_migrations``, ascending."""
        self._client.command(MIGRATIONS_DDL.format(db=self._database))
        result = self._client.query(f"SELECT DISTINCT version FROM {self._database}.schema_migrations ORDER BY version")
        return [int(row[0]) for row in result.result_rows]

    def migrate(self, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
        """Apply the migrations not yet recorded, in version order; return the versions applied."""
        done = set(self.applied_versions())
        newer = sorted(done - {m.version for m in migrations})
        if newer:
            log.warning("analytics schema has versions %s this code does not know", newer)
        applied = []
        for migration in sorted(migrations, key=lambda m: m.version):
            if migration.version in done:
                continue
            for statement in migration.statements:
                self._client.command(statement.format(db=self._database))
            self._client.insert(
                f"{self._database}.schema_migrations",
                [[migration.version, migration.description]],
                column_names=["version", "description"],
            )
            log.info("analytics schema: applied version %d (%s)", migration.version, migration.description)
            applied.append(migration.version)
        return applied

    # -- writes

    def insert(self, events: Sequence[Event], origins: Sequence[Origin] | None = None) -> int:
        """Insert events not stored yet (by id, also within the batch); return the rows written."""
        if origins is not None and len(origins) != len(events):
            raise ValueError("one origin per event")
        rows: dict[str, list[Any]] = {}
        for index, event in enumerate(events):
            if event.id not in rows:
                rows[event.id] = event_row(event, origins[index] if origins is not None else None)
        for stored in self._existing_ids(list(rows.values())):
            rows.pop(stored, None)
        if rows:
            self._client.insert(f"{self._database}.events", list(rows.values()), column_names=EVENT_COLUMNS)
        return len(rows)

    def _existing_ids(self, rows: list[list[Any]]) -> set[str]:
        """The ids among `rows` already in the table (bounded by type and time to use the key)."""
        id_at, type_at, time_at = (EVENT_COLUMNS.index(c) for c in ("id", "type", "time"))
        found: set[str] = set()
        for start in range(0, len(rows), ID_LOOKUP_CHUNK):
            chunk = rows[start:start + ID_LOOKUP_CHUNK]
            millis = [round((row[time_at] - EPOCH).total_seconds() * 1000) for row in chunk]
            result = self._client.query(
                f"SELECT DISTINCT id FROM {self._database}.events"
                " WHERE type IN {types:Array(String)}"
                " AND time BETWEEN fromUnixTimestamp64Milli({lo:Int64}, 'UTC')"
                " AND fromUnixTimestamp64Milli({hi:Int64}, 'UTC')"
                " AND id IN {ids:Array(String)}",
                parameters={
                    "types": sorted({row[type_at] for row in chunk}),
                    "lo": min(millis),
                    "hi": max(millis),
                    "ids": [row[id_at] for row in chunk],
                },
            )
            found.update(row[0] for row in result.result_rows)
        return found

    # -- reads

    def query(self, sql: str) -> tuple[list[str], list[list[Any]]]:
        """Run one read-only statement; raise `QueryError` with ClickHouse's message if refused."""
        text = _sql_text(sql)
        if not text:
            raise QueryError("empty query")
        if _SET_STATEMENT.match(text):
            raise QueryError("SET would outlive this query; use a SETTINGS clause instead")
        try:
            result = self._reader_client().query(text)
            return list(result.column_names), [list(row) for row in result.result_rows]
        except ClickHouseError as exc:
            self._drop_reader()
            raise QueryError(str(exc).strip()) from None
        except BaseException:
            self._drop_reader()
            raise

    def _reader_client(self) -> Client:
        if self._reader is None:
            self._reader = _connect(self._target, self._database, QUERY_LIMITS)
        return self._reader

    def _drop_reader(self) -> None:
        """Forget the ad-hoc session after a failed query; the next query opens a fresh one.

        With chDB, a query that fails while its result streams (``max_result_rows`` exceeded) leaves
        the rest of that stream on the session, and the next query on it reads those rows as its
        own result. A fresh session does not.
        """
        if self._reader is not None:
            with contextlib.suppress(Exception):
                self._reader.close()
            self._reader = None

    def close(self) -> None:
        """Close both clients (with chDB, the engine stays open while any handle is)."""
        self._drop_reader()
        with contextlib.suppress(Exception):
            self._client.close()


class AsyncAnalyticsStore:
    """An `AnalyticsStore` driven from asyncio: every call runs on one dedicated worker thread."""

    def __init__(self, store: AnalyticsStore, executor: concurrent.futures.ThreadPoolExecutor) -> None:
        self.store = store
        self._executor = executor

    @classmethod
    async def open(cls, settings: Settings) -> "AsyncAnalyticsStore":
        """Open (and migrate) the store on a fresh worker thread."""
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="analytics-db")
        try:
            store = await asyncio.get_running_loop().run_in_executor(executor, AnalyticsStore.open, settings)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(store, executor)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def insert(self, events: Sequence[Event], origins: Sequence[Origin] | None = None) -> int:
        return await self._run(self.store.insert, events, origins)

    async def query(self, sql: str) -> tuple[list[str], list[list[Any]]]:
        return await self._run(self.store.query, sql)

    async def close(self) -> None:
        """Close the clients on the worker thread, then let the thread go."""
        try:
            await self._run(self.store.close)
        finally:
            self._executor.shutdown(wait=False)
