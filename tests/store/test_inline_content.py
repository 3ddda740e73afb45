"""Small content is kept in the store with its report (one transaction); the file under the artifacts root is
a copy, rebuilt from the store when lost. Larger content keeps the content-addressed blob (both backends)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from matrix_mcp.cli.main import _gc
from matrix_mcp.config import Settings, sqlite_path
from matrix_mcp.engine import Engine
from matrix_mcp.models import PackageSpec
from matrix_mcp.store.params import Collected
from tests.conftest import assert_consistent

pytestmark = pytest.mark.anyio

HOUR = 3600.0


async def test_small_content_lives_in_the_store_and_its_file_is_rebuilt(
    settings: Settings, tmp_path: Path
) -> None:
    settings = dataclasses.replace(
        settings, limits=dataclasses.replace(settings.limits, inline_content_bytes=64)
    )
    engine = await Engine.open(settings)
    try:
        await engine.plan_run("r", packages=[PackageSpec(name="p", items=["small", "large", "twin"])])
        claims = {c.item: c for c in (await engine.claim_items("r", worker="w", limit=3)).items}
        small, large = "s" * 64, "L" * 65
        for item, text in (("small", small), ("large", large), ("twin", small)):
            c = claims[item]
            await engine.complete_item(c.outcome_id, lease_token=c.lease_token, content=text)
        root = settings.artifacts_dir
        sha_small = hashlib.sha256(small.encode()).hexdigest()
        sha_large = hashlib.sha256(large.encode()).hexdigest()
        # in the store: the small content (once, shared by the twin), not the large one
        assert await engine.store.inline_content(sha_small) == small.encode()
        assert await engine.store.inline_content(sha_large) is None
        detail = await engine.get_outcome(claims["small"].outcome_id)
        file = root / str(detail.outcome_path)
        assert file.read_text() == small
        # the readable file and its blob lost: rebuilt from the store on read, at repair, and served meanwhile
        file.unlink()
        (root / ".blobs" / sha_small[:2] / sha_small).unlink()
        data, _ = await engine.outcome_content(claims["small"].outcome_id)
        assert data == small.encode()
        repaired = await engine.repair_files()
        assert repaired.repaired >= 1 and repaired.unrepairable == 0
        assert file.read_text() == small
        twin = root / str((await engine.get_outcome(claims["twin"].outcome_id)).outcome_path)
        assert twin.read_text() == small
        # the large content has no copy in the store: its blob is the only one
        large_detail = await engine.get_outcome(claims["large"].outcome_id)
        (root / str(large_detail.outcome_path)).unlink()
        (root / ".blobs" / sha_large[:2] / sha_large).unlink()
        assert (await engine.repair_files()).unrepairable == 1
        await assert_consistent(engine)
    finally:
        await engine.close()


async def test_a_repeated_small_report_is_idempotent(engine: Engine) -> None:
    await engine.plan_run("r", packages=[PackageSpec(name="p", items=["a"])])
    c = (await engine.claim_items("r", worker="w")).items[0]
    first = await engine.complete_item(c.outcome_id, lease_token=c.lease_token, content="hello")
    again = await engine.complete_item(c.outcome_id, lease_token=c.lease_token, content="hello")
    assert first.status == again.status == "complete"
    sha = hashlib.sha256(b"hello").hexdigest()
    assert await engine.store.inline_content(sha) == b"hello"
    await assert_consistent(engine)


@contextlib.asynccontextmanager
async def in_flight_report(settings: Settings, outcome_id: str, body: bytes) -> AsyncIterator[None]:
    """What a report with inline content writes in its transaction (the content row, left as it is when it
    exists, and the outcome referring to it), held open while the body runs; committed on leaving."""
    digest = hashlib.sha256(body).hexdigest()
    path = sqlite_path(settings.database_url)
    if path is not None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO contents (sha256, body) VALUES (?, ?) ON CONFLICT DO NOTHING", (digest, body)
            )
            conn.execute("UPDATE outcomes SET content_sha256 = ? WHERE id = ?", (digest, outcome_id))
            yield
            conn.execute("COMMIT")
        finally:
            conn.close()
        return
    import psycopg

    async with await psycopg.AsyncConnection.connect(settings.database_url) as pg, pg.transaction():
        await pg.execute(
            "INSERT INTO contents (sha256, body) VALUES (%s, %s) ON CONFLICT (sha256) DO NOTHING",
            (digest, body),
        )
        await pg.execute("UPDATE outcomes SET content_sha256 = %s WHERE id = %s", (digest, outcome_id))
        yield


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def test_gc_removes_content_no_outcome_refers_to_and_keeps_the_rest(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """An item done again after an override leaves the content of its first report behind in `contents`: gc
    removes it, keeps content any outcome still refers to (also when an item that shared it moved on), and
    `gc --repair` still rebuilds the readable file of kept content from the store."""
    engine = await Engine.open(settings)
    try:
        await engine.plan_run(
            "r", packages=[PackageSpec(name="p", items=["kept", "redone", "twin", "shared"])]
        )
        claims = {c.item: c for c in (await engine.claim_items("r", worker="w", limit=4)).items}
        texts = {
            "kept": "kept text",
            "redone": "replaced text",
            "twin": "shared text",
            "shared": "shared text",
        }
        for item, text in texts.items():
            await engine.complete_item(
                claims[item].outcome_id, lease_token=claims[item].lease_token, content=text
            )
        for item, text in (("redone", "new text"), ("twin", None)):  # overridden, then done again
            await engine.update_outcome_status(claims[item].outcome_id, status="pending")
            again = (await engine.claim_items("r", worker="w")).items[0]
            done = await engine.complete_item(again.outcome_id, lease_token=again.lease_token, content=text)
            assert done.outcome and done.outcome.content_sha256 == (text and sha(text))
        report = await engine.collect_garbage(older_than_seconds=HOUR)
        assert (report.contents_removed, report.contents_removed_bytes) == (1, len("replaced text"))
        assert await engine.store.inline_content(sha("replaced text")) is None
        assert await engine.store.inline_content(sha("kept text")) == b"kept text"
        assert (
            await engine.store.inline_content(sha("shared text")) == b"shared text"
        )  # "shared" still has it
        again = await engine.collect_garbage(older_than_seconds=HOUR)
        assert (again.contents_removed, again.contents_removed_bytes) == (0, 0)
        await assert_consistent(engine)
        # the kept content's readable file and blob lost: `gc --repair` rebuilds it from the store
        kept = await engine.get_outcome(claims["kept"].outcome_id)
        file = settings.artifacts_dir / str(kept.outcome_path)
        file.unlink()
        (settings.artifacts_dir / ".blobs" / sha("kept text")[:2] / sha("kept text")).unlink()
    finally:
        await engine.close()
    capsys.readouterr()
    await _gc(settings, HOUR, repair=True)
    out = capsys.readouterr().out
    assert "repaired 1 missing or altered outcome file(s)" in out and "0 cannot be restored" in out
    assert "removed 0 unreferenced content row(s) kept in the store, 0 bytes" in out
    assert file.read_text() == "kept text"


async def test_gc_keeps_content_a_report_is_committing_meanwhile(settings: Settings) -> None:
    """An orphan that a report writes again (the same bytes) before its commit: the collection finds the
    orphan, then waits for that report and keeps the content it now refers to."""
    engine = await Engine.open(settings)
    try:
        await engine.plan_run("r", packages=[PackageSpec(name="p", items=["a", "b"])])
        a, b = (await engine.claim_items("r", worker="w", limit=2)).items
        await engine.complete_item(a.outcome_id, lease_token=a.lease_token, content="same bytes")
        await engine.update_outcome_status(a.outcome_id, status="pending")
        a = (await engine.claim_items("r", worker="w")).items[0]
        await engine.complete_item(a.outcome_id, lease_token=a.lease_token, content="other bytes")
        assert await engine.store.inline_content(sha("same bytes")) == b"same bytes"  # an orphan now
        done = anyio.Event()
        result: list[Collected] = []

        async def collect() -> None:
            result.append(await engine.store.collect_contents())
            done.set()

        # b's report, with the same bytes, has written them and not committed yet
        async with anyio.create_task_group() as tg, in_flight_report(settings, b.outcome_id, b"same bytes"):
            tg.start_soon(collect)
            with anyio.move_on_after(0.5):
                await done.wait()
            assert not result  # it found the orphan and waits for the report to commit
        assert result == [Collected(0, 0)]
        assert await engine.store.inline_content(sha("same bytes")) == b"same bytes"
        assert (await engine.store.get_outcome(b.outcome_id)).content_sha256 == sha("same bytes")
    finally:
        await engine.close()
