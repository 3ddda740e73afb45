"""The shipped Containerfile and compose.yaml, built and run with podman on a local Debian base (no image registry
is reachable here; tests/support/container_helpers.py makes and caches the bases). Slow: the first run on a machine
builds the bases and the image (minutes); later runs reuse them (see docs/guides/containers.md). Skipped where
podman cannot run, except in CI (CI=true), where that is a failure."""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

from tests.support import container_helpers as ch
from tests.support.http_helpers import client, free_port

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture(scope="module")
def background() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


@pytest.fixture(scope="module")
def postgres_image(background: ThreadPoolExecutor) -> Future[str]:
    """Made beside the project's image (on a cold cache both start with an mmdebstrap, mostly downloads)."""
    return background.submit(ch.build_postgres_image)


@pytest.fixture(scope="module")
def image(request: pytest.FixtureRequest) -> str:
    reason = ch.podman_unavailable()
    if reason is not None:
        if ch.IN_CI:
            pytest.fail(f"CI=true but podman cannot run here: {reason}")
        pytest.skip(reason)
    if shutil.which("podman-compose") and any("compose" in item.name for item in request.session.items):
        request.getfixturevalue("postgres_image")
    return ch.build_project_image()


def _key() -> str:
    return "mtx_" + secrets.token_urlsafe(32)


def _readable(path: Path, text: str) -> Path:
    """A secret file the container's user (uid 10001) can read, as the guide says."""
    path.write_text(text + "\n")
    path.chmod(0o644)
    return path


@pytest.fixture
def volume() -> Iterator[str]:
    name = f"matrix-test-{uuid.uuid4().hex[:10]}"
    ch.podman("volume", "create", name)
    try:
        yield name
    finally:
        ch.podman("volume", "rm", "--force", name, check=False)


def _wait_healthy(url: str, deadline: float = 60.0) -> None:
    until = time.monotonic() + deadline
    last: object = None
    while time.monotonic() < until:
        try:
            answer = httpx2.get(url, timeout=2)
            if answer.status_code == 200:
                return
            last = answer.status_code
        except httpx2.HTTPError as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer 200 within {deadline} s (last: {last!r})")


async def _data(c: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await c.call_tool(tool, args)
    assert not result.is_error, result.content
    return dict(result.structured_content or {})


async def _plan_and_work(plan_with: Client, work_with: Client, run: str) -> None:
    """Plan 2×2 on one connection, claim and complete every item on the other, and see the run done."""
    packages = [{"name": p, "items": ["a", "b"]} for p in ("p1", "p2")]
    assert (await _data(plan_with, "plan_run", {"name": run, "packages": packages}))["items"] == 4
    done = 0
    while True:
        got = await _data(work_with, "claim_items", {"run": run, "worker": "container", "limit": 4})
        if not got["items"]:
            assert got["reason"] == "done", got
            break
        for item in got["items"]:
            out = await _data(
                work_with,
                "complete_item",
                {"outcome_id": item["outcome_id"], "lease_token": item["lease_token"], "content": "x"},
            )
            assert out["status"] == "complete"
            done += 1
    assert done == 4
    status = await _data(plan_with, "run_status", {"run": run})
    assert status["state"] == "done" and status["counts"]["complete"] == 4


def test_the_image_refuses_to_serve_open_and_runs_unprivileged(image: str, volume: str) -> None:
    refused = ch.podman("run", "--rm", "-v", f"{volume}:/var/lib/matrix-mcp", image, check=False, timeout=120)
    assert refused.returncode == 1
    assert "refusing to serve on 0.0.0.0 without authentication" in refused.stderr
    facts = ch.podman(
        "run",
        "--rm",
        image,
        "sh",
        "-c",
        'id -u; python3 -c \'import importlib.util as u; print(u.find_spec("pip"), u.find_spec("setuptools"))\';'
        " command -v gcc cc make || echo no-compiler",
        timeout=120,
    )
    uid, packaging, compilers = facts.stdout.split("\n")[:3]
    assert uid == "10001"
    assert packaging == "None None"  # the virtualenv cannot install or build anything
    assert compilers == "no-compiler"
    healthcheck = ch.podman("image", "inspect", image, "--format", "{{json .Config.Healthcheck.Test}}")
    assert "/healthz" in healthcheck.stdout


async def test_the_http_service_in_the_image_works_a_run_with_an_api_key(
    image: str, volume: str, tmp_path: Path
) -> None:
    key = _key()
    secret = _readable(tmp_path / "api_key", key)
    created = ch.podman(
        "run",
        "--rm",
        "-v",
        f"{volume}:/var/lib/matrix-mcp",
        "-v",
        f"{secret}:/run/secrets/api_key:ro",
        image,
        "matrix-mcp",
        "keys",
        "create",
        "lead",
        "--scope",
        "plan",
        "--scope",
        "read",
        "--scope",
        "work",
        "--key-file",
        "/run/secrets/api_key",
        timeout=120,
    )
    assert "key 'lead' stored" in created.stderr and key not in created.stdout + created.stderr
    port = free_port()
    name = f"matrix-test-{uuid.uuid4().hex[:10]}"
    ch.podman(
        "run",
        "-d",
        "--name",
        name,
        "-p",
        f"127.0.0.1:{port}:8000",
        "-v",
        f"{volume}:/var/lib/matrix-mcp",
        image,
        timeout=120,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(f"{base}/healthz")
        assert ch.podman("healthcheck", "run", name, check=False, timeout=60).returncode == 0
        assert httpx2.get(f"{base}/readyz", timeout=5).status_code == 200
        anonymous = httpx2.post(f"{base}/mcp", json={}, timeout=5)
        assert anonymous.status_code == 401
        async with client(base, key) as first, client(base, key) as second:
            await _plan_and_work(first, second, "in-a-container")
        listing = ch.podman("exec", name, "matrix-mcp", "keys", "list", timeout=60)
        assert "lead" in listing.stdout and "last used never" not in listing.stdout
    finally:
        logs = ch.podman("logs", name, check=False).stderr
        ch.podman("rm", "--force", name, check=False, timeout=120)
    assert key not in logs


async def test_the_stdio_entry_point_serves_an_mcp_client(image: str, volume: str) -> None:
    server = StdioServerParameters(
        command="podman",
        args=[
            "run",
            "-i",
            "--rm",
            "--network",
            "none",
            "-v",
            f"{volume}:/var/lib/matrix-mcp",
            image,
            "matrix-mcp",
        ],
        env={**os.environ},
    )
    async with Client(server) as orchestrator:
        tools = {t.name for t in (await orchestrator.list_tools()).tools}
        assert {"plan_run", "claim_items", "complete_item"} <= tools
        async with Client(server) as worker:  # a second container on the same volume: one SQLite file
            await _plan_and_work(orchestrator, worker, "over-stdio")


COMPOSE = ch.REPO / "compose.yaml"


@pytest.fixture
def compose_stack(image: str, postgres_image: Future[str], tmp_path: Path) -> Iterator[dict[str, Any]]:
    if shutil.which("podman-compose") is None:
        if ch.IN_CI:
            pytest.fail("CI=true but podman-compose is not installed (.ci/run installs it)")
        pytest.skip("podman-compose is not installed (apt-get install podman-compose)")
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir(mode=0o700)
    key = _key()
    _readable(secrets_dir / "api_key", key)
    _readable(secrets_dir / "session_secret", secrets.token_urlsafe(32))
    _readable(secrets_dir / "encryption_key", base64.urlsafe_b64encode(os.urandom(32)).decode())
    _readable(secrets_dir / "postgres_password", secrets.token_urlsafe(18))
    ports = free_port(), free_port()
    project = f"matrixtest{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "MATRIX_IMAGE": image,
        "MATRIX_POSTGRES_IMAGE": postgres_image.result(timeout=1800),
        "MATRIX_SECRETS_DIR": str(secrets_dir),
        "MATRIX_PORT_1": str(ports[0]),
        "MATRIX_PORT_2": str(ports[1]),
    }
    command = ["podman-compose", "-p", project, "-f", str(COMPOSE)]

    def compose(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=600)

    up = compose("up", "-d", "--no-build")
    try:
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        yield {"key": key, "ports": ports, "project": project, "compose": compose}
    finally:
        compose("down", "-v")
        ch.podman("volume", "rm", "--force", f"{project}_pgdata", f"{project}_matrix-data", check=False)
        ch.podman(
            "network", "rm", "--force", f"{project}_default", check=False
        )  # podman-compose 1.0 leaves it


async def test_the_compose_stack_serves_from_both_replicas(compose_stack: dict[str, Any]) -> None:
    one, two = (f"http://127.0.0.1:{port}" for port in compose_stack["ports"])
    for base in (one, two):
        _wait_healthy(f"{base}/readyz", deadline=180)  # PostgreSQL's first start, the keys step, restarts
    async with client(one, compose_stack["key"]) as planner, client(two, compose_stack["key"]) as worker:
        await _plan_and_work(planner, worker, "across-replicas")
    project = compose_stack["project"]
    running = ch.podman(
        "ps", "--filter", f"label=io.podman.compose.project={project}", "--format", "{{.Names}}"
    )
    names = running.stdout.split()
    assert any("dispatcher" in n for n in names), names  # the dispatcher runs beside the replicas
    keys_step = ch.podman(
        "ps",
        "-a",
        "--filter",
        f"label=io.podman.compose.project={project}",
        "--format",
        "{{.Names}} {{.Status}}",
    )
    assert any(
        line.startswith(f"{project}_keys") and "Exited (0)" in line for line in keys_step.stdout.splitlines()
    )
