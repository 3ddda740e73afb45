"""The team service's connections as a hostile client holds them, against the real `matrix-mcp serve`
process (its own uvicorn settings): half-open and idle sockets, unauthenticated uploads, forged
X-Forwarded-For. Every socket goes to 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import anyio
import httpx2
import pytest
from anyio.abc import SocketStream

from matrix_mcp.config import Settings
from matrix_mcp.http.options import ServiceOptions
from tests.support.http_helpers import create_key, free_port

pytestmark = pytest.mark.anyio


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")


@contextmanager
def service(settings: Settings, **env: str) -> Iterator[tuple[str, int, subprocess.Popen[bytes]]]:
    """`matrix-mcp serve --transport streamable-http` on a free port with `env`; (base URL, port, process)."""
    port = free_port()
    script = shutil.which("matrix-mcp")
    assert script is not None
    full_env = {
        **os.environ,
        "MATRIX_DATABASE_URL": str(settings.database_url),
        "MATRIX_ARTIFACTS_DIR": str(settings.artifacts_dir),
        **env,
    }
    proc = subprocess.Popen(
        [script, "serve", "--transport", "streamable-http", "--host", "127.0.0.1", "--port", str(port)],
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (proc.stderr.read() if proc.stderr else b"").decode()[-2000:]
            with suppress(httpx2.HTTPError):
                if httpx2.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the service did not become ready"
            time.sleep(0.1)
        yield base, port, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def closed_by_server(sock: SocketStream, within: float) -> bool:
    """Whether the server closes `sock` within `within` seconds (whatever it sends first is read)."""
    with anyio.move_on_after(within):
        try:
            while await sock.receive():
                pass
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
            return True
    return False


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_half_open_connections_neither_starve_calls_nor_health_checks(
    sqlite_settings: Settings,
) -> None:
    key = await create_key(sqlite_settings, "reader", "read")
    header_timeout = 2.0
    env = {"MATRIX_HTTP_MAX_CONNECTIONS": "50", "MATRIX_HTTP_HEADER_TIMEOUT": str(header_timeout)}
    with service(sqlite_settings, **env) as (base, port, _):
        held: list[SocketStream] = []
        try:
            for i in range(49):  # connected, half a request head each (a third send nothing at all)
                sock = await anyio.connect_tcp("127.0.0.1", port)
                if i % 3:
                    await sock.send(b"POST /api/v1/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                held.append(sock)
            started = time.monotonic()
            async with httpx2.AsyncClient(timeout=10) as http:
                health = await http.get(f"{base}/healthz")
                ready = await http.get(f"{base}/readyz")
                call = await http.get(f"{base}/api/v1/runs", headers={"Authorization": f"Bearer {key}"})
            answered = time.monotonic() - started
            assert (health.status_code, ready.status_code, call.status_code) == (200, 200, 200)
            assert answered < header_timeout + 1
            # and the server lets go of every half-open socket once the head deadline passes
            results = [await closed_by_server(s, header_timeout + 1) for s in held]
            assert all(results), f"{results.count(False)} half-open sockets still held"
        finally:
            for sock in held:
                await sock.aclose()


async def test_idle_connections_are_closed_after_the_idle_timeout(sqlite_settings: Settings) -> None:
    """Idle: connected and silent, or kept alive after a response (the header deadline, 10 s, is longer)."""
    from matrix_mcp.http.options import IDLE_TIMEOUT

    with service(sqlite_settings) as (_, port, _proc):
        silent = await anyio.connect_tcp("127.0.0.1", port)
        kept = await anyio.connect_tcp("127.0.0.1", port)
        try:
            await kept.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            with anyio.fail_after(5):
                first = await kept.receive()
            assert first.startswith(b"HTTP/1.1 200")
            assert await closed_by_server(kept, IDLE_TIMEOUT + 1)
            assert await closed_by_server(silent, 1)  # connected before `kept`: its time is up too
        finally:
            await silent.aclose()
            await kept.aclose()


async def test_unauthenticated_uploads_are_refused_before_their_bodies_are_read(
    sqlite_settings: Settings,
) -> None:
    await create_key(sqlite_settings, "reader", "read")  # authentication on
    declared = 15_000_000  # within the service's body bound (about 16 MB with the default content cap)
    paths = ["/api/v1/runs", "/ui/signin", "/no/such/path", "/api/v1/runs/r/packages"]
    with service(sqlite_settings, MATRIX_RATE_LIMIT="off") as (_, port, proc):
        before = rss_bytes(proc.pid)
        held: list[SocketStream] = []

        async def upload(path: str) -> None:
            sock = await anyio.connect_tcp("127.0.0.1", port)
            held.append(sock)
            head = (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {declared}\r\n\r\n"
            ).encode()
            chunk = b"x" * 262_144
            with anyio.move_on_after(20), suppress(anyio.BrokenResourceError, ConnectionError):
                await sock.send(head)
                sent = 0
                while sent + len(chunk) < declared:  # all but the last bytes: never finished
                    await sock.send(chunk)
                    sent += len(chunk)

        try:
            async with anyio.create_task_group() as tg:
                for i in range(40):
                    tg.start_soon(upload, paths[i % len(paths)])
            await anyio.sleep(0.5)
            grown = rss_bytes(proc.pid) - before
            assert grown <= 50 * 1024 * 1024, f"resident memory grew {grown / 1e6:.0f} MB"
        finally:
            for sock in held:
                await sock.aclose()


async def test_forwarded_for_is_believed_only_from_trusted_proxies(sqlite_settings: Settings) -> None:
    await create_key(sqlite_settings, "reader", "read")
    env = {"MATRIX_AUTH_FAILURE_LIMIT": "3/minute", "MATRIX_RATE_LIMIT": "off"}

    async def statuses(base: str, forwarded: list[str]) -> list[int]:
        async with httpx2.AsyncClient(timeout=10) as http:
            return [
                (
                    await http.get(
                        f"{base}/api/v1/runs",
                        headers={"Authorization": "Bearer mtx_wrong", "X-Forwarded-For": address},
                    )
                ).status_code
                for address in forwarded
            ]

    rotating = [f"192.0.2.{i}" for i in range(1, 7)]
    with service(sqlite_settings, **env) as (base, _, _proc):
        assert await statuses(base, rotating) == [401, 401, 401, 429, 429, 429]
    with service(sqlite_settings, **env, MATRIX_TRUSTED_PROXIES="127.0.0.1") as (base, _, _proc):
        assert await statuses(base, rotating) == [401] * 6  # each forwarded address has its own count
        assert await statuses(base, ["198.51.100.7"] * 4) == [401, 401, 401, 429]


def test_trusted_proxies_and_header_timeout_are_read_and_checked() -> None:
    options = ServiceOptions.from_env(
        {"MATRIX_TRUSTED_PROXIES": "10.1.2.3/8, ::1", "MATRIX_HTTP_HEADER_TIMEOUT": "2.5"}
    )
    assert options.trusted_proxies == ("10.0.0.0/8", "::1")
    assert options.header_timeout == 2.5
    assert ServiceOptions.from_env({}).trusted_proxies == ()
    assert ServiceOptions.from_env({}, trusted_proxies=("127.0.0.1",)).trusted_proxies == ("127.0.0.1",)
    with pytest.raises(
        ValueError,
        match=r"MATRIX_TRUSTED_PROXIES / --trusted-proxies: 'proxy\.internal' is not an IP address",
    ):
        ServiceOptions.from_env({"MATRIX_TRUSTED_PROXIES": "proxy.internal"})
    with pytest.raises(ValueError, match="MATRIX_HTTP_HEADER_TIMEOUT must be positive"):
        ServiceOptions.from_env({"MATRIX_HTTP_HEADER_TIMEOUT": "0"})


async def test_requests_in_progress_are_bounded_but_health_checks_still_answer(
    sqlite_settings: Settings,
) -> None:
    from tests.support.http_helpers import serving

    key = await create_key(sqlite_settings, "reader", "read")
    auth = {"Authorization": f"Bearer {key}"}
    async with (
        serving(sqlite_settings, auth=True, max_connections=2) as (base, _),
        httpx2.AsyncClient(timeout=10) as http,
        http.stream("GET", f"{base}/api/v1/events", headers=auth) as one,
        http.stream("GET", f"{base}/api/v1/events", headers=auth) as two,
    ):
        assert one.status_code == two.status_code == 200  # two event streams: the limit is reached
        busy = await http.get(f"{base}/api/v1/runs", headers=auth)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert (await http.get(f"{base}/healthz")).status_code == 200
        assert (await http.get(f"{base}/readyz")).status_code == 200
