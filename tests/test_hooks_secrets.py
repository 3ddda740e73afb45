"""Events out under hostile receivers and careless operators: a receiver's answer is read to a bound and
within one deadline per attempt; no secret of a subscription reaches a listing, a resource, the stored
rows or any log at any level; refusals are said once and shown; `hooks test` fails when the ping does."""

from __future__ import annotations

import socket
import threading
import time
import tracemalloc

import anyio
import pytest

from matrix_mcp.engine import Engine
from matrix_mcp.integrations.service import Hooks
from matrix_mcp.integrations.settings import HookSettings
from tests.test_hooks_dispatch import dispatching, fast, work

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
