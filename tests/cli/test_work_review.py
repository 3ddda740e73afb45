"""`matrix-mcp work` with review gates and usage: `--verify` as a local gate and as the reviewer, usage read
from the command's JSON output (the shapes agent CLIs print), heartbeat checkpoints and the earlier attempts
handed to the next command."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from matrix_mcp.cli.work import usage_of
from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.models import PackageSpec, RunPolicy, Usage
from tests.cli.test_work import work_cmd
from tests.conftest import assert_consistent

pytestmark = pytest.mark.anyio


# the item's command: prints a claude-like JSON answer with usage; on its first attempt of item "slow" it
# writes a checkpoint to stderr, outlives a heartbeat and fails; it keeps what it was told of earlier attempts
COMMAND = textwrap.dedent(
    """\
    import json, os, sys, time
    doc = json.loads(sys.stdin.read())
    marks = os.environ["MARKS"]
    with open(os.path.join(marks, f"{doc['item']}.{doc['attempt']}.json"), "w") as f:
        json.dump({"doc": doc.get("previous_attempts"), "env": os.environ.get("MATRIX_PREVIOUS_ATTEMPTS")}, f)
    if doc["item"] == "slow" and doc["attempt"] == 1:
        print("migrated 3 of 5 tables", file=sys.stderr, flush=True)
        time.sleep(1.5)
        sys.exit(3)
    text = "bad" if doc["item"] == "bad" and doc["attempt"] == 1 else "good"
    print(json.dumps({"result": text, "total_cost_usd": 0.25, "model": "m1",
                      "usage": {"input_tokens": 100, "output_tokens": 10, "cache_read_input_tokens": 1000,
                                "cache_creation_input_tokens": 5}}))
    """
)
# --verify: the command's output on stdin; rejects a "bad" result with a note on stderr
VERIFY = textwrap.dedent(
    """\
    import json, sys
    if json.load(sys.stdin)["result"] == "bad":
        print("the answer is bad", file=sys.stderr)
        sys.exit(1)
    print("fine", file=sys.stderr)
    """
)


def files(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "marks").mkdir()
    command, verify = tmp_path / "command.py", tmp_path / "verify.py"
    command.write_text(COMMAND)
    verify.write_text(VERIFY)
    return command, verify


async def work(settings: Settings, tmp_path: Path, command: Path, verify: Path) -> str:
    proc = await anyio.run_process(
        work_cmd(
            settings,
            "r",
            "-j",
            "2",
            "--worker",
            "wk",
            "--verify",
            f"{sys.executable} {verify}",
            "--",
            sys.executable,
            str(command),
        ),
        env={**os.environ, "MARKS": str(tmp_path / "marks")},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def told(tmp_path: Path, item: str, attempt: int) -> tuple[object, object]:
    seen = json.loads((tmp_path / "marks" / f"{item}.{attempt}.json").read_text())
    return seen["doc"], json.loads(seen["env"]) if seen["env"] is not None else None


@pytest.mark.parametrize("review", ["none", "required"])
async def test_verify_gates_reports_usage_and_briefs_the_next_attempt(
    settings: Settings, tmp_path: Path, review: str
) -> None:
    """Without review a rejection by --verify fails the attempt locally (retried); with review required the
    item is completed, then approved or rejected by review_item with --verify's stderr as the note. Either
    way the usage the command printed is reported, the heartbeat carried the command's last stderr line as a
    checkpoint, and the next attempt is told what the earlier ones left."""
    command, verify = files(tmp_path)
    engine = await Engine.open(settings)
    try:
        policy = RunPolicy(lease_seconds=0.6, backoff_seconds=0, review=review)  # type: ignore[arg-type]
        await engine.plan_run(
            "r", packages=[PackageSpec(name="p", items=["ok", "bad", "slow"])], policy=policy
        )
        out = await work(settings, tmp_path, command, verify)
        assert "--verify: 3 approved, 1 rejected" in out
        outcomes = {o.item: o for o in (await engine.list_outcomes(run="r")).outcomes}
        assert {o.status for o in outcomes.values()} == {"complete"}
        bad = await engine.get_outcome(outcomes["bad"].id)
        first = bad.history[0]
        if review == "required":  # completed, then rejected by review_item
            assert (first.status, first.review_decision, first.review_note) == (
                "failed",
                "reject",
                "the answer is bad",
            )
            assert bad.history[1].review_decision == "approve" and bad.history[1].review_note == "fine"
            # --verify's decisions name their principal, as review_item's do: this worker
            assert {h.reviewed_by for h in bad.history} == {"work:wk"}
            decided = [e for e in await engine.events(since=0, run="r", limit=1000) if e.kind == "rejected"]
            assert [e.data.get("principal") for e in decided] == ["work:wk"]
        else:  # never reported complete: failed before reporting
            assert first.status == "failed" and first.error == "rejected by --verify: the answer is bad"
            assert first.review_decision is None
        assert first.usage == Usage(
            input_tokens=100,
            output_tokens=10,
            cache_read_tokens=1000,
            cache_creation_tokens=5,
            cost_usd=0.25,
            model="m1",
        )
        doc, env = told(tmp_path, "bad", 2)
        assert doc == env and isinstance(doc, list) and doc[0]["attempt"] == 1
        assert "the answer is bad" in (doc[0].get("review_note") or doc[0].get("error") or "")
        assert told(tmp_path, "ok", 1) == (None, None)  # a first attempt is told nothing
        slow = await engine.get_outcome(outcomes["slow"].id)
        assert slow.history[0].note == "migrated 3 of 5 tables"  # the heartbeat's checkpoint
        assert slow.history[0].error == "exit status 3: migrated 3 of 5 tables"
        doc, _ = told(tmp_path, "slow", 2)
        assert isinstance(doc, list) and doc[0]["note"] == "migrated 3 of 5 tables"
        status = await engine.run_status("r")
        assert status.usage is not None
        # four reports with usage: ok, bad twice, slow's second (its failed first printed none)
        assert (status.usage.input_tokens, status.usage.cost_usd) == (400, pytest.approx(1.0))
        await assert_consistent(engine)
    finally:
        await engine.close()


def test_usage_shapes() -> None:
    """The usage `work` reads from a command's stdout: Anthropic's, OpenAI's (cached prompt tokens counted
    once), claude -p's total_cost_usd; anything else is no usage."""

    def read(doc: object) -> Usage | None:
        return usage_of(json.dumps(doc).encode() + b"\n")

    anthropic = {"usage": {"input_tokens": 7, "output_tokens": 3, "cache_read_input_tokens": 50,
                           "cache_creation_input_tokens": 2}, "model": "claude-x"}  # fmt: skip
    assert read(anthropic) == Usage(
        input_tokens=7, output_tokens=3, cache_read_tokens=50, cache_creation_tokens=2, model="claude-x"
    )
    chat = {"model": "gpt-x", "usage": {"prompt_tokens": 100, "completion_tokens": 9,
                                        "prompt_tokens_details": {"cached_tokens": 60}}}  # fmt: skip
    assert read(chat) == Usage(input_tokens=40, output_tokens=9, cache_read_tokens=60, model="gpt-x")
    responses = {
        "usage": {"input_tokens": 10, "output_tokens": 1, "input_tokens_details": {"cached_tokens": 4}}
    }
    assert read(responses) == Usage(input_tokens=6, output_tokens=1, cache_read_tokens=4)
    claude = {"type": "result", "result": "…", "total_cost_usd": 0.0123, "usage": {"input_tokens": 5}}
    assert read(claude) == Usage(input_tokens=5, cost_usd=0.0123)
    assert read({"total_cost_usd": 2}) == Usage(cost_usd=2.0)
    assert read({"usage": {"cost_usd": 0.5, "input_tokens": -1, "output_tokens": True}}) == Usage(
        cost_usd=0.5
    )
    for nothing in ({"result": "x"}, {"model": "m"}, [1, 2], {"usage": "lots"}, {"total_cost_usd": "1"}):
        assert read(nothing) is None, nothing
    assert usage_of(b"# plain markdown\n") is None and usage_of(b"{not json") is None
