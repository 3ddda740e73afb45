"""Per-item cost over stdio and cold start, against the SDK's own floor, in one run.

- per item: `claim_items` + `complete_item` on matrix-mcp ÷ two calls of a trivial echo tool on the same
  SDK (bench/echo_server.py), interleaved iteration by iteration, medians; also the same two calls on
  matrix-mcp with a no-op engine (bench/noop_engine_server.py): what the SDK spends on our tools alone;
  and with one durable write per call and nothing else (bench/floor_server.py): the floor any store that
  persists each claim and completion stands on.
- cold start: spawn → connected → first tool result, matrix-mcp (`list_runs`) ÷ echo (`echo`), medians.
- the size of the tools/list result on the wire.

    python bench/bench_stdio.py [--items 400] [--starts 15] [--mode legacy|auto] [--database-url URL]
"""

from __future__ import annotations

import argparse
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


def matrix_params(url: str, artifacts: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, args=["-m", "matrix_mcp", "--database-url", url, "--artifacts-dir", artifacts]
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


async def two_calls(client: Client, run: str) -> tuple[float, dict[str, Any]]:
    """claim_items + complete_item, as a worker makes them: seconds, and the claimed item."""
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
    elapsed = time.perf_counter() - t0
    assert not done.is_error, done.content
    return elapsed, item


async def two_calls_time(client: Client, run: str) -> float:
    return (await two_calls(client, run))[0]


async def per_item(url: str, artifacts: str, items: int, mode: str) -> dict[str, float]:
    """Median seconds per item of each server, interleaved iteration by iteration."""
    times: dict[str, list[float]] = {"ours": [], "echo": [], "noop": [], "durable": [], "contract": []}
    run = f"bench-{time.time_ns()}"
    sqlite = url.startswith("sqlite")
    async with (
        Client(matrix_params(url, artifacts), mode=mode) as m,
        Client(echo_params(), mode=mode) as e,
        Client(noop_params(url, artifacts), mode=mode) as z,
        Client(floor_params(url, artifacts), mode=mode) as d,
        Client(floor_params(url, artifacts, contract=True) if sqlite else echo_params(), mode=mode) as k,
    ):
        per_pkg = max(1, items // 10)
        packages = [{"name": f"p{i}", "items": [f"i{j}" for j in range(per_pkg)]} for i in range(10)]
        await m.call_tool("plan_run", {"name": run, "packages": packages})
        for _ in range(20):  # warm both
            await e.call_tool("echo", {"text": "x"})
        for _ in range(per_pkg * 10):
            elapsed, item = await two_calls(m, run)
            times["ours"].append(elapsed)
            t0 = time.perf_counter()
            await e.call_tool("echo", {"text": item["outcome_id"]})
            await e.call_tool("echo", {"text": item["lease_token"]})
            times["echo"].append(time.perf_counter() - t0)
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


async def tools_list_bytes(url: str, artifacts: str, mode: str) -> int:
    async with Client(matrix_params(url, artifacts), mode=mode) as c:
        result = await c.list_tools()
        return len(result.model_dump_json(by_alias=True, exclude_none=True))


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=400)
    ap.add_argument("--starts", type=int, default=15)
    ap.add_argument("--mode", choices=["legacy", "auto"], default="legacy")
    ap.add_argument("--database-url", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/bench.db"
        backend = url.split(":", 1)[0]
        artifacts = f"{tmp}/artifacts"
        t = await per_item(url, artifacts, args.items, args.mode)
        ours, floor, noop, durable = t["ours"], t["echo"], t["noop"], t["durable"]
        print(
            f"[{backend}, {args.mode}] per item over stdio: claim+complete {ours * 1000:.2f} ms, "
            f"two echo calls {floor * 1000:.2f} ms, ratio {ours / floor:.2f} (goal ≤ 1.3)"
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
        m_starts, e_starts, pairs = [], [], []
        for i in range(args.starts):  # back to back, alternating which goes first: drift hits both alike
            first_ours = i % 2 == 0
            if not first_ours:
                e_starts.append(await cold_start(echo_params(), "echo", {"text": "x"}, args.mode))
            m_starts.append(await cold_start(matrix_params(url, artifacts), "list_runs", {}, args.mode))
            if first_ours:
                e_starts.append(await cold_start(echo_params(), "echo", {"text": "x"}, args.mode))
            pairs.append(m_starts[-1] / e_starts[-1])
        m_med, e_med = statistics.median(m_starts), statistics.median(e_starts)
        print(
            f"[{backend}, {args.mode}] cold start to first tool result: matrix-mcp {m_med * 1000:.0f} ms, "
            f"echo {e_med * 1000:.0f} ms, ratio of medians {m_med / e_med:.2f}, median of {len(pairs)} paired "
            f"ratios {statistics.median(pairs):.2f} (goal ≤ 1.15)"
        )
        size = await tools_list_bytes(url, artifacts, args.mode)
        print(
            f"[{backend}, {args.mode}] tools/list result: {size} bytes of JSON ({size / 1024:.1f} KiB; goal ≤ 32 KiB)"
        )


if __name__ == "__main__":
    anyio.run(main)
