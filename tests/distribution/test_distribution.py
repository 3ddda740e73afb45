"""Where people install the Matrix: the sdist and wheel (PyPI), the MCP registry's server.json entries and the
Claude Desktop bundle (.mcpb), each checked the way its consumer checks it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

import matrix_mcp

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent.parent
VERSION = matrix_mcp.__version__
REGISTRY_SCHEMA = ROOT / "tests" / "vendor" / "mcp-registry" / "server.schema.json"
SERVER_JSONS = [ROOT / "server.json", ROOT / "packaging" / "registry" / "database-schema" / "server.json"]
MANIFEST = ROOT / "packaging" / "mcpb" / "manifest.json"
MCPB_CLI = "@anthropic-ai/mcpb@2.1.2"
REQUIRE_NPM = os.environ.get("MATRIX_REQUIRE_NPM") == "1"  # CI: a missing npm or registry fails, never skips


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any setting the servers read: only what a test passes decides."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MATRIX_", "DB_", "PG")) and k not in ("DATABASE_URL", "VIRTUAL_ENV")
    }
    return {**env, **extra}


def run(*command: str | Path, timeout: float = 180, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    assert proc.returncode == 0, f"{command}: {proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


async def tool_names(params: StdioServerParameters) -> tuple[str, set[str]]:
    """initialize + tools/list through the SDK's stdio client: the server's name and its tools."""
    async with Client(params) as client:
        assert client.server_info is not None
        assert client.server_info.version == VERSION
        return client.server_info.name, {tool.name for tool in (await client.list_tools()).tools}


# ---- the MCP registry: server.json ---------------------------------------------------------------------


def registry_validator() -> Any:
    from jsonschema import Draft7Validator, FormatChecker

    schema = json.loads(REGISTRY_SCHEMA.read_text())
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema, format_checker=FormatChecker())


def test_server_json_files_pass_the_registry_schema_and_name_this_package() -> None:
    """Both entries validate against the registry's published schema, name it as their $schema, point at this
    PyPI package at this version, and the README (the PyPI description) carries each `mcp-name:` marker the
    registry's ownership check looks for, ending where the name ends."""
    validator = registry_validator()
    schema_id = json.loads(REGISTRY_SCHEMA.read_text())["$id"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    readme = (ROOT / "README.md").read_text()
    names = []
    for path in SERVER_JSONS:
        entry = json.loads(path.read_text())
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(entry)]
        assert errors == [], (path, errors)
        assert entry["$schema"] == schema_id
        assert entry["version"] == VERSION
        (package,) = entry["packages"]
        assert package["registryType"] == "pypi" and package["registryBaseUrl"] == "https://pypi.org"
        assert package["identifier"] == project["name"] and package["version"] == VERSION
        assert package["transport"] == {"type": "stdio"}
        for variable in package["environmentVariables"]:
            assert variable["description"] and "isRequired" in variable and "isSecret" in variable
        marker = re.search(rf"<!-- mcp-name: {re.escape(entry['name'])}(?![A-Za-z0-9._/-]) -->", readme)
        assert marker, entry["name"]
        names.append(entry["name"])
    assert len(set(names)) == 2 and len({name.split("/")[0] for name in names}) == 1  # one namespace


def test_registry_schema_refuses_what_the_registry_refuses() -> None:
    """The vendored schema is the real judge: a floating version, an overlong description and a name
    without a namespace are refused."""
    validator = registry_validator()
    entry = json.loads(SERVER_JSONS[0].read_text())
    for path, bad in [
        (("packages", 0, "version"), "latest"),
        (("description",), "x" * 101),
        (("name",), "matrix"),
    ]:
        broken = json.loads(json.dumps(entry))
        target = broken
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = bad
        assert list(validator.iter_errors(broken)), path


def test_the_version_is_written_once() -> None:
    """pyproject reads matrix_mcp.__version__; the files that must spell it out agree with it."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" in pyproject["project"]["dynamic"] and "version" not in pyproject["project"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "matrix_mcp.__version__"}
    assert json.loads(MANIFEST.read_text())["version"] == VERSION
    for path in SERVER_JSONS:
        entry = json.loads(path.read_text())
        assert {entry["version"], *(p["version"] for p in entry["packages"])} == {VERSION}


def test_the_schema_server_starts_as_a_subcommand_too(tmp_path: Path) -> None:
    """The registry entry for the schema server runs the package's first script with `schema`
    (uvx matrix-mcp==V schema): the same server and options as matrix-schema-mcp, the same one-line errors."""
    bin_dir = Path(sys.executable).parent
    for command in ([bin_dir / "matrix-mcp", "schema"], [bin_dir / "matrix-schema-mcp"]):
        proc = subprocess.run(
            [*map(str, command), "--database-url", f"sqlite:///{tmp_path / 'missing' / 'x.db'}"],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            check=False,
        )
        assert proc.returncode == 1 and proc.stdout == ""
        assert proc.stderr.strip().startswith("matrix-schema-mcp: cannot read database"), proc.stderr


# ---- PyPI: sdist and wheel --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """python -m build (no isolation: the venv has the backend, the test extra pins setuptools>=77)."""
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT, timeout=300)
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


@pytest.mark.slow
async def test_wheel_installs_into_a_fresh_venv_and_both_servers_answer(
    dists: dict[str, Path], tmp_path: Path
) -> None:
    run(sys.executable, "-m", "twine", "check", "--strict", dists["wheel"], dists["sdist"])
    static = {"matrix_mcp/http/board_static/board.js", "matrix_mcp/http/board_static/board.css"}
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        assert static <= set(wheel.namelist())
        meta_name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = wheel.read(meta_name).decode()
        scripts = wheel.read(meta_name.replace("METADATA", "entry_points.txt")).decode()
    assert f"Version: {VERSION}\n" in metadata and "Author: Matrix MCP developers" in metadata
    assert "License-Expression: MIT" in metadata and "UNKNOWN" not in metadata
    assert "matrix-mcp = matrix_mcp.cli:main" in scripts
    assert "matrix-schema-mcp = servers.database_schema:main" in scripts
    with tarfile.open(dists["sdist"]) as sdist:
        assert {f"matrix_mcp-{VERSION}/{name}" for name in static} <= set(sdist.getnames())

    # A fresh venv with only the wheel installed (--no-deps); its dependencies come from this venv's
    # site-packages, added by a path line AFTER the new venv's own (so the wheel's matrix_mcp wins, and the
    # editable install here, whose .pth is not processed this way, is never seen).
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    purelib = Path(
        sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}, scheme="venv")
    )
    (purelib / "deps-from-test-venv.pth").write_text(sysconfig.get_path("purelib") + "\n")
    run(
        sys.executable, "-m", "pip", "--python", bin_dir / "python", "install", "--quiet", "--no-deps",
        "--no-index", dists["wheel"],
    )  # fmt: skip
    where = run(bin_dir / "python", "-c", "import matrix_mcp; print(matrix_mcp.__file__)", cwd=tmp_path)
    installed = Path(where.stdout.strip()).parent
    assert installed.is_relative_to(purelib)
    assert (installed / "http" / "board_static" / "board.js").is_file()

    usage = run(bin_dir / "matrix-mcp", "--help", cwd=tmp_path, env=clean_env())
    assert usage.stdout.startswith("usage: matrix-mcp") and "schema" in usage.stdout
    db = f"sqlite:///{tmp_path / 'board.db'}"
    name, tools = await tool_names(
        StdioServerParameters(
            command=str(bin_dir / "matrix-mcp"),
            args=["--database-url", db, "--artifacts-dir", str(tmp_path / "artifacts")],
            env=clean_env(),
            cwd=tmp_path,
        )
    )
    assert name == "matrix" and {"plan_run", "claim_items", "complete_item", "analyze_schema"} <= tools
    for command, args in [("matrix-schema-mcp", []), ("matrix-mcp", ["schema"])]:
        name, tools = await tool_names(
            StdioServerParameters(
                command=str(bin_dir / command),
                args=[*args, "--database-url", db],
                env=clean_env(),
                cwd=tmp_path,
            )
        )
        assert "analyze_schema" in tools and "plan_run" not in tools, (command, name)


# ---- Claude Desktop: the MCPB bundle ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def mcpb(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The official mcpb CLI, installed once into pytest's cache folder (a temporary one when the cache is
    off); skipped without npm, failed instead with MATRIX_REQUIRE_NPM=1 (CI)."""

    def unavailable(reason: str) -> None:
        if REQUIRE_NPM:
            pytest.fail(f"{reason} (MATRIX_REQUIRE_NPM=1)")
        pytest.skip(reason)

    name = "mcpb-cli-" + MCPB_CLI.rsplit("@", 1)[1]
    cache = getattr(request.config, "cache", None)
    folder = cache.mkdir(name) if cache is not None else tmp_path_factory.mktemp(name)
    cli = folder / "node_modules" / ".bin" / "mcpb"
    if not cli.exists():
        npm = shutil.which("npm")
        if npm is None:
            unavailable("npm (Node.js) is not installed: cannot install the mcpb CLI")
        proc = subprocess.run(
            [str(npm), "install", "--prefix", str(folder), "--no-audit", "--no-fund", MCPB_CLI],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if proc.returncode != 0 or not cli.exists():
            unavailable(f"npm could not install {MCPB_CLI}: {proc.stderr.strip()[-500:]}")
    return cli


def host_config(cli: Path, bundle: Path, user_config: dict[str, Any], dirs: dict[str, str]) -> dict[str, Any]:
    """command/args/env as Claude Desktop computes them: the mcpb package's own getMcpConfigForManifest (the
    code the app uses), given the unpacked bundle, the user's settings and the system folders."""
    script = """
        import { getMcpConfigForManifest } from "@anthropic-ai/mcpb";
        import { readFileSync } from "node:fs";
        import { sep } from "node:path";
        const input = JSON.parse(readFileSync(0, "utf8"));
        const manifest = JSON.parse(readFileSync(input.bundle + "/manifest.json", "utf8"));
        const config = await getMcpConfigForManifest({
          manifest, extensionPath: input.bundle, systemDirs: input.dirs, userConfig: input.user_config,
          pathSeparator: sep,
        });
        process.stdout.write(JSON.stringify(config ?? null));
    """
    proc = run(
        "node", "--input-type=module", "-e", script,
        input=json.dumps({"bundle": str(bundle), "dirs": dirs, "user_config": user_config}),
        cwd=cli.parent.parent.parent,  # the folder holding node_modules: the import resolves from there
    )  # fmt: skip
    config: dict[str, Any] = json.loads(proc.stdout)
    return config


@pytest.mark.slow
async def test_mcpb_bundle_validates_packs_and_serves_from_its_unpacked_folder(
    dists: dict[str, Path], mcpb: Path, tmp_path: Path
) -> None:
    proc = run(mcpb, "validate", MANIFEST)
    assert "passes" in proc.stdout
    built = run(
        sys.executable, ROOT / "packaging" / "mcpb" / "build_mcpb.py", "--wheel", dists["wheel"],
        "--out", tmp_path / "out", "--mcpb", mcpb, timeout=600,
    )  # fmt: skip
    bundle_file = Path(built.stdout.strip().splitlines()[-1])
    assert bundle_file.suffix == ".mcpb" and bundle_file.is_file()
    run(mcpb, "unpack", bundle_file, tmp_path / "installed")
    bundle = tmp_path / "installed"
    manifest = json.loads((bundle / "manifest.json").read_text())
    run(mcpb, "validate", bundle / "manifest.json")
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert manifest["compatibility"]["runtimes"]["python"].startswith(f">={minor}.0 <")

    home = tmp_path / "home"
    home.mkdir()
    dirs = {k: str(home / d) for k, d in [("HOME", ""), ("DESKTOP", "Desktop"), ("DOCUMENTS", "Documents")]}
    user_config = {
        "database_url": f"sqlite:///{tmp_path / 'chosen' / 'board.db'}",
        "artifacts_dir": str(tmp_path / "chosen" / "artifacts"),
    }
    # Required settings missing: the host does not start it.
    assert host_config(mcpb, bundle, {}, dirs) is None
    config = host_config(mcpb, bundle, user_config, dirs)
    assert "${" not in json.dumps(config)
    assert config["env"]["MATRIX_DATABASE_URL"] == user_config["database_url"]
    assert config["env"]["MATRIX_ARTIFACTS_DIR"] == user_config["artifacts_dir"]

    # The command on a clean machine: a bare Python of the same minor, nothing installed, found on PATH.
    bare = tmp_path / "bare-python"
    run(sys.executable, "-m", "venv", "--without-pip", bare)
    path = f"{bare / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    command = shutil.which(config["command"], path=path)
    assert command is not None and Path(command).parent == bare / "bin"
    env = {"PATH": path, "HOME": str(home), **config["env"]}
    async with Client(
        StdioServerParameters(command=command, args=config["args"], env=env, cwd=home)
    ) as client:
        assert client.server_info is not None and client.server_info.version == VERSION
        tools = {tool.name for tool in (await client.list_tools()).tools}
        # The install dialog lists exactly the tools it serves.
        assert tools == {tool["name"] for tool in manifest["tools"]}
        planned = await client.call_tool(
            "plan_run", {"name": "r", "packages": [{"name": "p", "items": ["a"]}]}
        )
        assert not planned.is_error, planned.content
    assert (tmp_path / "chosen" / "board.db").is_file()  # the store is where the user's setting says

    # Another Python minor than the bundle was built for: refused in one line naming both.
    info = json.loads((bundle / "server" / "bundle.json").read_text())
    (bundle / "server" / "bundle.json").write_text(json.dumps({**info, "python": "3.99"}))
    refused = await anyio.run_process([command, *config["args"]], env=env, check=False)
    stderr = refused.stderr.decode().strip()
    assert refused.returncode == 1 and refused.stdout == b""
    assert len(stderr.splitlines()) == 1 and "Traceback" not in stderr
    assert "built for Python 3.99" in stderr and f"started with Python {minor}" in stderr
