"""The SQLite store's plumbing: WAL connections, migrations under BEGIN IMMEDIATE, group commit
(matrix_mcp.store.group_commit) and snapshot reads on reader connections."""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, TypeVar

import aiosqlite
import anyio
import anyio.lowlevel

from matrix_mcp.audit import acting_as
from matrix_mcp.errors import Unavailable
from matrix_mcp.store.group_commit import GroupCommit, Request
from matrix_mcp.store.sqlite import sql
from matrix_mcp.store.sqlite.aiosqlite_private import in_thread, raw_connection
from matrix_mcp.store.sqlite.migrations import MIGRATIONS, SCHEMA_VERSION_BUMP

log = logging.getLogger("matrix_mcp.store.sqlite")


T = TypeVar("T")


Op = Callable[[sqlite3.Connection], T]


BUSY_TIMEOUT_MS = 60_000


READERS = 2

# Checkpoints (copying the WAL back into the database file, with two fsyncs) run on a thread of their own
# every CHECKPOINT_EVERY write batches, not inside a report's COMMIT; a writer checkpoints itself only past
# WAL_BACKSTOP_PAGES (the background thread fell behind), where SQLite's default is every 1,000 pages.
CHECKPOINT_EVERY = 32
IDLE_CHECKPOINT_SECONDS = 0.5  # and once writes pause this long
WAL_BACKSTOP_PAGES = 10_000


class _Checkpointer:
    """PASSIVE checkpoints on a connection and thread of their own: they never wait for or block a writer or
    a reader, and a commit on the event loop never pays for one."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._wanted = threading.Event()
        self._stopping = False
        self.dirty = False  # a batch committed since the last checkpoint (set by the writer's loop)
        self._thread = threading.Thread(target=self._run, name="matrix-sqlite-checkpoint", daemon=True)
        self._thread.start()

    def request(self) -> None:
        self._wanted.set()

    def _run(self) -> None:
        conn = sqlite3.connect(str(self._path), isolation_level=None, check_same_thread=False)
        try:
            conn.execute(sql.CHECKPOINTER_BUSY_TIMEOUT)
            while True:
                # also once writes stop: a WAL fully copied back lets readers skip it (SQLite reads such a
                # database from its file alone), so a quiet store answers reads as fast as a checkpointed one
                asked = self._wanted.wait(timeout=IDLE_CHECKPOINT_SECONDS)
                self._wanted.clear()
                if self._stopping:
                    return
                if not (asked or self.dirty):
                    continue
                self.dirty = False
                try:
                    conn.execute(sql.CHECKPOINT_PASSIVE).fetchall()
                except sqlite3.Error as exc:  # the next request tries again; the writers' backstop holds
                    log.debug("background checkpoint failed: %s", exc)
        finally:
            conn.close()

    def close(self) -> None:
        self._stopping = True
        self._wanted.set()
        self._thread.join(timeout=10)


def _private_files(path: Path) -> None:
    """The database readable by the service's user alone: a new one is created mode 0600 before SQLite
    opens it (SQLite creates the WAL and shared-memory files with the database file's mode), in a folder
    created 0700; an existing database, WAL or SHM file this user owns loses its group and other rights."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return
    except FileExistsError:
        pass
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            st = os.stat(name)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_mode & 0o077:
            os.chmod(name, stat.S_IMODE(st.st_mode) & 0o600)
            log.info("%s: group and other rights removed (now 0600)", name)


def named(row: sqlite3.Row) -> dict[str, Any]:
    """The row as a dict, for a wide row its write reads many times by name: sqlite3.Row finds a column by
    comparing the name with each column's in turn, on every read (dict(row) pays that for every column)."""
    return dict(zip(row.keys(), row, strict=True))


def _is_busy(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


class _Request(Request):
    __slots__ = ("fn",)

    def __init__(self, fn: Op[Any]) -> None:
        super().__init__()
        self.fn = fn


class Database:
    """The SQLite store's plumbing: its connections, migrations, group-commit writes (`write`) and snapshot
    reads (`read`). The store's modules take it and hand it their functions of a sqlite3 connection."""

    def __init__(self, path: Path, writer: aiosqlite.Connection, readers: list[aiosqlite.Connection]) -> None:
        self.path = path
        self.url_for_display = f"sqlite:///{path}"
        self._writer = writer
        self._inline: aiosqlite.Connection | None = None  # busy_timeout 0: batches run on the event loop
        self._readers = readers
        self._reader_locks = [anyio.Lock() for _ in readers]
        self._next_reader = 0
        self.group_commit: GroupCommit[_Request] = GroupCommit(
            self._commit,
            unavailable=lambda exc: f"the SQLite store failed: {exc}",
            after=self._wake,
            gather=True,
        )
        self._changed: anyio.Event | None = None  # made when someone waits for a change
        self._closed = False
        self._checkpointer: _Checkpointer | None = None
        self._batches = 0

    # ---- lifecycle ------------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: str | Path) -> Self:
        path = Path(path)
        if str(path) != ":memory:":
            _private_files(path)
        writer = await cls._connect(path)
        store = cls(path, writer, [])
        await store.migrate()
        store._inline = await cls._connect(path, busy_ms=0)
        store._readers = [await cls._connect(path, reader=True) for _ in range(READERS)]
        store._reader_locks = [anyio.Lock() for _ in store._readers]
        if str(path) != ":memory:":
            store._checkpointer = _Checkpointer(path)
        return store

    @staticmethod
    async def _connect(
        path: Path, reader: bool = False, busy_ms: int = BUSY_TIMEOUT_MS
    ) -> aiosqlite.Connection:
        # check_same_thread=False: the inline writer runs on the event loop, not aiosqlite's thread; the
        # group-commit leader guarantees no two writes run at once.
        conn = await aiosqlite.connect(
            str(path), isolation_level=None, timeout=busy_ms / 1000, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row

        def setup(c: sqlite3.Connection) -> None:
            c.execute(sql.busy_timeout(busy_ms))
            for _ in range(100):
                try:
                    c.execute(sql.JOURNAL_WAL)
                    break
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc):
                        raise
                    time.sleep(0.05)
            c.execute(sql.SYNCHRONOUS_NORMAL)
            c.execute(sql.FOREIGN_KEYS_ON)
            c.execute(sql.wal_autocheckpoint(WAL_BACKSTOP_PAGES))
            if reader:
                c.execute(sql.QUERY_ONLY)

        await in_thread(conn, setup)
        return conn

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._checkpointer is not None:
            await anyio.to_thread.run_sync(self._checkpointer.close)
        for conn in [self._writer, *([self._inline] if self._inline else []), *self._readers]:
            await conn.close()

    async def migrate(self) -> None:
        def migrate(c: sqlite3.Connection) -> None:
            c.execute(sql.CREATE_SCHEMA_MIGRATIONS)
            done = {r[0] for r in c.execute(sql.APPLIED_MIGRATIONS)}
            for version, script in MIGRATIONS:
                if version in done:
                    continue
                # executescript commits first; statements then run inside our own transaction
                statements = [s.strip() for s in script.split(";\n") if s.strip()]
                c.execute(sql.BEGIN_IMMEDIATE)
                try:
                    if c.execute(sql.MIGRATION_APPLIED, (version,)).fetchone():
                        c.execute(sql.ROLLBACK)
                        continue
                    for statement in statements:
                        if statement == SCHEMA_VERSION_BUMP:
                            version_now = int(c.execute(sql.SCHEMA_VERSION).fetchone()[0])
                            statement = sql.set_schema_version(version_now + 1)
                        c.execute(statement)
                    c.execute(sql.RECORD_MIGRATION, (version, time.time()))
                    c.execute(sql.COMMIT)
                    log.info("applied migration %s", version)
                except BaseException:
                    c.execute(sql.ROLLBACK)
                    raise

        await in_thread(self._writer, migrate)

    # ---- plumbing -------------------------------------------------------------------------------

    async def write(self, fn: Op[T]) -> T:
        """Run `fn` in the next group-commit batch; its effects commit with the batch or not at all."""
        if self._closed:
            raise Unavailable("the store is closed")
        return await self.group_commit.submit(_Request(fn))  # type: ignore[no-any-return]

    async def _commit(self, batch: list[_Request]) -> None:
        """Inline on the event loop, on a connection that never waits for the write lock (a batch is a few
        hundred microseconds of work); when another process holds the lock, wait for it on the writer's
        thread instead."""
        assert self._inline is not None
        if not self._run_batch(raw_connection(self._inline), batch, wait=False):
            await in_thread(self._writer, self._run_batch, batch, True)

    def _wake(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()
        self._batches += 1
        if self._checkpointer is not None:
            self._checkpointer.dirty = True
            if self._batches % CHECKPOINT_EVERY == 0:
                self._checkpointer.request()

    def next_change(self) -> anyio.Event:
        """Set when the next write batch of this process commits."""
        if self._changed is None:
            self._changed = anyio.Event()
        return self._changed

    @staticmethod
    def _run_batch(c: sqlite3.Connection, batch: list[_Request], wait: bool = True) -> bool:
        """Run the batch in one transaction (retrying it whole while the database is busy). With
        wait=False (inline on the event loop), return False, having committed nothing, as soon as the
        database is busy, so the caller can retry on the writer's thread, where waiting blocks nobody."""
        inline = not wait
        for attempt in range(50):
            try:
                if wait:
                    c.execute(sql.BEGIN_IMMEDIATE)
                else:  # on the inline connection (busy_timeout 0): busy means "not now", at once
                    try:
                        c.execute(sql.BEGIN_IMMEDIATE)
                    except sqlite3.OperationalError as exc:
                        if _is_busy(exc):
                            return False
                        raise
                if len(batch) == 1:  # alone in its transaction: no savepoint needed
                    req = batch[0]
                    req.error = None
                    try:
                        with acting_as(req.principal):
                            req.value = req.fn(c)
                    except Exception as exc:
                        if _is_busy(exc):
                            raise
                        c.execute(sql.ROLLBACK)
                        req.error = exc
                        return True
                    c.execute(sql.COMMIT)
                    return True
                for req in batch:
                    req.error = None
                    c.execute(sql.SAVEPOINT)
                    try:
                        with acting_as(req.principal):
                            req.value = req.fn(c)
                        c.execute(sql.RELEASE)
                    except Exception as exc:
                        if _is_busy(exc):
                            raise
                        c.execute(sql.ROLLBACK_TO)
                        c.execute(sql.RELEASE)
                        req.error = exc
                c.execute(sql.COMMIT)
                return True
            except sqlite3.OperationalError as exc:
                if c.in_transaction:
                    c.execute(sql.ROLLBACK)
                if inline and _is_busy(exc):
                    return False
                if not _is_busy(exc) or attempt == 49:
                    for req in batch:
                        req.error = Unavailable(f"the SQLite database is busy; retry the call ({exc})")
                    return True
                time.sleep(min(0.5, 0.005 * 2**attempt) * random.random())
        return True  # pragma: no cover - the loop always returns

    async def read(self, fn: Op[T]) -> T:
        if self._closed:
            raise Unavailable("the store is closed")
        index = self._next_reader = (self._next_reader + 1) % len(self._readers)
        conn = self._readers[index]

        def in_snapshot(c: sqlite3.Connection) -> T:
            for attempt in range(50):
                try:
                    c.execute(sql.BEGIN)
                    try:
                        return fn(c)
                    finally:
                        c.execute(sql.COMMIT)
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc) or attempt == 49:
                        raise
                    time.sleep(0.01 * random.random())
            raise AssertionError("unreachable")

        async with self._reader_locks[index]:
            return await in_thread(conn, in_snapshot)

    async def integrity_check(self) -> str:
        return await self.read(lambda c: str(c.execute(sql.INTEGRITY_CHECK).fetchone()[0]))
