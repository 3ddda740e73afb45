"""A complete outcome never stays without its readable file (issue 10, item 5).

complete_item writes the blob, commits the report, then links the blob at outcome_path. A process killed
between the commit and the link leaves a complete outcome whose file is missing. Here a real worker process
is SIGKILLed in exactly that window (the engine's `after_commit` seam), on both backends, and each repair path
is shown to restore the file: on read (get_outcome), at a server's start-up, and `matrix-mcp gc --repair`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from mcp.client import Client

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.mcp.server import create_server
from matrix_mcp.models import ClaimedItem, PackageSpec
from tests.conftest import assert_consistent

pytestmark = pytest.mark.anyio

KILLED_WORKER = """
import os
import signal
import sys
from pathlib import Path

import anyio

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine


async def main() -> None:
    engine = await Engine.open(Settings(database_url=sys.argv[1], artifacts_dir=Path(sys.argv[2])))
    engine.after_commit = lambda outcome_id: os.kill(os.getpid(), signal.SIGKILL)
    await engine.complete_item(sys.argv[3], lease_token=sys.argv[4], content=sys.argv[5])
    print("not killed")


anyio.run(main)
"""


async def killed_after_commit(settings: Settings, item: ClaimedItem, content: str) -> None:
    """Report `item` complete from another process that is SIGKILLed right after the store's commit."""
    command = [
        sys.executable,
        "-c",
        KILLED_WORKER,
        settings.database_url,
        str(settings.artifacts_dir),
        item.outcome_id,
        item.lease_token,
        content,
    ]
    proc = await anyio.to_thread.run_sync(
        lambda: subprocess.run(command, capture_output=True, text=True, timeout=120)
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr


def readable(settings: Settings, outcome_path: str) -> Path:
    return Path(settings.artifacts_dir) / outcome_path


async def test_a_kill_between_commit_and_link_is_repaired_on_read_at_start_up_and_by_gc(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    await engine.plan_run("r", packages=[PackageSpec(name="pkg", items=["a", "b", "c"])])
    a, b, c = sorted((await engine.claim_items("r", worker="w", limit=3)).items, key=lambda i: i.item)

    await killed_after_commit(settings, a, "content of a")
    await killed_after_commit(settings, b, "content of b")
    for item in (a, b):
        stored = await engine.store.get_outcome(item.outcome_id)
        assert stored.status == "complete" and stored.outcome_path and stored.content_sha256
        assert not readable(settings, stored.outcome_path).exists()  # the window the kill hit

    # on read: get_outcome restores the file it points at
    detail = await engine.get_outcome(a.outcome_id)
    assert detail.outcome_path is not None
    assert readable(settings, detail.outcome_path).read_text() == "content of a"

    # at start-up: a server restores recent completions' files in the background
    b_path = readable(settings, (await engine.store.get_outcome(b.outcome_id)).outcome_path or "")
    async with Client(create_server(settings)) as client:
        for _ in range(400):  # up to ~20 s: the repair runs beside serving, not before it
            if b_path.exists():
                break
            await anyio.sleep(0.05)
        assert (await client.list_tools()).tools
    assert b_path.read_text() == "content of b"

    # `matrix-mcp gc --repair`: every completion
    await killed_after_commit(settings, c, "content of c")
    c_path = readable(settings, (await engine.store.get_outcome(c.outcome_id)).outcome_path or "")
    assert not c_path.exists()
    script = Path(sys.executable).parent / "matrix-mcp"
    gc = await anyio.to_thread.run_sync(
        lambda: subprocess.run(
            [str(script), "gc", "--repair", "--database-url", settings.database_url],
            env={**os.environ, "MATRIX_ARTIFACTS_DIR": str(settings.artifacts_dir)},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    )
    assert gc.returncode == 0, gc.stderr
    assert "repaired 1 missing or altered outcome file(s) of 3" in gc.stdout
    assert c_path.read_text() == "content of c"
    await assert_consistent(engine)


async def test_repair_leaves_present_files_alone_and_counts_what_cannot_be_restored(
    settings: Settings,
) -> None:
    # content in the blob store only (none kept in the store: tests/store/test_inline_content.py restores that)
    settings = dataclasses.replace(
        settings, limits=dataclasses.replace(settings.limits, inline_content_bytes=1)
    )
    async with engine_for(settings) as engine:
        await _repair_leaves_present_files_alone(settings, engine)


@contextlib.asynccontextmanager
async def engine_for(settings: Settings) -> AsyncIterator[Engine]:
    engine = await Engine.open(settings)
    try:
        yield engine
    finally:
        await engine.close()


async def _repair_leaves_present_files_alone(settings: Settings, engine: Engine) -> None:
    await engine.plan_run("r", packages=[PackageSpec(name="pkg", items=["a", "b"])])
    a, b = sorted((await engine.claim_items("r", worker="w", limit=2)).items, key=lambda i: i.item)
    done_a = (await engine.complete_item(a.outcome_id, lease_token=a.lease_token, content="AA")).outcome
    done_b = (await engine.complete_item(b.outcome_id, lease_token=b.lease_token, content="BB")).outcome
    assert done_a and done_b
    assert done_a.outcome_path and done_b.outcome_path and done_b.content_sha256
    readable(settings, done_a.outcome_path).write_text("edited by hand")  # present: not overwritten
    readable(settings, done_b.outcome_path).unlink()
    engine.artifacts.blob_path(done_b.content_sha256).unlink()  # and its content gone too
    report = await engine.repair_files()
    assert (report.checked, report.repaired, report.unrepairable) == (2, 0, 1)
    assert readable(settings, done_a.outcome_path).read_text() == "edited by hand"
    assert (await engine.get_outcome(b.outcome_id)).status == "complete"  # a read still answers
