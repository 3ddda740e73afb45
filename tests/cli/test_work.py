"""`matrix-mcp work`: a command per item, on both backends, with small scripts — one that fails once, one
that hangs (timeout), one that prints too much (size cap) — and `work` itself killed mid-run (SIGTERM and
SIGKILL): nothing lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.models import ItemSpec, PackageSpec, RunPolicy
from tests.conftest import assert_consistent

pytestmark = pytest.mark.anyio

# one script, its behaviour chosen by the item's specifications; markers under $MARKS
SCRIPT = textwrap.dedent(
    """\
    import json, os, subprocess, sys, time
    doc = json.loads(sys.stdin.read())
    env = {k: os.environ[k] for k in ("MATRIX_RUN", "MATRIX_PACKAGE", "MATRIX_ITEM", "MATRIX_OUTCOME_ID",
                                       "MATRIX_ATTEMPT", "MATRIX_SPECIFICATIONS", "MATRIX_BRIEFING")}
    assert env["MATRIX_RUN"] == doc["run"] and env["MATRIX_ITEM"] == doc["item"]
    assert env["MATRIX_OUTCOME_ID"] == doc["outcome_id"] and int(env["MATRIX_ATTEMPT"]) == doc["attempt"]
    assert json.loads(env["MATRIX_SPECIFICATIONS"]) == doc["specifications"]
    assert env["MATRIX_BRIEFING"] == (doc["briefing"] or "")
    spec = doc["specifications"] or {}
    marks = os.environ["MARKS"]
    mode = os.environ.get("MODE") or spec.get("mode", "ok")
    mark = os.path.join(marks, doc["outcome_id"])
    first = not os.path.exists(mark)
    open(mark, "a").write(str(os.getpid()) + "\\n")
    if mode == "fail_once" and first:
        print("transient trouble", file=sys.stderr)
        sys.exit(3)
    if mode == "hang_once" and first:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open(mark + ".child", "w").write(str(child.pid))
        time.sleep(120)
    if mode == "slow":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open(mark + ".child", "w").write(str(child.pid))
        time.sleep(120)
    if mode == "longer_than_the_lease":
        time.sleep(3)
    if mode == "huge":
        sys.stdout.write("x" * 5000)
        sys.exit(0)
    if mode == "exit7":
        sys.exit(7)
    with open(os.environ["MATRIX_METRICS_FILE"], "w") as f:
        json.dump({"quality_score": 0.75, "tokens": 12}, f)
    print(f"{doc['package']}/{doc['item']} attempt {doc['attempt']}")
    """
)


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "item.py"
    path.write_text(SCRIPT)
    (tmp_path / "marks").mkdir()
    return path


def work_cmd(settings: Settings, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "matrix_mcp",
        "--database-url",
        settings.database_url,
        "--artifacts-dir",
        str(settings.artifacts_dir),
        "work",
        *args,
    ]


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "MARKS": str(tmp_path / "marks"), **extra}


async def plan(settings: Settings, packages: list[PackageSpec], **policy: float) -> None:
    engine = await Engine.open(settings)
    try:
        await engine.plan_run("r", packages=packages, goal="the goal", policy=RunPolicy(**policy))  # type: ignore[arg-type]
    finally:
        await engine.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def child_pids(tmp_path: Path) -> list[int]:
    return [int(p.read_text()) for p in (tmp_path / "marks").glob("*.child")]


@pytest.fixture
def reap(tmp_path: Path) -> Iterator[None]:
    yield
    for pid in child_pids(tmp_path):  # whatever a test left running (SIGKILL of work leaves its commands)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


async def test_work_runs_each_item_retries_times_out_and_caps(
    settings: Settings, script: Path, tmp_path: Path, reap: None
) -> None:
    await plan(
        settings,
        [
            PackageSpec(name="plain", description="desc", items=["a", "b", "c", "d"]),
            PackageSpec(
                name="odd",
                items=[
                    ItemSpec(name="flaky", specifications={"mode": "fail_once"}),
                    ItemSpec(name="hangs", specifications={"mode": "hang_once"}),
                    ItemSpec(name="huge", specifications={"mode": "huge"}),
                    ItemSpec(name="seven", specifications={"mode": "exit7"}),
                ],
            ),
        ],
        backoff_seconds=0,
    )
    proc = await anyio.run_process(
        work_cmd(
            settings,
            "r",
            "-j",
            "3",
            "--timeout",
            "3",
            "--no-retry-exit",
            "7",
            "--",
            sys.executable,
            str(script),
        ),
        env=env(tmp_path, MATRIX_MAX_CONTENT_BYTES="1000"),
        check=False,
    )
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 1, err  # the run is done, with failed items
    assert "run r (done) — 6/8 complete, 2 failed" in out, out
    engine = await Engine.open(settings)
    try:
        outcomes = {o.item: o for o in (await engine.list_outcomes(run="r")).outcomes}
        plain = outcomes["a"]
        assert plain.status == "complete" and plain.attempts == 1
        assert plain.metrics["quality_score"] == 0.75 and plain.metrics["tokens"] == 12
        assert plain.metrics["lines_generated"] == 1 and plain.metrics["bytes"] == len("plain/a attempt 1\n")
        assert plain.metrics["duration_seconds"] > 0
        data, _ = await engine.outcome_content(plain.id)
        assert data == b"plain/a attempt 1\n"
        flaky = await engine.get_outcome(outcomes["flaky"].id)
        assert flaky.status == "complete" and [h.status for h in flaky.history] == ["failed", "complete"]
        assert flaky.history[0].error == "exit status 3: transient trouble"
        hangs = await engine.get_outcome(outcomes["hangs"].id)
        assert hangs.status == "complete" and hangs.attempts == 2
        assert (hangs.history[0].error or "").startswith("timed out after 3 s; its process group was killed")
        huge = outcomes["huge"]
        assert huge.status == "failed" and huge.attempts == 1  # not retried: the cap will not change
        assert "stdout was 5000 bytes; the content limit is 1000" in (huge.error_message or "")
        seven = outcomes["seven"]
        assert seven.status == "failed" and seven.attempts == 1 and seven.error_message == "exit status 7"
        await assert_consistent(engine)
    finally:
        await engine.close()
    grandchildren = child_pids(tmp_path)
    assert grandchildren and not any(alive(pid) for pid in grandchildren)  # the whole group was killed


async def test_work_exit_status_and_bad_arguments(settings: Settings, script: Path, tmp_path: Path) -> None:
    await plan(settings, [PackageSpec(name="p", items=["a", "b"]), PackageSpec(name="q", items=["c"])])
    only_p = await anyio.run_process(
        work_cmd(settings, "r", "--package", "p", "--", sys.executable, str(script)),
        env=env(tmp_path),
        check=False,
    )
    assert only_p.returncode == 0, only_p.stderr.decode()  # its package is done with no failure
    rest = await anyio.run_process(
        work_cmd(settings, "r", "--", sys.executable, str(script)), env=env(tmp_path), check=False
    )
    assert rest.returncode == 0 and "3/3 complete" in rest.stdout.decode()
    for args, message in (
        (["nope", "--", "true"], "run: unknown run"),
        (["r", "--package", "zz", "--", "true"], "package"),
        (["r"], "COMMAND"),
        (["r", "-j", "0", "--", "true"], "-j/--jobs"),
        (["r", "--no-retry-exit", "x", "--", "true"], "--no-retry-exit"),
        (["r", "--", "no-such-command-here"], "not found"),
    ):
        bad = await anyio.run_process(work_cmd(settings, *args), env=env(tmp_path), check=False)
        assert bad.returncode != 0 and message in bad.stderr.decode(), (args, bad.stderr)
        assert "Traceback" not in bad.stderr.decode()


async def test_leases_are_heartbeated_while_a_command_runs(
    settings: Settings, script: Path, tmp_path: Path
) -> None:
    await plan(settings, [PackageSpec(name="p", items=["a", "b"])], lease_seconds=1)
    proc = await anyio.run_process(
        work_cmd(settings, "r", "-j", "2", "--", sys.executable, str(script)),
        env=env(tmp_path, MODE="longer_than_the_lease"),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    engine = await Engine.open(settings)
    try:
        for o in (await engine.list_outcomes(run="r")).outcomes:
            # 3 s of work under a 1 s lease: still the first attempt, never taken back
            assert (
                o.status == "complete" and o.attempts == 1 and o.duration_seconds and o.duration_seconds > 2.5
            )
    finally:
        await engine.close()


async def test_two_work_processes_drain_one_run_together(
    settings: Settings, script: Path, tmp_path: Path
) -> None:
    """Several `work` processes (on several hosts, with PostgreSQL) share a run: each item runs once."""
    await plan(settings, [PackageSpec(name=f"p{n}", items=[f"i{k}" for k in range(10)]) for n in range(3)])
    results: list[subprocess.CompletedProcess[bytes]] = []

    async def one(name: str) -> None:
        results.append(
            await anyio.run_process(
                work_cmd(settings, "r", "-j", "3", "--worker", name, "--", sys.executable, str(script)),
                env=env(tmp_path),
                check=False,
            )
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "host-a")
        tg.start_soon(one, "host-b")
    assert [r.returncode for r in results] == [0, 0], [r.stderr.decode()[-500:] for r in results]
    runs_per_item = [len(m.read_text().split()) for m in (tmp_path / "marks").iterdir()]
    assert len(runs_per_item) == 30 and set(runs_per_item) == {1}  # each command ran once
    engine = await Engine.open(settings)
    try:
        outcomes = (await engine.list_outcomes(run="r")).outcomes
        assert {o.status for o in outcomes} == {"complete"} and {o.attempts for o in outcomes} == {1}
        await assert_consistent(engine)
    finally:
        await engine.close()


async def wait_generating(settings: Settings, n: int, timeout: float = 60) -> None:
    engine = await Engine.open(settings)
    try:
        deadline = time.monotonic() + timeout
        while (await engine.get_run("r")).counts.generating < n:
            assert time.monotonic() < deadline, "work never started its commands"
            await anyio.sleep(0.1)
    finally:
        await engine.close()


async def finish_and_check(settings: Settings, script: Path, tmp_path: Path, total: int) -> None:
    """A second `work` with a quick command completes everything; each item exactly once."""
    again = await anyio.run_process(
        work_cmd(settings, "r", "-j", "4", "--", sys.executable, str(script)),
        env=env(tmp_path, MODE="ok"),
        check=False,
    )
    assert again.returncode == 0, again.stderr.decode()
    engine = await Engine.open(settings)
    try:
        run = await engine.get_run("r")
        assert run.state == "done" and run.counts.complete == total
        for o in (await engine.list_outcomes(run="r")).outcomes:
            history = (await engine.get_outcome(o.id)).history
            assert [h.status for h in history].count("complete") == 1
        await assert_consistent(engine)
    finally:
        await engine.close()


async def test_sigterm_stops_claiming_kills_after_grace_and_loses_nothing(
    settings: Settings, script: Path, tmp_path: Path, reap: None
) -> None:
    await plan(settings, [PackageSpec(name="p", items=[f"i{n}" for n in range(5)])], backoff_seconds=0)
    proc = subprocess.Popen(
        work_cmd(settings, "r", "-j", "2", "--grace", "0.5", "--", sys.executable, str(script)),
        env=env(tmp_path, MODE="slow"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        await wait_generating(settings, 2)
        for _ in range(600):  # the commands' own children started too
            if len(child_pids(tmp_path)) >= 2:
                break
            await anyio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=60))
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()
    assert "SIGTERM: no new items" in err.decode()
    assert not any(alive(pid) for pid in child_pids(tmp_path))  # their process groups were killed
    engine = await Engine.open(settings)
    try:
        run = await engine.get_run("r")
        assert run.counts.generating == 0 and run.counts.pending == 5  # failed retryable, nothing held
        stopped = [o for o in (await engine.list_outcomes(run="r")).outcomes if o.attempts == 1]
        assert len(stopped) == 2 and all("killed (interrupted)" in (o.error_message or "") for o in stopped)
    finally:
        await engine.close()
    await finish_and_check(settings, script, tmp_path, 5)


async def test_sigkill_of_work_loses_nothing(
    settings: Settings, script: Path, tmp_path: Path, reap: None
) -> None:
    await plan(settings, [PackageSpec(name="p", items=[f"i{n}" for n in range(4)])], lease_seconds=2)
    proc = subprocess.Popen(
        work_cmd(settings, "r", "-j", "2", "--", sys.executable, str(script)),
        env=env(tmp_path, MODE="slow"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_generating(settings, 2)
    finally:
        proc.kill()  # SIGKILL: no chance to report or release anything
        proc.wait()
    engine = await Engine.open(settings)
    try:
        assert (await engine.get_run("r")).counts.generating == 2  # held until the leases expire
    finally:
        await engine.close()
    await finish_and_check(settings, script, tmp_path, 4)  # the leases expire; the items are done once


def test_work_help_is_shown(tmp_path: Path) -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "matrix_mcp", "work", "--help"], capture_output=True, text=True, check=True
    )
    assert "-- COMMAND" in shown.stdout and "--no-retry-exit" in shown.stdout


async def test_work_prints_why_it_waits_and_stops_when_only_a_retry_can_help(
    settings: Settings, script: Path, tmp_path: Path
) -> None:
    """Two slots: one runs x under the lock key, the other waits (`locked`, said once); y follows under the
    key; q waits for all of p. z fails for good and, with on_dependency_failure=block, w stays blocked with
    nothing in progress: `work` says so and stops. On each backend."""
    packages = [
        PackageSpec(
            name="p",
            items=[
                ItemSpec(name="x", locks=["file:db.py"], specifications={"mode": "longer_than_the_lease"}),
                ItemSpec(name="y", locks=["file:db.py"]),
            ],
        ),
        PackageSpec(
            name="q",
            items=[
                ItemSpec(name="z", after=["p/*"], specifications={"mode": "exit7"}),
                ItemSpec(name="w", after=["z"]),
            ],
        ),
    ]
    engine = await Engine.open(settings)
    try:
        await engine.plan_run("r", packages=packages, policy=RunPolicy(on_dependency_failure="block"))
    finally:
        await engine.close()
    done = await anyio.run_process(
        work_cmd(settings, "r", "-j", "2", "--no-retry-exit", "7", "--", sys.executable, str(script)),
        env=env(tmp_path),
        check=False,
    )
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert err.count("claim: locked — the ready items need lock keys another lease holds") == 1, err
    assert err.count("claim: blocked — the items left wait for dependencies that failed") == 1, err
    assert "1 blocked" in done.stdout.decode()
    engine = await Engine.open(settings)
    try:
        status = await engine.run_status("r")
        assert (status.counts.complete, status.counts.failed, status.counts.blocked) == (2, 1, 1)
        await assert_consistent(engine)
    finally:
        await engine.close()
