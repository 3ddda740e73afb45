"""Small content is kept in the store with its report (one transaction); the file under the artifacts root is
a copy, rebuilt from the store when lost. Larger content keeps the content-addressed blob (both backends)."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.models import PackageSpec
from tests.conftest import assert_consistent

pytestmark = pytest.mark.anyio


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
