"""What a new user meets first: the shipped .mcp.json in an outside client, bad settings, CLI errors, the
demo's closing hint, and the protocol error codes of bad requests (issue 10)."""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp.client import Client
from mcp.shared.exceptions import MCPError

from matrix_mcp.config import Settings
from matrix_mcp.mcp.server import create_server
from tests.conftest import PG_URL, require_postgres

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent.parent
BIN = Path(sys.executable).parent  # the venv's console scripts: matrix-mcp, matrix-schema-mcp
INSPECTOR = "@modelcontextprotocol/inspector@2.12.0"


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> Any:
    return subprocess.run(
        [str(BIN / "matrix-mcp"), *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def one_error_line(proc: Any) -> str:
    """A failed command: non-zero exit, nothing on stdout, exactly one line on stderr (no traceback)."""
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    line: str = lines[0]
    return line


# ---- 1. the shipped .mcp.json, through the MCP Inspector CLI -----------------------------------------


def inspector(workdir: Path, server: str, *args: str) -> Any:
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "MCP_INSPECTOR_SECRET_STORE": "memory",
    }
    for name in list(env):  # the shipped config alone decides; nothing inherited points elsewhere
        if name.startswith(("MATRIX_", "DB_")) or name == "DATABASE_URL":
            del env[name]
    command = ["npx", "-y", INSPECTOR, "--cli", "--config", ".mcp.json", "--server", server, *args]
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_shipped_mcp_json_works_in_the_inspector(tmp_path: Path) -> None:
    """The Inspector passes `env` values literally: the shipped file must work as is, for both servers,
    tools/list and one tools/call each; and the tool schemas raise no portability warnings."""
    if shutil.which("npx") is None:
        pytest.skip("npx (Node.js) is not installed")
    shutil.copy(ROOT / ".mcp.json", tmp_path / ".mcp.json")
    listed = inspector(tmp_path, "matrix", "--method", "tools/list")
    assert listed.returncode == 0, listed.stderr[-3000:]
    names = {t["name"] for t in json.loads(listed.stdout)["tools"]}
    assert {"plan_run", "claim_items", "complete_item", "analyze_schema"} <= names
    assert "portability" not in listed.stderr.lower(), listed.stderr[-3000:]
    plan = {"name": "r", "packages": [{"name": "p", "items": ["a", "b"]}]}
    planned = inspector(
        tmp_path,
        "matrix",
        "--method",
        "tools/call",
        "--tool-name",
        "plan_run",
        "--tool-args-json",
        json.dumps(plan),
    )
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert json.loads(planned.stdout)["structuredContent"]["items"] == 2
    assert (tmp_path / ".matrix" / "matrix.db").is_file()  # the default store, where the config says

    schema_list = inspector(tmp_path, "database-schema", "--method", "tools/list")
    assert schema_list.returncode == 0, schema_list.stderr[-3000:]
    assert "analyze_schema" in {t["name"] for t in json.loads(schema_list.stdout)["tools"]}
    assert "portability" not in schema_list.stderr.lower(), schema_list.stderr[-3000:]
    analysed = inspector(
        tmp_path,
        "database-schema",
        "--method",
        "tools/call",
        "--tool-name",
        "analyze_schema",
        "--tool-args-json",
        json.dumps({"detail": "names"}),
    )
    assert analysed.returncode == 0, analysed.stderr[-3000:]
    tables = {t["name"] for t in json.loads(analysed.stdout)["structuredContent"]["tables"]}
    assert {"runs", "outcomes"} <= tables  # the schema server reads the store the matrix server wrote


def test_shipped_mcp_json_has_no_expansion_syntax() -> None:
    text = (ROOT / ".mcp.json").read_text()
    assert "${" not in text
    servers = json.loads(text)["mcpServers"]
    assert set(servers) == {"matrix", "database-schema"}


@pytest.mark.parametrize(
    ("variable", "command"),
    [
        ("MATRIX_DATABASE_URL", ["matrix-mcp"]),
        ("MATRIX_ARTIFACTS_DIR", ["matrix-mcp"]),
        ("MATRIX_MAX_PAGE_SIZE", ["matrix-mcp", "status"]),
        ("DB_HOST", ["matrix-mcp", "status"]),
        ("DATABASE_URL", ["matrix-schema-mcp"]),
    ],
)
def test_unexpanded_placeholder_is_refused_in_one_line(
    variable: str, command: list[str], tmp_path: Path
) -> None:
    """What a host that does not expand `${…}` passes: refused at start, one line naming the variable,
    non-zero exit, nothing created (no folder literally named `${…}`)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MATRIX_", "DB_")) and k != "DATABASE_URL"
    }
    env[variable] = "${" + variable + ":-x}"
    proc = subprocess.run(
        [str(BIN / command[0]), *command[1:]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    line = one_error_line(proc)
    assert variable in line and "placeholder" in line
    assert list(tmp_path.iterdir()) == []


def test_placeholder_in_a_flag_is_refused(tmp_path: Path) -> None:
    line = one_error_line(cli("status", "--artifacts-dir", "${HOME}/x", cwd=tmp_path))
    assert "--artifacts-dir" in line and "placeholder" in line


# ---- 3. CLI errors ---------------------------------------------------------------------------------


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    line = one_error_line(cli("export", "nosuchrun", "--format", "csv", cwd=tmp_path))
    assert line == "matrix-mcp: unknown run 'nosuchrun'"
    for args in (["--database-url", "bogus://x", "status"], ["status", "--database-url", "bogus://x"]):
        line = one_error_line(cli(*args, cwd=tmp_path))
        assert "--database-url" in line and "unsupported database URL 'bogus://x'" in line
    line = one_error_line(cli("--database-url", "bogus://x", "serve", cwd=tmp_path))
    assert "unsupported database URL" in line
    line = one_error_line(cli("status", cwd=tmp_path, env={"MATRIX_SCHEMA_DATABASE_URL": "mysql://x"}))
    assert line.startswith("matrix-mcp: MATRIX_SCHEMA_DATABASE_URL: unsupported database URL")


def test_usage_errors_are_one_line_too(tmp_path: Path) -> None:
    line = one_error_line(cli("status", "--bogus", cwd=tmp_path))
    assert "unrecognized arguments: --bogus" in line and "--help" in line
    assert "required: run" in one_error_line(cli("export", cwd=tmp_path))
    assert "--log-level" in one_error_line(cli("--log-level", "loud", "status", cwd=tmp_path))
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MATRIX_", "DB_")) and k != "DATABASE_URL"
    }
    schema = subprocess.run(
        [str(BIN / "matrix-schema-mcp")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert "no database" in one_error_line(schema)


def test_schema_server_checks_its_database_at_start(tmp_path: Path) -> None:
    """Like matrix-mcp, the schema server opens its database before serving: a missing file or an
    unreachable server is one line at start-up (password redacted), not an error at the first tool call."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MATRIX_", "DB_")) and k != "DATABASE_URL"
    }
    missing = tmp_path / "nope" / "missing.db"
    proc = subprocess.run(
        [str(BIN / "matrix-schema-mcp"), "--database-url", f"sqlite:///{missing}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    line = one_error_line(proc)
    assert line.startswith("matrix-schema-mcp: cannot read database") and "missing.db" in line
    closed = "postgresql://who:hunter2@127.0.0.1:9/db?connect_timeout=2"  # port 9: nothing listens
    proc = subprocess.run(
        [str(BIN / "matrix-schema-mcp"), "--database-url", closed],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    line = one_error_line(proc)
    assert line.startswith("matrix-schema-mcp: cannot read database") and "hunter2" not in proc.stderr


def test_global_flags_are_accepted_after_the_command(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    before = cli("--database-url", db, "status", "r", cwd=tmp_path)
    after = cli("status", "r", "--database-url", db, "--log-level", "ERROR", cwd=tmp_path)
    assert before.returncode == after.returncode == 1
    assert before.stderr == after.stderr
    assert "elsewhere.db" in after.stderr  # the flag after the command was used, not the default store


def test_status_header_names_every_column(tmp_path: Path) -> None:
    async def plan() -> None:
        from matrix_mcp.engine import Engine
        from matrix_mcp.models import PackageSpec

        engine = await Engine.open(Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}"))
        try:
            await engine.plan_run("svc", packages=[PackageSpec(name="p", items=["a", "b"])])
            await engine.claim_items("svc", worker="w")
        finally:
            await engine.close()

    import anyio

    anyio.run(plan)
    listing = cli("status", "--database-url", f"sqlite:///{tmp_path / 'm.db'}", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    header, row = listing.stdout.splitlines()
    assert header.split() == [
        "run",
        "state",
        "complete",
        "generating",
        "pending",
        "blocked",
        "failed",
        "cancelled",
    ]
    assert row.split() == ["svc", "active", "0/2", "1", "1", "0", "0", "0"]


SERVE_HTTP = "serve --transport streamable-http --port 1"  # never listens: the store check comes first


@pytest.mark.postgres
@pytest.mark.parametrize("command", ["status", "serve", SERVE_HTTP])
def test_postgres_refusals_are_reported_at_once_as_what_they_are(command: str, tmp_path: Path) -> None:
    require_postgres()
    from urllib.parse import urlsplit

    host = urlsplit(PG_URL).hostname
    port = urlsplit(PG_URL).port or 5432
    role = one_error_line(
        cli(*command.split(), "--database-url", f"postgresql://nobody_here@{host}:{port}/test", cwd=tmp_path)
    )
    assert f"{host}:{port}" in role and 'role "nobody_here" does not exist' in role and "retry" not in role
    database = one_error_line(
        cli(
            *command.split(),
            "--database-url",
            f"postgresql://postgres@{host}:{port}/no_such_db",
            cwd=tmp_path,
        )
    )
    assert 'database "no_such_db" does not exist' in database and "retry" not in database


@pytest.mark.parametrize("command", ["status", "serve", SERVE_HTTP])
def test_unreachable_postgres_is_one_line_naming_host_and_port(command: str, tmp_path: Path) -> None:
    """Port 1 on loopback: refused at once by the kernel, retried for a bounded few seconds, then one line
    naming host and port — never the password, no psycopg.pool WARNING lines."""
    proc = cli(
        *command.split(), "--database-url", "postgresql://me:hunter2secret@127.0.0.1:1/x", cwd=tmp_path
    )
    line = one_error_line(proc)
    assert "cannot reach PostgreSQL at 127.0.0.1:1" in line
    assert "hunter2secret" not in proc.stderr and "WARNING" not in proc.stderr


@pytest.mark.postgres
@pytest.mark.slow
def test_demo_hint_prints_a_command_that_works(postgres_database: str, tmp_path: Path) -> None:
    demo = cli("demo", "--run", "hint", "--database-url", postgres_database, cwd=tmp_path, timeout=300)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    hint = demo.stdout.strip().splitlines()[-1].split("details: ", 1)[1]
    command = shlex.split(hint)
    assert command[0] == "matrix-mcp" and "--database-url" in command
    followed = cli(*command[1:], cwd=tmp_path)
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout.startswith("run hint (done)")


# ---- 3 and 6: protocol errors ------------------------------------------------------------------------


@pytest.fixture(params=["auto", "legacy"])
async def client(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")
    async with Client(create_server(settings), mode=request.param) as c:
        await c.call_tool("plan_run", {"name": "r", "packages": [{"name": "p", "items": ["a"]}]})
        yield c


async def test_prompt_without_a_required_argument_is_invalid_params_and_one_log_line(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO), pytest.raises(MCPError) as err:
        await client.get_prompt("outcome_generator", {"run": "r"})
    assert err.value.code == -32602 and "worker" in err.value.message
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(records) == 1 and records[0].exc_info is None and "worker" in records[0].getMessage()


@pytest.mark.parametrize(
    ("uri", "named"),
    [
        ("matrix://runs/" + "x" * 10_000, "run: longer than 512 characters"),
        ("matrix://runs/r/packages/" + "p" * 10_000, "package: longer than 512 characters"),
        ("matrix://runs/x';DROP TABLE runs;--", "run: unknown run"),
        ("matrix://runs/a%0D%0Ab", "run: unknown run"),
        ("matrix://runs/a\r\nb", "run: unknown run"),
        ("matrix://runs/nope/packages/p", "run: unknown run 'nope'"),
        ("matrix://runs/r/packages/nope", "package"),
        ("matrix://outcomes/nope", "outcome_id: unknown outcome 'nope'"),
        ("matrix://outcomes/nope/content", "outcome_id"),
        ("matrix://nothing/x", "Unknown resource"),
    ],
)
async def test_bad_resource_uris_answer_protocol_codes_naming_the_problem(
    client: Client, uri: str, named: str
) -> None:
    with pytest.raises(MCPError) as err:
        await client.read_resource(uri)
    assert err.value.code == -32602, (err.value.code, err.value.message)  # not -32603 Internal error
    assert named in err.value.message and len(err.value.message) < 700


# ---- 7. packaging ------------------------------------------------------------------------------------


def test_packaging_pins_the_sdk_minor_and_uses_an_spdx_license() -> None:
    """sdk/private.py reaches into mcp 2.3 internals: the dependency stays on the tested minor. The license is
    the SPDX string (the TOML-table form is deprecated; setuptools ≥ 77 reads the string)."""
    import importlib.metadata
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"
    assert any(r.replace(" ", "").startswith("setuptools>=77") for r in project["build-system"]["requires"])
    (mcp,) = [Requirement(r) for r in project["project"]["dependencies"] if Requirement(r).name == "mcp"]
    assert Version("2.3.0") in mcp.specifier and Version("2.4.0") not in mcp.specifier
    assert Version(importlib.metadata.version("mcp")) in mcp.specifier


def test_claude_desktop_snippet_gives_complete_entries_for_both_servers() -> None:
    """Claude Desktop starts servers outside the project: each entry needs an absolute command and its own
    --database-url (the docs once showed arguments for `matrix` only)."""
    page = (ROOT / "docs" / "getting-started" / "clients.md").read_text()
    section = page.split("## Claude Desktop", 1)[1]
    block = section.split("```json", 1)[1].split("```", 1)[0]
    servers = json.loads(block)["mcpServers"]
    assert set(servers) == {"matrix", "database-schema"}
    for name, entry in servers.items():
        assert entry["command"].startswith("/"), name
        args = entry["args"]
        url = args[args.index("--database-url") + 1]
        assert url.startswith("sqlite:////"), (name, url)  # an absolute path: four slashes
    assert servers["matrix"]["args"][servers["matrix"]["args"].index("--database-url") + 1] == url
