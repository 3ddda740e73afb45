"""Events out, side by side in one run (receivers on 127.0.0.1 only: bench/webhook_receiver.py):

1. latency: event committed (complete_item returned) → received by a local webhook, idle dispatcher,
   one event every 50 ms; the dispatcher in the committing process (how every server runs it) and in a
   separate `matrix-mcp dispatch` process. p50 / p99. Goal ≤ 100 ms / ≤ 500 ms.
2. throughput: 10,000 committed events → deliveries/s to one receiver, ÷ the same receiver fed the same
   signed bodies by a bare httpx2 loop (sequential; and 8 concurrent, shown). Goal ≥ 0.5×.
3. hot path: claim_items + complete_item per item over stdio with 3 active subscriptions ÷ with none,
   two servers on two stores, interleaved iteration by iteration, medians. Goal ≤ 1.05.
4. faults: the receiver answers 30 % 500s, the dispatcher process is SIGKILLed 3 times while the
   events are produced: events not accepted at least once by the receiver (lost). Goal 0.

    python bench/bench_webhooks.py [--database-url URL] [--events 10000] [--items 300]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.integrations import events as E
from matrix_mcp.integrations import signing
from matrix_mcp.integrations.crypto import new_key
from matrix_mcp.integrations.dispatcher import Dispatcher
from matrix_mcp.integrations.service import Hooks
from matrix_mcp.integrations.settings import HookSettings
from matrix_mcp.models import PackageSpec

HERE = Path(__file__).resolve().parent
KEY = new_key()
ENV = {
    "MATRIX_ENCRYPTION_KEY": KEY,
    "MATRIX_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
    "MATRIX_WEBHOOK_LEASE_SECONDS": "2",
    "MATRIX_WEBHOOK_POLL_SECONDS": "1",
    "MATRIX_WEBHOOK_CIRCUIT_RECOVERY": "0.5",
    "MATRIX_WEBHOOK_RETRY_SCHEDULE": ",".join(["0.2"] * 30),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Receiver:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, str(HERE / "webhook_receiver.py"), str(self.port)])
        for _ in range(200):
            try:
                httpx2.get(self.url + "/_log", timeout=1)
                return
            except httpx2.TransportError:
                time.sleep(0.05)
        raise RuntimeError("the receiver did not start")

    def log(self) -> list[list[Any]]:
        return list(httpx2.get(self.url + "/_log", timeout=30).json())

    def reset(self, fail: float = 0.0) -> None:
        httpx2.post(self.url + "/_reset", timeout=5)
        httpx2.post(self.url + "/_config", content=json.dumps({"fail": fail}), timeout=5)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def env_for(url: str, artifacts: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MATRIX_")}
    env.update(ENV, MATRIX_DATABASE_URL=url, MATRIX_ARTIFACTS_DIR=artifacts)
    env.update({k: v for k, v in os.environ.items() if k.startswith("MATRIX_WEBHOOK_")})  # overrides given
    return env


def spawn_dispatcher(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "matrix_mcp", "dispatch"], env=env)


def fresh_sqlite(tmp: Path, name: str) -> str:
    return f"sqlite:///{tmp / name}.db"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def produce(engine: Engine, run: str, n: int, pause: float = 0.0) -> dict[str, float]:
    """Complete n items; outcome_id → time the completion was committed."""
    await engine.plan_run(
        run, packages=[PackageSpec(name=f"p{i}", items=[f"i{j}" for j in range(n // 10)]) for i in range(10)]
    )
    committed: dict[str, float] = {}
    while len(committed) < n:
        for c in (await engine.claim_items(run, worker="w", limit=1 if pause else 100)).items:
            await engine.complete_item(c.outcome_id, lease_token=c.lease_token, content="x")
            committed[c.outcome_id] = time.time()
            if pause:
                await anyio.sleep(pause)
    return committed


async def wait_count(rx: Receiver, n: int, timeout: float, ok_only: bool = False) -> list[list[Any]]:
    deadline = time.monotonic() + timeout
    while True:
        log = rx.log()
        got = {r[2] for r in log if r[4] == 200} if ok_only else log
        if len(got) >= n or time.monotonic() > deadline:
            return log
        await anyio.sleep(0.2)


# ---- 1. latency -------------------------------------------------------------------------------------


async def latency(url: str, tmp: Path, rx: Receiver, n: int) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    for where in ("in-process", "separate process"):
        db = url if not url.startswith("sqlite") else fresh_sqlite(tmp, f"lat-{where[:2]}")
        settings = Settings(database_url=db, artifacts_dir=tmp / "a")
        engine = await Engine.open(settings)
        hs = HookSettings.from_env({**os.environ, **ENV})
        hooks = Hooks(engine.store, db, hs)
        created = await hooks.add(rx.url + "/lat", events=["outcome.completed"])
        rx.reset()
        proc = None
        try:
            async with anyio.create_task_group() as tg:
                if where == "in-process":
                    d = Dispatcher(engine.store, hs, hooks.keyring())
                    tg.start_soon(d.run)
                else:
                    proc = spawn_dispatcher(env_for(db, str(tmp / "a")))
                await anyio.sleep(1.5)  # idle
                committed = await produce(engine, f"lat-{time.time_ns()}", n, pause=0.05)
                log = await wait_count(rx, n, 30)
                tg.cancel_scope.cancel()
            arrived = {r[2]: r[0] for r in log}
            lat = [(arrived[o] - t) * 1000 for o, t in committed.items() if o in arrived]
            out[where] = (statistics.median(lat), pct(lat, 0.99))
        finally:
            if proc is not None:
                proc.kill()
                proc.wait()
            await hooks.remove(created.webhook.id)
            await engine.close()
    return out


# ---- 2. throughput -----------------------------------------------------------------------------------


async def throughput(url: str, tmp: Path, rx: Receiver, n: int) -> dict[str, float]:
    db = url if not url.startswith("sqlite") else fresh_sqlite(tmp, "tp")
    engine = await Engine.open(Settings(database_url=db, artifacts_dir=tmp / "a"))
    hs = HookSettings.from_env({**os.environ, **ENV})
    hooks = Hooks(engine.store, db, hs)
    created = await hooks.add(rx.url + "/tp", events=["outcome.completed"])
    secret = created.secret or ""
    try:
        await produce(engine, f"tp-{time.time_ns()}", n)
        rx.reset()
        d = Dispatcher(engine.store, hs, hooks.keyring())
        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(d.run)
            await wait_count(rx, n, 600)
            ours = time.perf_counter() - t0
            tg.cancel_scope.cancel()
        await d.aclose()
        # the same receiver, the same kind of signed bodies, through a bare httpx2 loop
        bodies = []
        for i in range(n):
            pub = E.PublicEvent(
                type="outcome.completed",
                seq=i,
                run="r",
                key=f"seq:{i}",
                created_at=time.time(),
                data={"seq": i, "outcome_id": f"o{i}"},
            )
            bodies.append((E.delivery_id("wh", pub.key), E.body(pub)))
        rx.reset()
        async with httpx2.AsyncClient(trust_env=False) as client:
            t0 = time.perf_counter()
            for mid, body in bodies:
                now = int(time.time())
                headers = {"content-type": "application/json", **signing.headers([secret], mid, now, body)}
                r = await client.post(rx.url + "/bare", content=body.encode(), headers=headers)
                r.raise_for_status()
            bare = time.perf_counter() - t0
            rx.reset()
            limiter = anyio.Semaphore(8)

            async def one(mid: str, body: str) -> None:
                async with limiter:
                    now = int(time.time())
                    headers = {
                        "content-type": "application/json",
                        **signing.headers([secret], mid, now, body),
                    }
                    (
                        await client.post(rx.url + "/bare8", content=body.encode(), headers=headers)
                    ).raise_for_status()

            t0 = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for mid, body in bodies:
                    tg.start_soon(one, mid, body)
            bare8 = time.perf_counter() - t0
    finally:
        await hooks.remove(created.webhook.id)
        await engine.close()
    return {"ours": n / ours, "bare": n / bare, "bare8": n / bare8}


# ---- 3. the stdio hot path ---------------------------------------------------------------------------


def server(url: str, artifacts: str, env: dict[str, str]) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "matrix_mcp", "--database-url", url, "--artifacts-dir", artifacts],
        env=env,
    )


async def two_calls(client: Client, run: str) -> float:
    t0 = time.perf_counter()
    got = await client.call_tool("claim_items", {"run": run, "worker": "bench"})
    item = (got.structured_content or {})["items"][0]
    done = await client.call_tool(
        "complete_item",
        {
            "outcome_id": item["outcome_id"],
            "lease_token": item["lease_token"],
            "metrics": {"lines_generated": 1},
        },
    )
    assert not done.is_error, done.content
    return time.perf_counter() - t0


async def hot_path(
    url: str, tmp: Path, receivers: list[Receiver], items: int, standalone: bool = False
) -> dict[str, float]:
    if url.startswith("sqlite"):
        tag = "side" if standalone else "in"
        url_none, url_subs = fresh_sqlite(tmp, f"hot-none-{tag}"), fresh_sqlite(tmp, f"hot-subs-{tag}")
    else:
        url_none = url_subs = (
            url  # one database: subscriptions are global, so use the two-store SQLite figure
        )
    engine = await Engine.open(Settings(database_url=url_subs, artifacts_dir=tmp / "a"))
    hooks = Hooks(engine.store, url_subs, HookSettings.from_env({**os.environ, **ENV}))
    for i, rx in enumerate(receivers):
        await hooks.add(rx.url + f"/hot{i}", events=["*"])
    await engine.close()
    for rx in receivers:
        rx.reset()
    env = env_for(url_subs, str(tmp / "a"))
    side = spawn_dispatcher(env) if standalone else None  # takes the leases before the server starts
    if side is not None:
        await anyio.sleep(2.0)
    times: dict[str, list[float]] = {"none": [], "three": []}
    run = f"hot-{time.time_ns()}"
    packages = [{"name": f"p{i}", "items": [f"i{j}" for j in range(items // 10)]} for i in range(10)]
    async with (
        Client(
            server(url_none, str(tmp / "a"), {**env, "MATRIX_DATABASE_URL": url_none}), mode="legacy"
        ) as a,
        Client(server(url_subs, str(tmp / "a"), env), mode="legacy") as b,
    ):
        await a.call_tool("plan_run", {"name": run, "packages": packages})
        await b.call_tool("plan_run", {"name": run, "packages": packages})
        for _ in range((items // 10) * 10):
            times["none"].append(await two_calls(a, run))
            times["three"].append(await two_calls(b, run))
        await anyio.sleep(2.0)
    cpu = 0.0
    if side is not None:
        side.kill()
        # the dispatcher's CPU: steadier than wall time on a busy machine
        _, _, usage = await anyio.to_thread.run_sync(os.wait4, side.pid, 0)
        side.returncode = -9
        cpu = usage.ru_utime + usage.ru_stime
    got = [len(rx.log()) for rx in receivers]
    return {
        "none": statistics.median(times["none"]),
        "three": statistics.median(times["three"]),
        "delivered_min": float(min(got)),
        "cpu_per_delivery": cpu / max(1, sum(got)),
    }


# ---- 4. faults ---------------------------------------------------------------------------------------


async def faults(url: str, tmp: Path, rx: Receiver, n: int) -> dict[str, int]:
    db = url if not url.startswith("sqlite") else fresh_sqlite(tmp, "faults")
    engine = await Engine.open(Settings(database_url=db, artifacts_dir=tmp / "a"))
    hooks = Hooks(engine.store, db, HookSettings.from_env({**os.environ, **ENV}))
    created = await hooks.add(rx.url + "/faults", events=["outcome.completed"])
    rx.reset(fail=0.3)
    env = env_for(db, str(tmp / "a"))
    procs = [spawn_dispatcher(env)]
    kills = 0
    try:
        async with anyio.create_task_group() as tg:

            async def killer() -> None:
                nonlocal kills
                for _ in range(3):
                    await anyio.sleep(1.5)
                    procs[-1].send_signal(signal.SIGKILL)
                    procs[-1].wait()
                    kills += 1
                    procs.append(spawn_dispatcher(env))

            tg.start_soon(killer)
            committed = await produce(engine, f"faults-{time.time_ns()}", n, pause=0.002)
        log = await wait_count(rx, n, 300, ok_only=True)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        await hooks.remove(created.webhook.id)
        await engine.close()
    accepted = {r[2] for r in log if r[4] == 200}
    ok_ids = [r[1] for r in log if r[4] == 200]
    return {
        "events": len(committed),
        "lost": len(set(committed) - accepted),
        "requests": len(log),
        "answered_500": sum(1 for r in log if r[4] == 500),
        "accepted_twice": len(ok_ids) - len(set(ok_ids)),
        "kills": kills,
    }


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--database-url", default=None, help="default: a fresh SQLite file per figure")
    p.add_argument("--events", type=int, default=10_000)
    p.add_argument("--items", type=int, default=300)
    p.add_argument("--latency-events", type=int, default=200)
    p.add_argument("--fault-events", type=int, default=2000)
    p.add_argument("--only", default="1,2,3,4", help="which figures, e.g. 2,3")
    args = p.parse_args()
    only = {int(x) for x in args.only.split(",")}
    os.environ.update({k: v for k, v in ENV.items() if k not in os.environ})
    receivers = [Receiver() for _ in range(3)]
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            url = args.database_url or "sqlite:///"
            backend = "PostgreSQL" if not url.startswith("sqlite") else "SQLite"
            print(f"backend: {backend}; receivers: bench/webhook_receiver.py (uvicorn) on 127.0.0.1")
            lat = await latency(url, tmp, receivers[0], args.latency_events) if 1 in only else {}
            for where, (p50, p99) in lat.items():
                print(
                    f"1. committed → received ({where}, idle, {args.latency_events} events): p50 {p50:.1f} ms, p99 {p99:.1f} ms  (goal ≤ 100 / ≤ 500)"
                )
            if 2 in only:
                tp = await throughput(url, tmp, receivers[0], args.events)
                print(
                    f"2. {args.events} events: dispatcher {tp['ours']:.0f} deliveries/s; bare httpx2 loop {tp['bare']:.0f}/s"
                    f" (8 concurrent: {tp['bare8']:.0f}/s); ratio {tp['ours'] / tp['bare']:.2f}×  (goal ≥ 0.5×)"
                )
            if 3 in only:
                for standalone in (False, True):
                    hot = await hot_path(
                        url if url.startswith("sqlite") else "sqlite:///",
                        tmp,
                        receivers,
                        args.items,
                        standalone,
                    )
                    where = "a `matrix-mcp dispatch` process" if standalone else "the server itself"
                    print(
                        f"3. claim+complete over stdio, dispatched by {where}: {hot['three'] * 1000:.2f} ms with 3"
                        f" subscriptions, {hot['none'] * 1000:.2f} ms with none; ratio {hot['three'] / hot['none']:.3f}"
                        f"  (goal ≤ 1.05; each receiver got ≥ {hot['delivered_min']:.0f})"
                    )
                    if standalone:
                        print(
                            f"   the dispatch process's CPU (user+sys, incl. start-up): {hot['cpu_per_delivery'] * 1000:.3f} ms per delivery"
                        )
            if 4 in only:
                f = await faults(url, tmp, receivers[1], args.fault_events)
                print(
                    f"4. faults ({f['events']} events, 30 % 500s, dispatcher SIGKILLed {f['kills']}×): lost {f['lost']}"
                    f"  (goal 0); {f['requests']} requests, {f['answered_500']} answered 500, {f['accepted_twice']} accepted twice"
                )
    finally:
        for rx in receivers:
            rx.close()


if __name__ == "__main__":
    anyio.run(main)
