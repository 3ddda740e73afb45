"""Shared by the reliability suite (tests/reliability/test_reliability_*.py) and the soak mode (bench/soak.py).

`WorkerProcess` starts tests/support/reliability_worker.py as its own process (an MCP server plus a worker loop)
and reads its JSON lines; `check_store` states what "nothing lost" means and returns every violation;
`BlackHoleProxy` stands between server processes and PostgreSQL and can go silent (a network partition).

What "events without gaps in committed data" means here:
- both backends: every committed claim has its `claimed` event (one per outcome_attempts row), every
  committed completion its `completed` event (one per attempt that ended `complete`), and a complete
  outcome was completed exactly once by the lease path;
- SQLite: sequence numbers are exactly 1..N (AUTOINCREMENT is transactional: a rolled-back or killed
  transaction gives its numbers back, so a gap would mean a lost committed event);
- PostgreSQL: sequence numbers are unique and increasing; gaps are normal (a sequence value consumed by a
  rolled-back transaction is not given back), so completeness is checked by the correspondences above.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.abc

from matrix_mcp.config import Settings, is_postgres_url, sqlite_path
from matrix_mcp.engine import Engine

ROOT = Path(__file__).resolve().parent.parent.parent
WORKER = Path(__file__).resolve().parent / "reliability_worker.py"


class WorkerProcess:
    """One worker process; stdout (JSON lines) and stderr go to files so nothing blocks on a pipe."""

    def __init__(
        self,
        log_dir: Path,
        name: str,
        url: str,
        artifacts: Path,
        *args: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.out_path = log_dir / f"{name}.out"
        self.err_path = log_dir / f"{name}.err"
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(WORKER),
                    "--database-url",
                    url,
                    "--artifacts-dir",
                    str(artifacts),
                    *args,
                ],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env={**os.environ, "MATRIX_LOG_LEVEL": "INFO", **(env or {})},
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self) -> list[dict[str, Any]]:
        lines = self.out_path.read_text(errors="replace").splitlines()
        out = []
        for line in lines:
            with contextlib.suppress(ValueError):  # a line cut short by SIGKILL
                out.append(json.loads(line))
        return out

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    async def wait_for(self, ev: str, timeout: float = 120.0, count: int = 1) -> dict[str, Any]:
        with anyio.fail_after(timeout):
            while True:
                found = [e for e in self.events() if e.get("ev") == ev]
                if len(found) >= count:
                    return found[count - 1]
                if self.proc.poll() is not None:
                    found = [e for e in self.events() if e.get("ev") == ev]
                    if len(found) >= count:
                        return found[count - 1]
                    raise AssertionError(
                        f"{self.name} exited {self.proc.returncode}: {self.stderr()[-2000:]}"
                    )
                await anyio.sleep(0.05)

    async def wait_exit(self, timeout: float = 120.0) -> int:
        with anyio.fail_after(timeout):
            return await anyio.to_thread.run_sync(self.proc.wait, abandon_on_cancel=True)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def alive(self) -> bool:
        return self.proc.poll() is None


def _rows(url: str, query: str) -> list[tuple[Any, ...]]:
    if is_postgres_url(url):
        import psycopg

        with psycopg.connect(url, connect_timeout=10) as conn:
            return [tuple(r) for r in conn.execute(query).fetchall()]
    path = sqlite_path(url)
    assert path is not None
    conn = sqlite3.connect(path, timeout=60)
    try:
        return [tuple(r) for r in conn.execute(query).fetchall()]
    finally:
        conn.close()


def check_events(url: str) -> list[str]:
    problems: list[str] = []
    seqs = [r[0] for r in _rows(url, "SELECT seq FROM events ORDER BY seq")]
    if len(set(seqs)) != len(seqs):
        problems.append("duplicate event sequence numbers")
    if not is_postgres_url(url) and seqs and seqs != list(range(1, len(seqs) + 1)):
        missing = sorted(set(range(1, seqs[-1] + 1)) - set(seqs))[:10]
        problems.append(f"SQLite event sequence has gaps: missing {missing}")
    claimed = Counter(r[0] for r in _rows(url, "SELECT outcome_id FROM events WHERE kind = 'claimed'"))
    attempts = Counter(r[0] for r in _rows(url, "SELECT outcome_id FROM outcome_attempts"))
    if claimed != attempts:
        diff = {
            k: (claimed[k], attempts[k]) for k in set(claimed) | set(attempts) if claimed[k] != attempts[k]
        }
        problems.append(
            f"claimed events != attempt rows for {len(diff)} outcomes, e.g. {list(diff.items())[:3]}"
        )
    completed = Counter(r[0] for r in _rows(url, "SELECT outcome_id FROM events WHERE kind = 'completed'"))
    done_attempts = Counter(
        r[0] for r in _rows(url, "SELECT outcome_id FROM outcome_attempts WHERE status = 'complete'")
    )
    if completed != done_attempts:
        problems.append("completed events != attempts that ended complete")
    return problems


def check_artifacts(url: str, root: Path) -> list[str]:
    """Blobs hash to their names; every readable file is one whole blob; committed content has its blob or is
    kept in the store;
    nothing outside the root was touched (the caller checks its sentinel)."""
    problems: list[str] = []
    blobs: set[str] = set()
    blob_dir = root / ".blobs"
    if blob_dir.exists():
        for f in blob_dir.rglob("*"):
            if f.is_file() and not f.name.startswith(".tmp-"):
                if hashlib.sha256(f.read_bytes()).hexdigest() != f.name:
                    problems.append(f"blob {f.name} is corrupt (half-written?)")
                blobs.add(f.name)
    if root.exists():
        for f in root.rglob("*"):
            rel = f.relative_to(root)
            if not f.is_file() or rel.parts[0] in (".blobs", "exports") or f.name.startswith("."):
                continue
            if hashlib.sha256(f.read_bytes()).hexdigest() not in blobs:
                problems.append(f"readable artifact {rel} is not a whole blob (half-written?)")
    # content kept in the store with its report (inline): its blob is a copy written after the commit
    inline = {
        sha: hashlib.sha256(bytes(body)).hexdigest() == sha
        for sha, body in _rows(url, "SELECT sha256, body FROM contents")
    }
    problems += [
        f"inline content {sha[:12]} does not hash to its name" for sha, ok in inline.items() if not ok
    ]
    for (sha,) in _rows(url, "SELECT content_sha256 FROM outcomes WHERE content_sha256 IS NOT NULL"):
        if sha not in blobs and sha not in inline:
            problems.append(f"committed content {sha[:12]} has no blob")
    return problems


async def check_store(url: str, artifacts: Path) -> list[str]:
    """Every violation of "consistent, nothing lost" in the store at `url`; [] when it holds."""
    problems: list[str] = []
    path = sqlite_path(url)
    if path is not None:
        ok = _rows(url, "PRAGMA integrity_check")
        if ok != [("ok",)]:
            problems.append(f"integrity_check: {ok[:5]}")
        fk = _rows(url, "PRAGMA foreign_key_check")
        if fk:
            problems.append(f"foreign_key_check: {fk[:5]}")
    engine = await Engine.open(Settings(database_url=url, artifacts_dir=artifacts))
    try:
        report = await engine.store.recount()
        if not report.consistent:
            problems.extend(report.mismatches[:10])
    finally:
        await engine.close()
    problems.extend(check_events(url))
    problems.extend(check_artifacts(url, artifacts))
    return problems


def run_counts(url: str, run: str) -> Counter[str]:
    rows = _rows(
        url,
        "SELECT o.status FROM outcomes o JOIN runs r ON r.id = o.run_id WHERE r.name = '"
        + run.replace("'", "''")
        + "'",
    )
    return Counter(r[0] for r in rows)


def completions_per_outcome(url: str) -> Counter[str]:
    return Counter(
        r[0] for r in _rows(url, "SELECT outcome_id FROM outcome_attempts WHERE status = 'complete'")
    )


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


def now() -> float:
    return time.monotonic()


class BlackHoleProxy:
    """A TCP proxy on 127.0.0.1 in front of `target` (host, port). `hold()` black-holes the link: nothing is
    forwarded in either direction and no socket is closed (no RST, no FIN: a partition, a failover that left
    the old address silent); new connections are accepted but not connected through. `release()` heals it:
    what was held is delivered, as TCP would retransmit it, and a side closed meanwhile is closed through.

    Serve it with `async with proxy.serving():`; `url(database_url)` is that URL with the proxy's port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.connections = 0
        self._flowing = anyio.Event()
        self._flowing.set()

    def hold(self) -> None:
        if self._flowing.is_set():
            self._flowing = anyio.Event()

    def release(self) -> None:
        self._flowing.set()

    async def _pass(self) -> None:
        while not self._flowing.is_set():
            await self._flowing.wait()

    def url(self, database_url: str) -> str:
        parts = urlsplit(database_url)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        return urlunsplit(
            (parts.scheme, f"{netloc[0]}@{host}" if len(netloc) == 2 else host, parts.path, parts.query, "")
        )

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[BlackHoleProxy]:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, self._handle)
            try:
                yield self
            finally:
                self.release()
                tg.cancel_scope.cancel()

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        self.connections += 1
        async with client:
            await self._pass()  # a connection made during an outage gets no answer until it heals
            try:
                upstream = await anyio.connect_tcp(*self.target)
            except OSError:
                return
            async with upstream, anyio.create_task_group() as tg:
                tg.start_soon(self._pipe, client, upstream, tg.cancel_scope)
                tg.start_soon(self._pipe, upstream, client, tg.cancel_scope)

    async def _pipe(
        self, source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream, scope: anyio.CancelScope
    ) -> None:
        try:
            while True:
                data = await source.receive()
                await self._pass()
                await sink.send(data)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            await self._pass()  # the FIN is held like any other packet
            scope.cancel()  # one side is gone: close both
