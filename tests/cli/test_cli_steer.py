"""The command line plans and steers: `plan` from a file (JSON, YAML, CSV, text) or --package/--items,
`pause`, `resume`, `cancel`, `retry`, and `--json` on the commands that print tables — over a temporary
SQLite store, through `main` as the console script calls it."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from matrix_mcp.cli.main import TERMINAL_HINT, _parser, main
from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine

BIN = Path(sys.executable).parent


class Cli:
    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.db = tmp_path / "m.db"
        self.artifacts = tmp_path / "a"
        self.tmp = tmp_path
        self.capsys = capsys

    def __call__(self, *args: str) -> str:
        """Run a command that succeeds; its stdout."""
        self.capsys.readouterr()
        try:
            main([*self.flags(), *args])
        except SystemExit as exc:  # a command that returns a code exits with it; 0 is success
            assert not exc.code, (exc.code, self.capsys.readouterr())
        return self.capsys.readouterr().out

    def flags(self) -> list[str]:
        return ["--database-url", f"sqlite:///{self.db}", "--artifacts-dir", str(self.artifacts)]

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json"))

    def fails(self, *args: str) -> str:
        """Run a command that fails with one line; that line."""
        self.capsys.readouterr()
        with pytest.raises(SystemExit) as raised:
            main([*self.flags(), *args])
        out, err = self.capsys.readouterr()
        message = str(raised.value.code) if isinstance(raised.value.code, str) else err.strip()
        assert raised.value.code and out == "", (raised.value.code, out)
        assert "\n" not in message.strip() and "Traceback" not in message, message
        return message

    def file(self, name: str, text: str) -> str:
        path = self.tmp / name
        path.write_text(text, encoding="utf-8")
        return str(path)

    def engine(self) -> Any:
        return Engine.open(Settings(database_url=f"sqlite:///{self.db}", artifacts_dir=self.artifacts))


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(tmp_path, capsys)


def test_plan_from_package_and_items_is_idempotent(cli: Cli) -> None:
    out = cli("plan", "r", "--package", "docs", "--items", "a, b,c")
    assert out.strip() == "planned run 'r': 1 package(s), 3 item(s)"
    assert cli("plan", "r", "--package", "docs", "--items", "a,b,c").strip() == (
        "run 'r' already has every item: nothing added"
    )
    added = cli.json("plan", "r", "--package", "tests", "--items", "x")
    assert added["created"] is False and added["added_packages"] == ["tests"] and added["added_items"] == 1
    status = cli.json("status", "r")
    assert status["counts"]["total"] == 4 and [p["package"] for p in status["packages"]] == ["docs", "tests"]


def test_plan_from_json_yaml_csv_and_text(cli: Cli) -> None:
    plan = {
        "goal": "ship",
        "max_attempts": 1,
        "packages": [
            {"name": "p", "description": "the p", "items": ["a", {"name": "b", "specifications": {"k": 1}}]}
        ],
    }
    made = cli.json("plan", "j", "--from", cli.file("plan.json", json.dumps(plan)))
    assert made["created"] is True and made["items"] == 2 and made["run"]["policy"]["max_attempts"] == 1
    assert made["run"]["goal"] == "ship"
    pytest.importorskip("yaml")
    yaml_text = "goal: ship\npackages:\n  - name: p\n    items: [a, b]\n  - name: q\n    items: [c]\n"
    assert cli.json("plan", "y", "--from", cli.file("plan.yaml", yaml_text))["items"] == 3
    csv_text = 'package,item\np,a\np,b\n\nq,"c, with a comma"\np,a\n'
    from_csv = cli.json("plan", "c", "--from", cli.file("plan.csv", csv_text))
    assert from_csv["items"] == 3 and from_csv["packages"] == 2
    text = "# the docs\np/a\np/b/c\n\nq/d\n"
    assert cli.json("plan", "t", "--from", cli.file("plan.txt", text))["items"] == 3

    async def outcomes(run: str) -> list[tuple[str, str]]:
        engine = await cli.engine()
        try:
            page = await engine.list_outcomes(run=run, limit=100)
            return [(o.package, o.item) for o in page.outcomes]
        finally:
            await engine.close()

    assert anyio.run(outcomes, "c") == [("p", "a"), ("p", "b"), ("q", "c, with a comma")]
    assert anyio.run(outcomes, "t") == [("p", "a"), ("p", "b/c"), ("q", "d")]
    # planned again from the same file: nothing new
    assert cli.json("plan", "t", "--from", cli.file("plan.txt", text))["added_items"] == 0


def test_bad_plan_files_name_the_line_and_the_field(cli: Cli) -> None:
    bad_json = cli.file("bad.json", '{\n  "packages": [\n    {"name": "p", "items": ["a",]}\n  ]\n}')
    assert cli.fails("plan", "r", "--from", bad_json).startswith(
        f"matrix-mcp: {bad_json} line 3: not valid JSON"
    )
    shape = cli.file("shape.json", json.dumps({"packages": [{"name": "p", "items": ["a", 7]}]}))
    assert cli.fails("plan", "r", "--from", shape).startswith(f"matrix-mcp: {shape}: packages[0].items[1]: ")
    unknown = cli.file("unknown.json", json.dumps({"packages": [], "retries": 3}))
    assert cli.fails("plan", "r", "--from", unknown) == (
        f"matrix-mcp: {unknown}: retries: unknown field; a plan takes name, goal, packages, outcome_type, "
        "lease_seconds, max_attempts, backoff_seconds, outcome_schema, max_concurrent, on_dependency_failure, "
        "review, max_cost_usd, max_tokens"
    )
    attempts = cli.file("attempts.json", json.dumps({"packages": [], "max_attempts": 0}))
    assert cli.fails("plan", "r", "--from", attempts).startswith(f"matrix-mcp: {attempts}: max_attempts: ")
    other = cli.file("other.json", json.dumps({"name": "s", "packages": []}))
    assert "name: 's' is not the run given, 'r'" in cli.fails("plan", "r", "--from", other)
    csv_file = cli.file("bad.csv", "package,item\np,a\np,b,extra\n")
    assert cli.fails("plan", "r", "--from", csv_file) == (
        f"matrix-mcp: {csv_file} line 3: expected 2 columns, package,item; found 3"
    )
    empty_item = cli.file("empty.csv", "p,a\nq,\n")
    assert cli.fails("plan", "r", "--from", empty_item) == f"matrix-mcp: {empty_item} line 2: item: empty"
    text = cli.file("bad.txt", "p/a\n\njust-a-name\n")
    assert cli.fails("plan", "r", "--from", text) == (
        f"matrix-mcp: {text} line 3: expected package/item, found 'just-a-name'"
    )
    missing = str(cli.tmp / "nope.json")
    assert cli.fails("plan", "r", "--from", missing).startswith(f"matrix-mcp: {missing}: ")
    # the engine's own checks, as the tool makes them
    dup = cli.file("dup.json", json.dumps({"packages": [{"name": "p", "items": ["a", "a"]}]}))
    assert "packages[0].items[1]" in cli.fails("plan", "r", "--from", dup)
    assert (
        cli.fails("plan", "r", "--package", "p")
        == "matrix-mcp: --items: required with --package (e.g. --items a,b,c)"
    )
    assert "--items: an empty item name" in cli.fails("plan", "r", "--package", "p", "--items", "a,,b")
    assert not cli.db.exists() or cli.json("status")["runs"] == []  # nothing was planned


STAGED = {
    "goal": "ship",
    "max_concurrent": 3,
    "on_dependency_failure": "block",
    "packages": [
        {"name": "schema", "priority": 10, "items": ["users", {"name": "points", "after": ["users"]}]},
        {
            "name": "services",
            "after": ["schema"],
            "max_concurrent": 1,
            "items": [
                {"name": "accounts", "locks": ["file:src/db.py"], "priority": 5},
                {"name": "notify", "after": ["services/accounts"]},
            ],
        },
    ],
}


def test_plan_files_carry_dependencies_priorities_locks_and_caps(cli: Cli) -> None:
    """JSON and YAML plan files take the plan_run shape with its policy fields; a CSV header may add the
    item columns after, priority and locks; `status` then shows the blocked items and what packages wait on."""
    said = cli("plan", "t", "--from", cli.file("staged.json", json.dumps(STAGED)))
    assert said.strip() == "planned run 't': 2 package(s), 4 item(s), 3 blocked (waiting for dependencies)"
    made = cli.json("plan", "j", "--from", cli.file("staged.json", json.dumps(STAGED)))
    policy = made["run"]["policy"]
    assert (policy["max_concurrent"], policy["on_dependency_failure"]) == (3, "block")
    assert (made["run"]["counts"]["pending"], made["run"]["counts"]["blocked"]) == (1, 3)
    status = cli.json("status", "j")
    services = next(p for p in status["packages"] if p["package"] == "services")
    assert (services["after"], services["max_concurrent"], services["blocked_items"]) == (["schema"], 1, 2)
    text = cli("status", "j")
    assert "1 pending, 3 blocked" in text and "blocked  after" in text
    assert cli("status").splitlines()[0].split()[:7] == [
        "run",
        "state",
        "complete",
        "generating",
        "pending",
        "blocked",
        "failed",
    ]
    pytest.importorskip("yaml")
    yaml_text = (
        "on_dependency_failure: cancel\npackages:\n  - name: a\n    items: [x]\n"
        "  - name: b\n    after: [a]\n    priority: 2\n    items:\n"
        "      - {name: y, locks: ['api:github'], priority: -1}\n"
    )
    from_yaml = cli.json("plan", "y", "--from", cli.file("staged.yaml", yaml_text))
    assert from_yaml["run"]["counts"]["blocked"] == 1
    csv_text = "package,item,after,priority,locks\na,x,,,\nb,y,a/x; a/*,3,file:a.py;api:github\n"
    from_csv = cli.json("plan", "c", "--from", cli.file("staged.csv", csv_text))
    assert (from_csv["items"], from_csv["run"]["counts"]["blocked"]) == (2, 1)

    async def detail(run: str, item: str) -> Any:
        engine = await cli.engine()
        try:
            page = await engine.list_outcomes(run=run, limit=100)
            found = next(o for o in page.outcomes if o.item == item)
            return await engine.get_outcome(found.id)
        finally:
            await engine.close()

    y = anyio.run(detail, "c", "y")
    assert (y.status, y.priority, y.locks) == ("blocked", 3, ["file:a.py", "api:github"])
    assert set(y.waits_for) == {"a/x", "a/*"}


def test_plan_files_read_the_policy_fields(cli: Cli) -> None:
    """JSON (and YAML) plan files take the run's and the packages' and items' policy fields; a CSV header
    may add the item columns after, priority and locks (lists separated by `;`)."""
    from matrix_mcp.cli.plans import read_plan
    from matrix_mcp.models import ItemSpec

    staged = {
        "max_concurrent": 3,
        "on_dependency_failure": "block",
        "packages": [
            {"name": "a", "priority": 2, "max_concurrent": 1, "items": ["x"]},
            {
                "name": "b",
                "after": ["a"],
                "items": [{"name": "y", "after": ["a/x"], "priority": -1, "locks": ["k"]}],
            },
        ],
    }
    plan = read_plan("r", cli.file("staged.json", json.dumps(staged)))
    assert (plan.policy.max_concurrent, plan.policy.on_dependency_failure) == (3, "block")
    a, b = plan.packages
    assert (a.priority, a.max_concurrent, b.after) == (2, 1, ["a"])
    assert b.items == [ItemSpec(name="y", after=["a/x"], priority=-1, locks=["k"])]
    csv_text = "package,item,after,priority,locks\na,x,,,\nb,y,a/x; a/* ,3,file:a.py;api:github\nb,y,,,\n"
    a, b = read_plan("r", cli.file("staged.csv", csv_text)).packages
    assert a.items == ["x"]  # no policy cells: a plain name
    assert b.items == [
        ItemSpec(name="y", after=["a/x", "a/*"], priority=3, locks=["file:a.py", "api:github"])
    ]
    reordered = read_plan("r", cli.file("reordered.csv", "item,package\nx,a\n")).packages
    assert [(p.name, p.items) for p in reordered] == [("a", ["x"])]


def test_bad_policy_in_plan_files_is_one_line_naming_the_field(cli: Cli) -> None:
    cap = cli.file("cap.json", json.dumps({"packages": [{"name": "p", "max_concurrent": 0, "items": ["a"]}]}))
    assert cli.fails("plan", "r", "--from", cap).startswith(
        f"matrix-mcp: {cap}: packages[0].max_concurrent: "
    )
    mode = cli.file("mode.json", json.dumps({"packages": [], "on_dependency_failure": "ignore"}))
    assert cli.fails("plan", "r", "--from", mode).startswith(f"matrix-mcp: {mode}: on_dependency_failure: ")
    column = cli.file("column.csv", "package,item,depends\np,a,\n")
    assert cli.fails("plan", "r", "--from", column) == (
        f"matrix-mcp: {column} line 1: depends: unknown column; a CSV plan takes package, item, after, "
        "priority, locks"
    )
    priority = cli.file("priority.csv", "item,package,priority\na,p,high\n")
    assert cli.fails("plan", "r", "--from", priority).startswith(f"matrix-mcp: {priority} line 2: priority: ")
    assert not cli.db.exists() or cli.json("status")["runs"] == []  # nothing was planned


def test_yaml_without_pyyaml_is_one_line(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml raises ImportError
    path = cli.file("plan.yml", "packages: []\n")
    assert cli.fails("plan", "r", "--from", path) == (
        f"matrix-mcp: {path}: reading YAML needs PyYAML installed (pip install pyyaml); or give the plan as JSON"
    )


def test_pause_resume_cancel_and_retry(cli: Cli) -> None:
    cli("plan", "r", "--package", "p", "--items", "a,b,c")
    assert cli("pause", "r").startswith("run 'r' paused: now paused; 0/3 complete, 3 pending")
    assert cli.json("pause", "r")["state"] == "paused"  # idempotent
    assert cli.json("resume", "r")["state"] == "active"

    async def fail_one() -> None:
        engine = await cli.engine()
        try:
            claimed = (await engine.claim_items("r", worker="w", limit=2)).items
            for item in claimed:
                await engine.fail_item(
                    item.outcome_id, lease_token=item.lease_token, error="boom", retryable=False
                )
        finally:
            await engine.close()

    anyio.run(fail_one)
    assert cli("retry", "r", "--package", "p").strip() == "run 'r': re-queued 2 failed item(s) of package 'p'"
    assert cli.json("retry", "r") == {"run": "r", "requeued": 0, "outcome_ids": []}
    cancelled = cli.json("cancel", "r")
    assert cancelled["state"] == "cancelled" and cancelled["counts"]["cancelled"] == 3
    assert "cancelled" in cli.fails("retry", "r")
    assert "unknown run 'nope'" in cli.fails("pause", "nope")


def test_policy_changes_budgets_review_and_limits(cli: Cli) -> None:
    from matrix_mcp.cli.plans import read_plan

    plan = read_plan(
        "r", cli.file("p.json", json.dumps({"review": "required", "max_cost_usd": 2, "packages": []}))
    )
    assert (plan.policy.review, plan.policy.max_cost_usd, plan.policy.max_tokens) == ("required", 2, None)
    cli("plan", "r", "--package", "p", "--items", "a,b")
    out = cli("policy", "r", "--max-cost-usd", "1.5", "--review", "required", "--max-concurrent", "2")
    assert out.strip() == (
        "run 'r' policy updated: review required, budgets max_cost_usd 1.5, max_concurrent 2, lease 300 s; now active"
    )
    policy = cli.json("policy", "r", "--clear", "max_cost_usd", "--max-tokens", "1000")["policy"]
    assert (policy.get("max_cost_usd"), policy["max_tokens"], policy["review"]) == (None, 1000, "required")
    assert "max_concurrent: must be between 1" in cli.fails("policy", "r", "--max-concurrent", "0")


def test_steering_a_store_that_does_not_exist_creates_none(cli: Cli) -> None:
    for command in ("pause", "resume", "cancel", "retry"):
        assert cli.fails(command, "r") == f"matrix-mcp: unknown run 'r': there is no store at {cli.db}"
    assert not cli.db.exists()
    assert cli.json("status") == {"runs": []}
    assert not cli.db.exists()


def test_json_on_every_table(cli: Cli) -> None:
    cli("plan", "r", "--package", "p", "--items", "a")
    runs = cli.json("status")["runs"]
    assert [(r["name"], r["counts"]["pending"]) for r in runs] == [("r", 1)]
    checked = cli.json("status", "r", "--check")
    assert checked["run"] == "r" and checked["counters"] == {"consistent": True, "mismatches": []}
    created = cli("keys", "create", "ops", "--scope", "read")
    key = created.strip().splitlines()[0]
    cli("keys", "revoke", "ops")
    listed = cli.json("keys", "list")
    assert [(k["name"], k["scopes"], k["active"]) for k in listed["keys"]] == [
        ("ops", ["matrix:read"], False)
    ]
    assert listed["keys"][0]["revoked_at"] and key not in json.dumps(listed)


def test_every_positional_argument_has_help() -> None:
    import argparse

    def walk(parser: argparse.ArgumentParser, path: str) -> list[str]:
        missing = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    missing += walk(child, f"{path} {name}")
            elif not action.option_strings and not action.help:
                missing.append(f"{path} {action.dest}")
        return missing

    assert walk(_parser(), "matrix-mcp") == []


def test_the_bare_command_on_a_terminal_says_what_it_is(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "MATRIX_DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}",
        "MATRIX_ARTIFACTS_DIR": str(tmp_path / "a"),
    }
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            [str(BIN / "matrix-mcp")], stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        os.close(terminal)
        os.write(controller, b"\x04")  # Ctrl-D: end of input, as a person would end it
        _, err = proc.communicate(timeout=60)
    finally:
        os.close(controller)
    lines = err.decode().splitlines()
    assert lines[0] == TERMINAL_HINT, err
    assert "matrix-mcp demo" in lines[0] and "--help" in lines[0]
    # not on a terminal (a host's pipe): nothing is said, stdio is served as ever
    piped = subprocess.run(
        [str(BIN / "matrix-mcp")], stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=60
    )
    assert TERMINAL_HINT not in piped.stderr.decode()
