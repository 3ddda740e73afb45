"""Events out under hostile receivers and careless operators: a receiver's answer is read to a bound and
within one deadline per attempt; no secret of a subscription reaches a listing, a resource, the stored
rows or any log at any level; refusals are said once and shown; `hooks test` fails when the ping does."""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.integrations.service import Hooks
from matrix_mcp.integrations.settings import HookSettings
from tests.integrations.test_hooks_dispatch import dispatching, fast, until, work
from tests.support.hooks_helpers import Receiver
from tests.support.http_helpers import client, create_key, serving

pytestmark = pytest.mark.anyio


# ---- hostile receivers on raw sockets -------------------------------------------------------------


class RawReceiver:
    """A TCP server on 127.0.0.1 that reads a request's head and then runs `answer(conn)` in a thread."""

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            if self.answer == "huge":  # 300 MB announced, streamed as fast as the client takes it
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 314572800\r\nContent-Type: text/plain\r\n\r\n"
                )
                block = b"x" * 65536
                for _ in range(314572800 // 65536):
                    if self.stop.is_set():
                        return
                    conn.sendall(block)
            else:  # one byte of the status line every 0.4 s: never idle long enough for a read timeout
                for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok":
                    if self.stop.is_set():
                        return
                    conn.sendall(bytes([byte]))
                    time.sleep(0.4)
        except OSError:
            pass
        finally:
            conn.close()

    def __enter__(self) -> RawReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join(timeout=5)


def test_the_attempt_deadline_defaults_to_15_seconds_and_is_configurable() -> None:
    assert HookSettings().timeout == 15.0
    assert HookSettings.from_env({}).timeout == 15.0
    assert HookSettings.from_env({"MATRIX_WEBHOOK_TIMEOUT": "2.5"}).timeout == 2.5


async def test_a_huge_or_trickling_answer_is_cut_at_its_bound_and_deadline(engine: Engine) -> None:
    deadline = 2.0
    settings = fast(timeout=deadline, retry_schedule=(600.0,))
    hooks = Hooks(engine.store, engine.settings.database_url, settings)
    with RawReceiver("huge") as huge, RawReceiver("trickle") as trickle:
        big = (await hooks.add(huge.url, events=["run.planned"])).webhook.id
        slow = (await hooks.add(trickle.url, events=["run.planned"])).webhook.id
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            async with dispatching(engine, settings):
                await work(engine, "r1", ["a"])

                async def attempted() -> bool:
                    page = await hooks.deliveries()
                    return len(page.deliveries) == 2 and all(d.attempts == 1 for d in page.deliveries)

                limit = time.monotonic() + 30
                while not await attempted():
                    assert time.monotonic() < limit, "no attempt recorded"
                    await anyio.sleep(0.05)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak - base <= 50 * 2**20, f"peak growth {(peak - base) / 2**20:.0f} MB"
        page = await hooks.deliveries()
        by_hook = {d.webhook: d for d in page.deliveries}
        assert by_hook[big].status == "pending" and by_hook[slow].status == "pending"
        assert "longer than 64 KiB" in (by_hook[big].last_error or ""), by_hook[big]
        assert "no complete answer within 2 s" in (by_hook[slow].last_error or ""), by_hook[slow]
        # each attempt ended within the deadline + 1 s: the dispatcher's (integration_logs rows carry their
        # durations) and a test ping's
        calls = [d for d in logged(engine.settings.database_url) if d.get("webhook") in (big, slow)]
        assert {d["webhook"] for d in calls} == {big, slow}
        assert all(d["status_code"] is None and d["duration_ms"] <= (deadline + 1) * 1000 for d in calls), (
            calls
        )
        for hid in (big, slow):
            ping = await hooks.test(hid)
            assert not ping.ok and ping.error, ping
            assert ping.duration_ms <= (deadline + 1) * 1000, ping
    assert huge.connections >= 2 and trickle.connections >= 2


# ---- secrets in URLs: listings, the resource, the stored rows -------------------------------------

DISCORD_SECRET = "dIsCoRdTokenXyZ0123456789"
QUERY_SECRET = "qUeRyToKeN9876543210"


def logged(database_url: str) -> list[dict[str, Any]]:
    """The details of every integration_logs row."""
    query = "SELECT details FROM integration_logs ORDER BY id"
    if database_url.startswith("sqlite"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as c:
            return [json.loads(r[0]) for r in c.execute(query).fetchall()]
    with psycopg.connect(database_url) as pc:
        return [json.loads(r[0]) for r in pc.execute(query).fetchall()]


def stored_text(database_url: str) -> str:
    """Every subscription target and integration_logs row as stored, as one text."""
    if database_url.startswith("sqlite"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as c:
            rows = c.execute("SELECT target FROM hook_subscriptions").fetchall()
            rows += c.execute("SELECT details FROM integration_logs").fetchall()
    else:
        with psycopg.connect(database_url) as c:
            rows = c.execute("SELECT target FROM hook_subscriptions").fetchall()
            rows += c.execute("SELECT details FROM integration_logs").fetchall()
    return "\n".join(str(r[0]) for r in rows)


async def test_a_secret_in_a_url_path_or_query_is_never_shown_or_stored_in_clear(engine: Engine) -> None:
    settings = fast()
    hooks = Hooks(engine.store, engine.settings.database_url, settings)
    with Receiver(path=f"/api/webhooks/123/{DISCORD_SECRET}") as discord, Receiver() as teams:
        port = teams.server.port
        a = await hooks.add(discord.url, events=["*"])
        b = await hooks.add(f"{teams.url}?token={QUERY_SECRET}", events=["*"])
        assert a.webhook.target == f"http://127.0.0.1:{discord.server.port}/…"
        assert b.webhook.target == f"http://127.0.0.1:{port}/…"
        async with dispatching(engine, settings):
            await work(engine, "r1", ["a"])
            await until(lambda: len(discord.requests) >= 4 and len(teams.requests) >= 4)
        assert (await hooks.test(a.webhook.id)).ok and (await hooks.test(b.webhook.id)).ok
        await hooks.update(b.webhook.id, url=f"{teams.url}?token={QUERY_SECRET}&v=2")
    shown = (await hooks.list_all()).model_dump_json() + (await hooks.get(b.webhook.id)).model_dump_json()
    shown += (await hooks.deliveries()).model_dump_json()
    at_rest = stored_text(engine.settings.database_url)
    assert "integration" not in at_rest or "deliver" in at_rest
    for secret in (DISCORD_SECRET, QUERY_SECRET):
        assert secret not in shown and secret not in at_rest


async def test_stored_webhooks_with_a_clear_path_are_redacted_and_keep_working(
    database_url: str, tmp_path: Path
) -> None:
    """A store written before targets were redacted: the migration redacts them (and the logs' copies);
    the subscriptions keep delivering, their URL is in the encrypted credentials."""
    from matrix_mcp.store.postgres.migrations import MIGRATIONS as PG
    from matrix_mcp.store.sqlite.migrations import MIGRATIONS as SQ

    settings = Settings(database_url=database_url, artifacts_dir=tmp_path / "a")
    hook_settings = fast()
    with Receiver(path=f"/api/webhooks/123/{DISCORD_SECRET}") as rx:
        clear = f"http://127.0.0.1:{rx.server.port}/api/webhooks/123/{DISCORD_SECRET}"
        engine = await Engine.open(settings)
        try:
            hooks = Hooks(engine.store, database_url, hook_settings)
            hid = (await hooks.add(rx.url, events=["*"])).webhook.id
        finally:
            await engine.close()
        migrations = SQ if database_url.startswith("sqlite") else PG
        last = next(v for v, script in migrations if "UPDATE hook_subscriptions SET target" in script)
        old_log = json.dumps({"webhook": hid, "target": clear, "status_code": 200})
        if database_url.startswith("sqlite"):
            with sqlite3.connect(database_url.removeprefix("sqlite:///")) as c:
                c.execute("UPDATE hook_subscriptions SET target = ?", (clear,))
                c.execute(
                    "INSERT INTO integration_logs (integration_type, action, status, details, created_at)"
                    " VALUES ('webhook', 'deliver', 'success', ?, 1)",
                    (old_log,),
                )
                c.execute("DELETE FROM schema_migrations WHERE version = ?", (last,))
        else:
            with psycopg.connect(database_url) as c:
                c.execute("UPDATE hook_subscriptions SET target = %s", (clear,))
                c.execute(
                    "INSERT INTO integration_logs (integration_type, action, status, details, created_at)"
                    " VALUES ('webhook', 'deliver', 'success', %s, 1)",
                    (old_log,),
                )
                c.execute("DELETE FROM schema_migrations WHERE version = %s", (last,))
        assert DISCORD_SECRET in stored_text(database_url)
        engine = await Engine.open(settings)  # migrates
        try:
            hooks = Hooks(engine.store, database_url, hook_settings)
            assert DISCORD_SECRET not in stored_text(database_url)
            assert (await hooks.get(hid)).target == f"http://127.0.0.1:{rx.server.port}/…"
            assert (await hooks.test(hid)).ok and rx.requests[-1][2]["type"] == "ping"
        finally:
            await engine.close()


async def test_the_webhooks_resource_needs_the_admin_scope(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matrix_mcp.integrations.crypto import new_key

    monkeypatch.setenv("MATRIX_ENCRYPTION_KEY", new_key())
    monkeypatch.setenv("MATRIX_WEBHOOK_DISPATCH", "0")
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")
    reader = await create_key(settings, "reader", "matrix:read", "matrix:work", "matrix:plan")
    admin = await create_key(settings, "admin", "matrix:admin", "matrix:read")
    async with serving(settings, auth=True) as (base, _):
        async with client(base, reader) as c:
            assert "matrix://webhooks" not in {str(r.uri) for r in (await c.list_resources()).resources}
            with pytest.raises(Exception, match=r"insufficient_scope.*matrix:admin"):
                await c.read_resource("matrix://webhooks")
            await c.read_resource("matrix://runs")  # the other resources stay readable
        async with client(base, admin) as c:
            assert "matrix://webhooks" in {str(r.uri) for r in (await c.list_resources()).resources}
            got = await c.read_resource("matrix://webhooks")
            assert "webhooks" in got.contents[0].text  # type: ignore[union-attr]


# ---- no secret in any log, at any level ------------------------------------------------------------

SLACK_PATH = "/services/T0SLACK/B0SLACK/sLaCkPaThSeCrEt42"
WHSEC = "whsec_" + "c2VjcmV0LXNpZ25pbmcta2V5LWZvci10ZXN0cy0xMjM0"  # base64 of a 32-byte test key
BOT_TOKEN = "xoxb-bOtToKeNsEcReT-777"


@pytest.fixture
def debug_logs() -> Iterator[list[str]]:
    """Every record of every logger, the root at DEBUG, formatted with its exception text."""
    records: list[str] = []
    fmt = logging.Formatter("%(name)s %(levelname)s %(message)s")

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if not record.name.startswith("werkzeug"):  # the receivers' own access log, not the Matrix's
                records.append(fmt.format(record))

    handler = Keep(logging.DEBUG)
    root = logging.getLogger()
    levels = {
        name: lg.level
        for name, lg in logging.root.manager.loggerDict.items()
        if isinstance(lg, logging.Logger)
    }
    old_root = root.level
    root.setLevel(logging.DEBUG)
    for name in levels:
        logging.getLogger(name).setLevel(logging.NOTSET)
    root.addHandler(handler)
    hidden = [
        lg
        for lg in logging.root.manager.loggerDict.values()
        if isinstance(lg, logging.Logger) and not lg.propagate
    ]
    for lg in hidden:
        lg.addHandler(handler)
    try:
        yield records
    finally:
        root.removeHandler(handler)
        for lg in hidden:
            lg.removeHandler(handler)
        root.setLevel(old_root)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


async def test_no_secret_reaches_any_log_at_debug(engine: Engine, debug_logs: list[str]) -> None:
    settings = fast(retry_schedule=(0.05,))
    hooks = Hooks(engine.store, engine.settings.database_url, settings)
    with Receiver(path=SLACK_PATH) as slack, Receiver() as hook, Receiver(path="/gone") as bot:
        await hooks.add(slack.url, events=["*"], kind="slack")
        await hooks.add(
            f"{hook.url}?token={QUERY_SECRET}", events=["*"], secret=WHSEC, headers={"X-Auth": QUERY_SECRET}
        )
        api = f"http://127.0.0.1:{bot.server.port}/api"
        await hooks.add(api, events=["*"], kind="slack", token=BOT_TOKEN, options={"channel": "C1"})
        async with dispatching(engine, settings):
            await work(engine, "r1", ["a"], fail={"a"})
            await until(
                lambda: len(slack.requests) >= 2 and len(hook.requests) >= 4 and len(bot.requests) >= 2
            )
            await anyio.sleep(0.3)
        for row in (await hooks.list_all()).webhooks:  # pings, a rotation, and a ping that fails
            assert (await hooks.test(row.id)).ok
            if row.kind == "webhook":
                await hooks.update(row.id, rotate_secret=True)
                await hooks.update(row.id, url=f"http://127.0.0.1:9/hook?token={QUERY_SECRET}")
                assert not (await hooks.test(row.id)).ok
    text = "\n".join(debug_logs)
    assert "HTTP Request" in text or "send_request" in text or len(debug_logs) > 10  # the run did log
    for secret in ("sLaCkPaThSeCrEt42", QUERY_SECRET, WHSEC, WHSEC.removeprefix("whsec_"), BOT_TOKEN):
        assert secret not in text, [line[:300] for line in debug_logs if secret in line][:5]


# ---- refusals are said and shown ---------------------------------------------------------------------


async def test_a_refused_delivery_is_logged_once_and_shown(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    permissive = fast()
    strict = fast(allowed_networks=(), retry_schedule=(0.05, 0.05, 0.05, 0.05))
    hooks = Hooks(engine.store, engine.settings.database_url, permissive)
    with Receiver() as rx:
        hid = (await hooks.add(rx.url, events=["outcome.started", "outcome.completed"])).webhook.id
        caplog.set_level(logging.WARNING, logger="matrix_mcp.integrations")
        async with dispatching(engine, strict):  # this process does not allow 127.0.0.0/8
            await work(engine, "r1", ["a", "b"])

            async def refused_five_times() -> bool:
                page = await hooks.deliveries(webhook=hid)
                return sum(d.attempts for d in page.deliveries) >= 5  # the circuit opens at 5

            limit = time.monotonic() + 20
            while not await refused_five_times():
                assert time.monotonic() < limit
                await anyio.sleep(0.05)
        assert rx.requests == []
        warnings = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert len(warnings) == 1, warnings
        assert (
            hid in warnings[0]
            and "loopback" in warnings[0]
            and "MATRIX_WEBHOOK_ALLOWED_NETWORKS" in warnings[0]
        )
        assert "every process that dispatches" in warnings[0]
        # shown where hooks deliveries and list_deliveries look (both read Hooks.deliveries), naming the process
        page = await hooks.deliveries(webhook=hid)
        shown = [d.last_error or "" for d in page.deliveries if d.attempts]
        assert shown and all(e.startswith("refused by d0: ") and "loopback" in e for e in shown), shown


# ---- `hooks test` exits non-zero when the ping fails --------------------------------------------


def test_cli_hooks_test_fails_when_the_ping_fails(tmp_path: Path) -> None:
    from matrix_mcp.integrations.crypto import new_key

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MATRIX_")}
    env.update(
        MATRIX_DATABASE_URL=f"sqlite:///{tmp_path / 'm.db'}",
        MATRIX_ARTIFACTS_DIR=str(tmp_path / "a"),
        MATRIX_ENCRYPTION_KEY=new_key(),
        MATRIX_WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8",
        MATRIX_WEBHOOK_TIMEOUT="3",
    )

    def cli(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "matrix_mcp", *args],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
        )

    added = cli("hooks", "add", f"http://127.0.0.1:{dead}/hook?token={QUERY_SECRET}")
    assert added.returncode == 0, added.stderr
    hid = json.loads(added.stdout)["webhook"]["id"]
    refused = cli("hooks", "test", hid)
    assert refused.returncode != 0
    lines = refused.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith(f"matrix-mcp: hooks test: {hid}: ")
        and "Connection refused" in lines[0]
    )
    assert QUERY_SECRET not in refused.stderr + refused.stdout
    blocked = cli("hooks", "test", hid, MATRIX_WEBHOOK_ALLOWED_NETWORKS="")
    assert (
        blocked.returncode != 0
        and "loopback" in blocked.stderr
        and len(blocked.stderr.strip().splitlines()) == 1
    )
    with Receiver() as rx:
        fine = cli("hooks", "update", hid, "--url", rx.url)
        assert fine.returncode == 0, fine.stderr
        ok = cli("hooks", "test", hid)
        assert ok.returncode == 0 and json.loads(ok.stdout)["ok"], ok.stderr
