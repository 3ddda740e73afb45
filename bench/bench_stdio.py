"""Per-item cost over stdio and cold start, against the SDK's own floor, in one run.

- per item: `claim_items` + `complete_item` on matrix-mcp ÷ two calls of a trivial echo tool on the same
  SDK (bench/echo_server.py), interleaved iteration by iteration, medians; also the same two calls on
  matrix-mcp with a no-op engine (bench/noop_engine_server.py): what the SDK spends on our tools alone;
  and with one durable write per call and nothing else (bench/floor_server.py): the floor any store that
  persists each claim and completion stands on.
- cold start: spawn → connected → first tool result, matrix-mcp (`list_runs`) ÷ echo (`echo`), medians
  (`--cold-only`: this and the tools/list size alone).
- the size of the tools/list result on the wire, for all tools and for `--toolset worker`.
- the one-call worker loop (issue 12): `complete_item(claim_next=1)` with 4 KiB of content ÷ two echo calls,
  interleaved, medians; tool calls per item; result bytes per item cycle (the JSON text of the results a
  worker reads: claim + report), one-call loop next to the two-call loop and to the full records.

    python bench/bench_stdio.py [--items 400] [--starts 15] [--mode legacy|auto] [--database-url URL]
                                [--loop-only | --cold-only]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

HERE = Path(__file__).resolve().parent


def matrix_params(
    url: str, artifacts: str, *extra: str, env: dict[str, str] | None = None
) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "matrix_mcp", "--database-url", url, "--artifacts-dir", artifacts, *extra],
        env=None if env is None else {**os.environ, **env},
    )


def noop_params(url: str, artifacts: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=[str(HERE / "noop_engine_server.py"), "--database-url", url, "--artifacts-dir", artifacts],
    )


def floor_params(url: str, artifacts: str, contract: bool = False) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=[str(HERE / "floor_server.py"), "--database-url", url, "--artifacts-dir", artifacts]
        + (["--contract"] if contract else []),
    )


def echo_params() -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=[str(HERE / "echo_server.py")])


CONTENT_4K = ("x" * 63 + "\n") * 64  # 4 KiB, 64 lines


async def two_calls(client: Client, run: str, content: str | None = None) -> tuple[float, dict[str, Any]]:
    """claim_items + complete_item, as a worker makes them: seconds, and the claimed item."""
    t0 = time.perf_counter()
    got = await client.call_tool("claim_items", {"run": run, "worker": "bench"})
    item = (got.structured_content or {})["items"][0]
    report: dict[str, Any] = {
        "outcome_id": item["outcome_id"],
        "lease_token": item["lease_token"],
        "metrics": {"lines_generated": 1},
    }
    if content is not None:
        report["content"] = content
    done = await client.call_tool("complete_item", report)
    elapsed = time.perf_counter() - t0
    assert not done.is_error, done.content
    return elapsed, item


async def two_calls_time(client: Client, run: str) -> float:
    return (await two_calls(client, run))[0]


async def per_item(url: str, artifacts: str, items: int, mode: str) -> dict[str, float]:
    """Median seconds per item of each server, interleaved iteration by iteration."""
    times: dict[str, list[float]] = {
        "ours": [],
        "content": [],
        "blob": [],
        "echo": [],
        "noop": [],
        "durable": [],
        "contract": [],
    }
    run = f"bench-{time.time_ns()}"
    sqlite = url.startswith("sqlite")
    async with (
        Client(matrix_params(url, artifacts), mode=mode) as m,
        # content never inline: blob + fsync before the commit, as before issue 11
        Client(matrix_params(url, artifacts, env={"MATRIX_INLINE_CONTENT_BYTES": "1"}), mode=mode) as b,
        Client(echo_params(), mode=mode) as e,
        Client(noop_params(url, artifacts), mode=mode) as z,
        Client(floor_params(url, artifacts), mode=mode) as d,
        Client(floor_params(url, artifacts, contract=True) if sqlite else echo_params(), mode=mode) as k,
    ):
        per_pkg = max(1, items // 10)
        packages = [{"name": f"p{i}", "items": [f"i{j}" for j in range(per_pkg)]} for i in range(10)]
        await m.call_tool("plan_run", {"name": run, "packages": packages})
        await m.call_tool("plan_run", {"name": run + "-c", "packages": packages})
        await m.call_tool("plan_run", {"name": run + "-b", "packages": packages})
        for _ in range(20):  # warm both
            await e.call_tool("echo", {"text": "x"})
        for _ in range(per_pkg * 10):
            elapsed, item = await two_calls(m, run)
            times["ours"].append(elapsed)
            t0 = time.perf_counter()
            await e.call_tool("echo", {"text": item["outcome_id"]})
            await e.call_tool("echo", {"text": item["lease_token"]})
            times["echo"].append(time.perf_counter() - t0)
            times["content"].append((await two_calls(m, run + "-c", CONTENT_4K))[0])
            times["blob"].append((await two_calls(b, run + "-b", CONTENT_4K))[0])
            times["noop"].append(await two_calls_time(z, run))
            times["durable"].append(await two_calls_time(d, run))
            if sqlite:
                times["contract"].append(await two_calls_time(k, run))
    return {name: statistics.median(t) for name, t in times.items() if t}


async def cold_start(params: StdioServerParameters, tool: str, args: dict[str, str], mode: str) -> float:
    t0 = time.perf_counter()
    async with Client(params, mode=mode) as c:
        result = await c.call_tool(tool, args)
        elapsed = time.perf_counter() - t0
        assert not result.is_error
    return elapsed


async def tools_list_bytes(url: str, artifacts: str, mode: str, *extra: str) -> int:
    async with Client(matrix_params(url, artifacts, *extra), mode=mode) as c:
        result = await c.list_tools()
        return len(result.model_dump_json(by_alias=True, exclude_none=True))


def text_bytes(result: Any) -> int:
    """Bytes of the result's JSON text (the same JSON as its structuredContent, compact)."""
    assert not result.is_error, result.content
    return len(result.content[0].text.encode())


async def one_call_loop(url: str, artifacts: str, items: int, mode: str) -> dict[str, float]:
    """The worker loop of issue 12, interleaved with two echo calls per item: medians and byte counts."""
    run = f"loop-{time.time_ns()}"
    calls = 0
    one: list[float] = []
    echo2: list[float] = []
    cycle_bytes: list[int] = []
    noop: list[float] = []
    async with (
        Client(matrix_params(url, artifacts, "--toolset", "worker"), mode=mode) as w,
        Client(matrix_params(url, artifacts), mode=mode) as m,
        Client(echo_params(), mode=mode) as e,
        Client(noop_params(url, artifacts), mode=mode) as z,
    ):
        per_pkg = max(1, items // 10)
        packages = [{"name": f"pkg-{i}", "items": [f"item-{j}" for j in range(per_pkg)]} for i in range(10)]
        await m.call_tool("plan_run", {"name": run, "packages": packages, "goal": "a goal"})
        await m.call_tool("plan_run", {"name": run + "-2", "packages": packages, "goal": "a goal"})
        for _ in range(20):
            await e.call_tool("echo", {"text": "x"})
        got = await w.call_tool("claim_items", {"run": run, "worker": "bench"})
        calls += 1
        claim_bytes = text_bytes(got)
        item = (got.structured_content or {})["items"][0]
        done = 0
        while item is not None:
            args = {
                "outcome_id": item["outcome_id"],
                "lease_token": item["lease_token"],
                "content": CONTENT_4K,
                "metrics": {"lines_generated": 64},
                "claim_next": 1,
            }
            t0 = time.perf_counter()
            res = await w.call_tool("complete_item", args)
            one.append(time.perf_counter() - t0)
            calls += 1
            done += 1
            cycle_bytes.append(text_bytes(res))
            t0 = time.perf_counter()
            await e.call_tool("echo", {"text": item["outcome_id"]})
            await e.call_tool("echo", {"text": item["lease_token"]})
            echo2.append(time.perf_counter() - t0)
            t0 = time.perf_counter()  # the same call on a no-op engine: the SDK's cost of its shapes
            await z.call_tool("complete_item", args)
            noop.append(time.perf_counter() - t0)
            nxt = (res.structured_content or {}).get("next") or []
            item = nxt[0] if nxt else None
        # the two-call loop on the same server (compact results), and with the full records (detail=full)
        two_call: list[int] = []
        full: list[int] = []
        for n in range(min(50, per_pkg * 10)):
            got = await w.call_tool("claim_items", {"run": run + "-2", "worker": "bench"})
            it = (got.structured_content or {})["items"][0]
            ref = {"outcome_id": it["outcome_id"], "lease_token": it["lease_token"], "content": "x"}
            if n % 2:
                res = await w.call_tool("complete_item", ref)
                two_call.append(text_bytes(got) + text_bytes(res))
            else:
                res = await w.call_tool("complete_item", {**ref, "detail": "full"})
                full.append(text_bytes(got) + text_bytes(res))
    return {
        "one": statistics.median(one),
        "noop": statistics.median(noop),
        "echo2": statistics.median(echo2),
        "calls_per_item": calls / done,
        "cycle_bytes": statistics.median(cycle_bytes),
        "cycle_bytes_max": max(cycle_bytes),
        "claim_bytes": claim_bytes,
        "two_call_bytes": statistics.median(two_call),
        "full_bytes": statistics.median(full),
        "items": done,
    }


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=400)
    ap.add_argument("--starts", type=int, default=15)
    ap.add_argument("--mode", choices=["legacy", "auto"], default="legacy")
    ap.add_argument("--database-url", default=None)
    ap.add_argument("--loop-only", action="store_true", help="only the one-call loop figures (issue 12)")
    ap.add_argument("--cold-only", action="store_true", help="only the cold start and the tools/list size")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/bench.db"
        backend = url.split(":", 1)[0]
        artifacts = f"{tmp}/artifacts"
        if args.cold_only:
            await cold_starts(url, artifacts, args.starts, args.mode)
            return
        loop = await one_call_loop(url, artifacts, args.items, args.mode)
        tag = f"[{backend}, {args.mode}]"
        print(
            f"{tag} one-call loop: complete_item(claim_next=1) with 4 KiB content {loop['one'] * 1000:.2f} ms, "
            f"two echo calls {loop['echo2'] * 1000:.2f} ms, ratio {loop['one'] / loop['echo2']:.2f} (goal ≤ 0.8); "
            f"{loop['items']} items"
        )
        print(
            f"{tag}   the same call on a no-op engine (bench/noop_engine_server.py, canned answer with `next`): "
            f"{loop['noop'] * 1000:.2f} ms, ratio {loop['noop'] / loop['echo2']:.2f} — the SDK's cost of the call alone"
        )
        print(
            f"{tag}   tool calls per item: {loop['calls_per_item']:.3f} (goal 1; one claim_items, then one "
            f"report per item)"
        )
        print(
            f"{tag}   result bytes per item cycle: {loop['cycle_bytes']:.0f} (max {loop['cycle_bytes_max']}; goal "
            f"≤ 300; the report's ack carrying the next item); the first claim_items {loop['claim_bytes']} bytes; "
            f"two-call loop with compact results {loop['two_call_bytes']:.0f}; with the full record "
            f"(detail=full) {loop['full_bytes']:.0f}"
        )
        worker_list = await tools_list_bytes(url, artifacts, args.mode, "--toolset", "worker")
        all_list = await tools_list_bytes(url, artifacts, args.mode)
        print(
            f"{tag} tools/list with --toolset worker: {worker_list} bytes ({worker_list / 1024:.2f} KiB; goal "
            f"≤ 6 KiB); all tools {all_list} bytes ({all_list / 1024:.1f} KiB)"
        )
        if args.loop_only:
            return
        t = await per_item(url, artifacts, args.items, args.mode)
        ours, floor, noop, durable = t["ours"], t["echo"], t["noop"], t["durable"]
        print(
            f"[{backend}, {args.mode}] per item over stdio: claim+complete {ours * 1000:.2f} ms, "
            f"two echo calls {floor * 1000:.2f} ms, ratio {ours / floor:.2f} (goal ≤ 1.3)"
        )
        print(
            f"[{backend}, {args.mode}]   claim+complete with 4 KiB of content: {t['content'] * 1000:.2f} ms, "
            f"ratio {t['content'] / floor:.2f} (goal ≤ 1.35; kept in the store with the report); the same with "
            f"MATRIX_INLINE_CONTENT_BYTES=1 (blob + fsync before the commit, as before): {t['blob'] * 1000:.2f} ms, "
            f"ratio {t['blob'] / floor:.2f}"
        )
        print(
            f"[{backend}, {args.mode}]   the same two tools on a no-op engine (bench/noop_engine_server.py): "
            f"{noop * 1000:.2f} ms, ratio {noop / floor:.2f} — the SDK's cost of our tools' shapes alone"
        )
        print(
            f"[{backend}, {args.mode}]   the same two tools making one durable write each and nothing else "
            f"(bench/floor_server.py): {durable * 1000:.2f} ms, ratio {durable / floor:.2f} — the lowest any "
            "store that persists each claim and completion can reach here"
        )
        if "contract" in t:
            print(
                f"[{backend}, {args.mode}]   the same, on the store's tables, with only what the contract keeps in the "
                f"same transaction (counters, metric rows, event; bench/floor_server.py --contract): "
                f"{t['contract'] * 1000:.2f} ms, ratio {t['contract'] / floor:.2f} — a lower bound for a correct store"
            )
        await cold_starts(url, artifacts, args.starts, args.mode)


async def cold_starts(url: str, artifacts: str, starts: int, mode: str) -> None:
    """Cold start ÷ echo, paired starts alternating which goes first; then the tools/list size. The first
    start of a fresh checkout builds the tools the SDK's way and caches them (MATRIX_CACHE_DIR): that one is
    left out, as it is once per installation."""
    backend = url.split(":", 1)[0]
    await cold_start(matrix_params(url, artifacts), "list_runs", {}, mode)  # fills the definition cache
    m_starts, e_starts, pairs = [], [], []
    for i in range(starts):  # back to back, alternating which goes first: drift hits both alike
        first_ours = i % 2 == 0
        if not first_ours:
            e_starts.append(await cold_start(echo_params(), "echo", {"text": "x"}, mode))
        m_starts.append(await cold_start(matrix_params(url, artifacts), "list_runs", {}, mode))
        if first_ours:
            e_starts.append(await cold_start(echo_params(), "echo", {"text": "x"}, mode))
        pairs.append(m_starts[-1] / e_starts[-1])
    m_med, e_med = statistics.median(m_starts), statistics.median(e_starts)
    print(
        f"[{backend}, {mode}] cold start to first tool result: matrix-mcp {m_med * 1000:.0f} ms, "
        f"echo {e_med * 1000:.0f} ms, ratio of medians {m_med / e_med:.2f}, median of {len(pairs)} paired "
        f"ratios {statistics.median(pairs):.2f} (goal ≤ 1.15)"
    )
    size = await tools_list_bytes(url, artifacts, mode)
    print(
        f"[{backend}, {mode}] tools/list result: {size} bytes of JSON ({size / 1024:.1f} KiB; goal ≤ 32 KiB)"
    )


if __name__ == "__main__":
    anyio.run(main)
