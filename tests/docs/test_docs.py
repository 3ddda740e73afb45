"""The documentation holds: generated reference pages are current, every relative link and anchor resolves,
every `matrix-mcp` command shown parses, the quick start runs as written, and every client snippet starts a
server that initializes."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import anyio
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

from matrix_mcp import docs_gen

ROOT = Path(__file__).resolve().parent.parent.parent
BIN = Path(sys.executable).parent  # the venv's console scripts
DOCS = sorted(
    [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").rglob("*.md")]
)
FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)[^\n]*\n(.*?)^\1\s*$", re.S | re.M)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SHELLS = {"bash", "sh", "shell", "console", "zsh"}


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans, where links are links."""
    text = FENCE.sub("", text)
    return re.sub(r"(`+)(?:(?!\1).)+?\1", "", text, flags=re.S)


def blocks(text: str) -> list[tuple[str, str, str]]:
    """(language, code, the line before the fence) of every fenced block."""
    out = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        out.append((match.group(2).lower(), match.group(3), before))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link's text only
    text = re.sub(r"<[^>]+>", "", text).lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    out.update(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", text))
    return out


# ---- generated reference ---------------------------------------------------------------------------


def test_generated_reference_pages_are_current() -> None:
    """tools, resources, prompts (from the server's own listings) and the CLI (from its help) as committed."""
    stale = docs_gen.stale(ROOT)
    assert not stale, f"stale generated pages {stale}: run `python -m matrix_mcp.docs_gen` and commit them"


# ---- links -------------------------------------------------------------------------------------------


def test_every_relative_link_and_anchor_resolves() -> None:
    assert (ROOT / "docs" / "reference" / "tools.md") in DOCS and len(DOCS) > 20
    broken = []
    for doc in DOCS:
        for target in LINK.findall(prose(doc.read_text(encoding="utf-8"))):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("//"):
                continue  # http(s), mailto: not ours to check here
            path_part, _, fragment = target.partition("#")
            dest = (doc.parent / path_part).resolve() if path_part else doc
            if not dest.exists():
                broken.append(f"{rel(doc)}: {target} (no such file)")
            elif fragment and dest.is_file() and dest.suffix == ".md" and fragment not in anchors(dest):
                broken.append(f"{rel(doc)}: {target} (no heading #{fragment} in {rel(dest)})")
    assert not broken, "\n".join(broken)


def test_the_link_checker_catches_a_broken_link_and_anchor(tmp_path: Path) -> None:
    assert slug("`matrix-mcp work`: a command per item, no client to write") == (
        "matrix-mcp-work-a-command-per-item-no-client-to-write"
    )
    assert slug("Run it for a team: the HTTP service") == "run-it-for-a-team-the-http-service"
    page = tmp_path / "p.md"
    page.write_text("# Title\n\n## Same\n\n## Same\n\n```md\n## not a heading\n```\n")
    assert anchors(page) == {"title", "same", "same-1"}
    assert LINK.findall(prose("see [a](x.md#y) and `[b](not.md)` and ![c](img.png)")) == ["x.md#y", "img.png"]


PACKAGES = ("store", "http", "mcp", "engine", "cli", "schema", "integrations", "apps")
CODE_PATH = re.compile(
    r"`((?:matrix_mcp|tests|bench|docs|deploy|packaging|servers|"
    + "|".join(PACKAGES)
    + r")/[^`\s:]*)(?:::(\w+))?[^`]*`"
)


def test_every_code_path_named_in_the_docs_exists() -> None:
    """`matrix_mcp/…`, `tests/…::test_name`, `store/sqlite/work.py` (inside the package) in any page but the
    changelog (which tells history): the file exists, and so does the test or function named after `::`."""
    import ast

    seen, wrong = 0, []
    for doc in DOCS:
        if doc.name == "CHANGELOG.md":
            continue
        for path, name in CODE_PATH.findall(doc.read_text(encoding="utf-8")):
            if any(ch in path for ch in "*{<…"):
                continue  # a pattern, not a path
            if path.split("/", 1)[0] in PACKAGES and not (
                path.endswith("/") or "." in path.rsplit("/", 1)[-1]
            ):
                continue  # `http/protobuf` is a protocol; a package path names a file or a folder/
            seen += 1
            target = ROOT / path.rstrip("/")
            if path.split("/", 1)[0] in PACKAGES:
                target = ROOT / "matrix_mcp" / path.rstrip("/")
            if not target.exists():
                wrong.append(f"{rel(doc)}: {path} (no such file)")
            elif name and target.suffix == ".py":
                tree = ast.parse(target.read_text(encoding="utf-8"))
                defined = {
                    n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
                }
                if name not in defined:
                    wrong.append(f"{rel(doc)}: {path}::{name} (not defined)")
    assert seen >= 60, seen
    assert not wrong, "\n".join(wrong)


# ---- commands ----------------------------------------------------------------------------------------


def help_texts() -> dict[tuple[str, ...], str]:
    """Each command's help, from the generated CLI page (held current by the test above)."""
    text = (ROOT / "docs" / "reference" / "cli.md").read_text(encoding="utf-8")
    out = {}
    for title, body in re.findall(r"^## (matrix-mcp[\w -]*)\n\n```text\n(.*?)^```", text, re.S | re.M):
        out[tuple(title.split()[1:])] = body
    return out


def commands(code: str) -> list[list[str]]:
    """Every `matrix-mcp …` / `matrix-schema-mcp …` invocation in a shell block, as argv."""
    out = []
    joined = re.sub(r"\\\n\s*", " ", code)
    for line in joined.splitlines():
        line = re.sub(r"^\s*[$>]\s+", "", line)
        for segment in re.split(r"&&|\|\||[|;]", line):
            try:
                argv = shlex.split(segment, comments=True)
            except ValueError:
                continue
            while argv and re.match(r"^[A-Z_]+=", argv[0]):
                argv = argv[1:]  # VAR=value matrix-mcp …
            if argv and argv[0] in ("matrix-mcp", "matrix-schema-mcp"):
                out.append(argv)
    return out


def check_command(argv: list[str], texts: dict[tuple[str, ...], str]) -> str | None:
    """None when the command names existing subcommands and flags, else why not."""
    path: tuple[str, ...] = ("schema",) if argv[0] == "matrix-schema-mcp" else ()
    args = argv[1:]
    if "--" in args:
        args = args[: args.index("--")]  # `work RUN -- COMMAND`: the command's own arguments
    rest = args
    while subs := docs_gen.subcommands(texts[path]):
        found = next((i for i, arg in enumerate(rest) if arg in subs), None)
        if found is None:
            if path:  # `matrix-mcp hooks` alone; bare `matrix-mcp` serves stdio
                return f"{' '.join(argv)}: matrix-mcp {' '.join(path)} needs one of {subs}"
            break
        path, rest = (*path, rest[found]), rest[found + 1 :]
    text = texts[path]
    for arg in args:
        flag = arg.split("=", 1)[0]
        if (
            flag.startswith("-")
            and flag not in ("-h", "--help")
            and not re.search(rf"(?<![\w-]){re.escape(flag)}\b", text)
        ):
            return f"{' '.join(argv)}: no flag {flag} in matrix-mcp {' '.join(path)}".strip()
    return None


def test_every_command_shown_in_the_docs_parses() -> None:
    texts = help_texts()
    assert {(), ("serve",), ("work",), ("keys", "create"), ("hooks", "add")} <= set(texts)
    seen, wrong = 0, []
    for doc in DOCS:
        for lang, code, _ in blocks(doc.read_text(encoding="utf-8")):
            if lang not in SHELLS:
                continue
            for argv in commands(code):
                seen += 1
                problem = check_command(argv, texts)
                if problem:
                    wrong.append(f"{rel(doc)}: {problem}")
    assert seen >= 30, seen
    assert not wrong, "\n".join(wrong)


def test_the_command_checker_refuses_what_does_not_exist() -> None:
    texts = help_texts()
    assert check_command(["matrix-mcp", "status", "docs", "--check"], texts) is None
    assert check_command(["matrix-mcp", "work", "docs", "-j", "2", "--", "sh", "-c", "x --y"], texts) is None
    assert check_command(["matrix-mcp", "keys", "create", "ci", "--scope", "work"], texts) is None
    assert check_command(["matrix-mcp", "status", "--bogus"], texts) is not None
    assert check_command(["matrix-mcp", "hooks"], texts) is not None
    assert check_command(["matrix-mcp", "hooks", "add", "https://x", "--colour"], texts) is not None
    assert commands("KEY=1 matrix-mcp status \\\n  --check && echo ok | matrix-mcp gc  # c\n") == [
        ["matrix-mcp", "status", "--check"],
        ["matrix-mcp", "gc"],
    ]


def test_every_bench_and_module_command_names_what_exists() -> None:
    """`python bench/x.py --flag` in any page (tables included): the script exists and defines the flag;
    `python -m matrix_mcp.x`: the module exists."""
    import importlib.util

    seen, wrong = 0, []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for match in re.finditer(r"python3? (bench/[\w/]+\.py)((?:[ \t]+[^`|\n)]*)?)", text):
            seen += 1
            script = ROOT / match.group(1)
            if not script.is_file():
                wrong.append(f"{rel(doc)}: {match.group(0)} (no such script)")
                continue
            source = script.read_text(encoding="utf-8")
            for flag in re.findall(r"(?<![\w-])(--[\w-]+)", match.group(2)):
                if f'"{flag}"' not in source:
                    wrong.append(f"{rel(doc)}: {match.group(0)} ({match.group(1)} has no {flag})")
        for module in re.findall(r"python3? -m (matrix_mcp[\w.]*)", text):
            seen += 1
            if importlib.util.find_spec(module) is None:
                wrong.append(f"{rel(doc)}: python -m {module} (no such module)")
    assert seen >= 40, seen
    assert not wrong, "\n".join(wrong)


# ---- the quick start, as written ---------------------------------------------------------------------


def marked(doc: Path, mark: str) -> str:
    found = [
        code for _, code, before in blocks(doc.read_text(encoding="utf-8")) if before == f"<!-- {mark} -->"
    ]
    assert len(found) == 1, f"{rel(doc)}: one block marked <!-- {mark} --> expected, found {len(found)}"
    return found[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def doc_env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MATRIX_", "DB_", "PG", "OTEL_")) and k != "DATABASE_URL"
    }
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", HOME=str(tmp_path), MATRIX_WEBHOOK_DISPATCH="0"
    )
    return env


def test_the_quick_start_runs_as_written(tmp_path: Path) -> None:
    """Serve, plan over REST, `work` the run, check it: the page's own blocks, in a fresh folder."""
    page = ROOT / "docs" / "getting-started" / "quick-start.md"
    port = str(free_port())
    serve = marked(page, "test: serve").strip().replace("8000", port)
    run = marked(page, "test: run").replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    env = doc_env(tmp_path)
    server = subprocess.Popen(
        shlex.split(serve),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.2)
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", run],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "counters: consistent" in done.stdout
        assert "run docs (done)" in done.stdout and "4/4 complete" in done.stdout
        assert (
            tmp_path / ".matrix" / "artifacts" / "docs" / "guides" / "install"
        ).read_text() == "# guides / install\n"
    finally:
        server.terminate()
        server.wait(timeout=30)


# ---- client snippets ---------------------------------------------------------------------------------


CLIENTS = [
    "claude-code-cli",
    "claude-code",
    "claude-code-worker",
    "claude-desktop",
    "cursor",
    "vscode",
    "codex",
    "gemini",
]


def client_entries(mark: str, project: Path) -> list[tuple[str, dict[str, Any]]]:
    """The servers a snippet configures, as (name, {command, args, env}), with its placeholders filled in."""
    page = ROOT / "docs" / "getting-started" / "clients.md"
    code = marked(page, f"client: {mark}")
    code = code.replace("/abs/path/to/venv/bin/", f"{BIN}/").replace("/abs/path/project", str(project))
    code = code.replace("${workspaceFolder}", str(project))  # what VS Code substitutes
    if mark == "claude-code-cli":
        argv = shlex.split(code)
        assert argv[:3] == ["claude", "mcp", "add"] and "--" in argv, code
        command, *args = argv[argv.index("--") + 1 :]
        return [(argv[argv.index("--") - 1], {"command": command, "args": args})]
    if mark == "codex":
        servers = tomllib.loads(code)["mcp_servers"]
    else:
        data = json.loads(code)
        servers = data["servers"] if mark == "vscode" else data["mcpServers"]
        if mark == "vscode":
            assert all(entry["type"] == "stdio" for entry in servers.values())  # VS Code requires it
    return list(servers.items())


def test_client_snippets_start_and_initialize(tmp_path: Path) -> None:
    """Every host's snippet: parsed as that host parses it, its command started on a fresh SQLite store,
    initialized over stdio (the era real hosts speak), and its tools listed. Snippets that come to the same
    command line (most hosts' entries do) share one start."""
    project = Path("/project-placeholder")
    starts: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for mark in CLIENTS:
        for name, entry in client_entries(mark, project):
            command = entry["command"] if os.sep in entry["command"] else str(BIN / entry["command"])
            line = {"command": command, "args": entry.get("args", []), "env": entry.get("env", {})}
            starts.setdefault(json.dumps(line, sort_keys=True), []).append((mark, name, line))
    assert len(starts) < len([m for m in CLIENTS]) + 3  # shared starts, not one per snippet
    found: dict[str, list[str]] = {}

    async def start(n: int, key: str) -> None:
        folder = tmp_path / str(n)
        folder.mkdir()
        line = json.loads(key.replace(str(project), str(folder)))
        if "schema" in line["command"]:  # the schema server reads the store the matrix server makes
            await make_store(folder)
        params = StdioServerParameters(
            command=line["command"], args=line["args"], env={**doc_env(tmp_path), **line["env"]}, cwd=folder
        )
        async with Client(params, mode="legacy") as client:
            tools = {tool.name for tool in (await client.list_tools()).tools}
        if "worker" in line["args"]:
            assert tools == {"claim_items", "complete_item", "fail_item", "heartbeat", "get_outcome"}
        else:
            assert "analyze_schema" in tools, line
            assert ("claim_items" in tools) == ("schema" not in line["command"]), line
        assert (folder / ".matrix" / "matrix.db").is_file(), line  # the store is where the snippet says
        for mark, name, _ in starts[key]:
            found.setdefault(mark, []).append(name)

    async def make_store(folder: Path) -> None:
        params = StdioServerParameters(
            command=str(BIN / "matrix-mcp"), args=[], env=doc_env(tmp_path), cwd=folder
        )
        async with Client(params, mode="legacy") as client:
            await client.list_tools()

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for n, key in enumerate(starts):
                tg.start_soon(start, n, key)

    anyio.run(main)
    assert set(found) == set(CLIENTS)
    assert sorted(found["claude-code"]) == ["database-schema", "matrix"] and found["codex"] == ["matrix"]
