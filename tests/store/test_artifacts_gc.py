"""Garbage collection of stored content: a rejected report's blob is removed once nothing has written it for
a while; content any outcome refers to, and content a report is writing right now, is never touched."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine, InputError
from matrix_mcp.errors import StaleLease
from matrix_mcp.models import PackageSpec, RunPolicy
from tests.conftest import assert_consistent

pytestmark = pytest.mark.anyio

HOUR = 3600.0


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[Engine]:
    """Content always goes to the blob store here (what gc collects): nothing is small enough to be kept in
    the store with its report (a rejected small report writes no file at all)."""
    limits = dataclasses.replace(settings.limits, inline_content_bytes=1)
    eng = await Engine.open(dataclasses.replace(settings, limits=limits))
    try:
        yield eng
    finally:
        await eng.close()


def age_everything(root: Path, seconds: float) -> None:
    then = time.time() - seconds
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (then, then))


def blob(root: Path, data: bytes) -> Path:
    sha = hashlib.sha256(data).hexdigest()
    return root / ".blobs" / sha[:2] / sha


async def test_rejected_reports_content_is_collected_and_nothing_else(engine: Engine) -> None:
    root = engine.artifacts.root
    await engine.plan_run(
        "r", packages=[PackageSpec(name="p", items=["a", "b"])], policy=RunPolicy(lease_seconds=60)
    )
    t = time.time()
    engine.now = lambda: t  # type: ignore[method-assign]
    slow = (await engine.claim_items("r", worker="slow")).items[0]
    t += 61  # the slow worker's lease expires; another worker takes the item and reports first
    fast = (await engine.claim_items("r", worker="fast", limit=2)).items
    assert len(fast) == 2 and slow.outcome_id in {c.outcome_id for c in fast}
    again = next(c for c in fast if c.outcome_id == slow.outcome_id)
    other = next(c for c in fast if c.outcome_id != slow.outcome_id)
    done = await engine.complete_item(again.outcome_id, lease_token=again.lease_token, content="on time")
    with pytest.raises(StaleLease):
        await engine.complete_item(slow.outcome_id, lease_token=slow.lease_token, content="late and rejected")
    assert blob(root, b"late and rejected").exists()  # written before the store said no
    await engine.complete_item(other.outcome_id, lease_token=other.lease_token, content="kept too")
    (root / ".blobs" / "ab").mkdir(parents=True, exist_ok=True)
    (root / ".blobs" / "ab" / ".tmp-killedwrite").write_bytes(b"partial")  # a write killed midway

    nothing = await engine.collect_garbage(older_than_seconds=HOUR)  # everything is young
    assert (nothing.removed, nothing.kept) == (0, 3)

    age_everything(root, 2 * HOUR)
    report = await engine.collect_garbage(older_than_seconds=HOUR)
    assert report.removed == 2 and report.removed_bytes == len(b"late and rejected") + len(b"partial")
    assert report.kept == 2
    assert not blob(root, b"late and rejected").exists()
    assert not (root / ".blobs" / "ab" / ".tmp-killedwrite").exists()
    assert (await engine.outcome_content(done.outcome_id))[0] == b"on time"
    assert (await engine.outcome_content(other.outcome_id))[0] == b"kept too"
    assert (root / str(done.outcome and done.outcome.outcome_path)).read_bytes() == b"on time"
    await assert_consistent(engine)


async def test_content_a_report_is_writing_now_is_kept(engine: Engine) -> None:
    """An old unreferenced blob that a report is about to commit (it wrote the same bytes a moment ago) is
    fresh again and kept; so is one moved aside by a collection killed midway that an outcome refers to."""
    root = engine.artifacts.root
    engine.artifacts.put_blob(b"same bytes")
    age_everything(root, 2 * HOUR)
    engine.artifacts.put_blob(b"same bytes")  # a report in flight, before its commit
    assert (await engine.collect_garbage(older_than_seconds=HOUR)).removed == 0
    assert blob(root, b"same bytes").exists()

    await engine.plan_run("r", packages=[PackageSpec(name="p", items=["a"])])
    c = (await engine.claim_items("r", worker="w")).items[0]
    await engine.complete_item(c.outcome_id, lease_token=c.lease_token, content="referenced")
    path = blob(root, b"referenced")
    shutil.move(path, path.with_name(".gc-" + path.name))  # a collection killed after moving it aside
    age_everything(root, 2 * HOUR)
    report = await engine.collect_garbage(older_than_seconds=HOUR)
    assert path.exists() and (await engine.outcome_content(c.outcome_id))[0] == b"referenced"
    assert report.removed == 1  # "same bytes": unreferenced and untouched for two hours now


async def test_collect_garbage_refuses_a_window_a_report_could_fall_into(engine: Engine) -> None:
    with pytest.raises(InputError) as err:
        await engine.collect_garbage(older_than_seconds=5)
    assert err.value.field == "older_than"


async def complete_one_with_content(settings: Settings) -> None:
    engine = await Engine.open(settings)
    try:
        await engine.plan_run("r", packages=[PackageSpec(name="p", items=["a"])])
        c = (await engine.claim_items("r", worker="w")).items[0]
        await engine.complete_item(c.outcome_id, lease_token=c.lease_token, content="referenced")
    finally:
        await engine.close()


def test_gc_command(tmp_path: Path) -> None:
    script = shutil.which("matrix-mcp")
    assert script
    env = {**os.environ, "MATRIX_DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}"}
    env["MATRIX_ARTIFACTS_DIR"] = str(tmp_path / "a")
    # a store pointed at the wrong database refers to none of the blobs: gc deletes nothing and says why
    wrong = subprocess.run(
        [script, "--database-url", f"sqlite:///{tmp_path / 'other.db'}", "gc"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert wrong.returncode == 0 and "removed 0" in wrong.stdout  # no blobs yet: nothing to judge
    anyio.run(complete_one_with_content, Settings(env["MATRIX_DATABASE_URL"], tmp_path / "a"))
    orphan = tmp_path / "a" / ".blobs" / "00" / ("00" + "0" * 62)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"x" * 10)
    age_everything(tmp_path / "a", 2 * HOUR)
    wrong = subprocess.run(
        [script, "--database-url", f"sqlite:///{tmp_path / 'other.db'}", "gc"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert wrong.returncode == 1 and "nothing was deleted" in wrong.stderr and orphan.exists()
    young = subprocess.run([script, "gc", "--older-than", "10800"], env=env, capture_output=True, text=True)
    assert young.returncode == 0 and "removed 0" in young.stdout and orphan.exists()
    done = subprocess.run([script, "gc"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "removed 1 unreferenced blob(s), 10 bytes" in done.stdout and not orphan.exists()
    assert blob(tmp_path / "a", b"referenced").exists()
    bad = subprocess.run([script, "gc", "--older-than", "1"], env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "at least 60" in bad.stderr
