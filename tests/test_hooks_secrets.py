"""Events out under hostile receivers and careless operators: a receiver's answer is read to a bound and
within one deadline per attempt; no secret of a subscription reaches a listing, a resource, the stored
rows or any log at any level; refusals are said once and shown; `hooks test` fails when the ping does."""

from __future__ import annotations

import json
import logging
import socket
import sqlite3
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import anyio
import psycopg
import pytest

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.integrations.service import Hooks
from matrix_mcp.integrations.settings import HookSettings
from tests.hooks_helpers import Receiver
from tests.http_helpers import client, create_key, serving
from tests.test_hooks_dispatch import dispatching, fast, until, work

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
        big = (await hooks.add(huge.url, ["run.planned"])).webhook.id
        slow = (await hooks.add(trickle.url, ["run.planned"])).webhook.id
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            async with dispatching(engine, settings):
                await work(engine, "r1", ["a"])

                async def attempted() -> bool:
                    page = await hooks.deliveries(None, None, None)
                    return len(page.deliveries) == 2 and all(d.attempts == 1 for d in page.deliveries)

                limit = time.monotonic() + 30
                while not await attempted():
                    assert time.monotonic() < limit, "no attempt recorded"
                    await anyio.sleep(0.05)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak - base <= 50 * 2**20, f"peak growth {(peak - base) / 2**20:.0f} MB"
        page = await hooks.deliveries(None, None, None)
        by_hook = {d.webhook: d for d in page.deliveries}
        assert by_hook[big].status == "pending" and by_hook[slow].status == "pending"
        assert "longer than 64 KiB" in (by_hook[big].last_error or ""), by_hook[big]
        assert "no complete answer within 2 s" in (by_hook[slow].last_error or ""), by_hook[slow]
        # each attempt ended within the deadline + 1 s (the integration_logs rows carry their durations)
        for hid in (big, slow):
            ping = await hooks.test(hid)
            assert not ping.ok and ping.error, ping
            assert ping.duration_ms <= (deadline + 1) * 1000, ping
    assert huge.connections >= 2 and trickle.connections >= 2


# ---- secrets in URLs: listings, the resource, the stored rows -------------------------------------

DISCORD_SECRET = "dIsCoRdTokenXyZ0123456789"
QUERY_SECRET = "qUeRyToKeN9876543210"


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
        a = await hooks.add(discord.url, ["*"])
        b = await hooks.add(f"{teams.url}?token={QUERY_SECRET}", ["*"])
        assert a.webhook.target == f"http://127.0.0.1:{discord.server.port}/…"
        assert b.webhook.target == f"http://127.0.0.1:{port}/…"
        async with dispatching(engine, settings):
            await work(engine, "r1", ["a"])
            await until(lambda: len(discord.requests) >= 4 and len(teams.requests) >= 4)
        assert (await hooks.test(a.webhook.id)).ok and (await hooks.test(b.webhook.id)).ok
        await hooks.update(b.webhook.id, url=f"{teams.url}?token={QUERY_SECRET}&v=2")
    shown = (await hooks.list_all()).model_dump_json() + (await hooks.get(b.webhook.id)).model_dump_json()
    shown += (await hooks.deliveries(None, None, None)).model_dump_json()
    at_rest = stored_text(engine.settings.database_url)
    assert "integration" not in at_rest or "deliver" in at_rest
    for secret in (DISCORD_SECRET, QUERY_SECRET):
        assert secret not in shown and secret not in at_rest


async def test_stored_webhooks_with_a_clear_path_are_redacted_and_keep_working(
    database_url: str, tmp_path: Path
) -> None:
    """A store written before targets were redacted: the migration redacts them (and the logs' copies);
    the subscriptions keep delivering, their URL is in the encrypted credentials."""
    from matrix_mcp.store.postgres_schema import MIGRATIONS as PG
    from matrix_mcp.store.sqlite_schema import MIGRATIONS as SQ

    settings = Settings(database_url=database_url, artifacts_dir=tmp_path / "a")
    hook_settings = fast()
    with Receiver(path=f"/api/webhooks/123/{DISCORD_SECRET}") as rx:
        clear = f"http://127.0.0.1:{rx.server.port}/api/webhooks/123/{DISCORD_SECRET}"
        engine = await Engine.open(settings)
        try:
            hooks = Hooks(engine.store, database_url, hook_settings)
            hid = (await hooks.add(rx.url, ["*"])).webhook.id
        finally:
            await engine.close()
        last = (SQ if database_url.startswith("sqlite") else PG)[-1][0]
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
        await hooks.add(slack.url, ["*"], kind="slack")
        await hooks.add(
            f"{hook.url}?token={QUERY_SECRET}", ["*"], secret=WHSEC, headers={"X-Auth": QUERY_SECRET}
        )
        api = f"http://127.0.0.1:{bot.server.port}/api"
        await hooks.add(api, ["*"], kind="slack", token=BOT_TOKEN, options={"channel": "C1"})
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
