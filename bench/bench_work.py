"""`matrix-mcp work -j 8 -- cat` draining a run ÷ `xargs -P 8` running `cat` over the same inputs, in one run.

Both spawn one `cat` per item, 8 at a time, over the same 2,000 JSON documents (the one `work` writes to each
command's stdin; for xargs, one file per document). `work` also claims each item, stores `cat`'s stdout as
the item's content (an artifact) with its metrics, and heartbeats; xargs throws the output away. Wall-clock
items/s of each, alternating which goes first, medians; `work`'s time includes its start-up.

    python bench/bench_work.py [--items 2000] [--jobs 8] [--rounds 3] [--database-url URL]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.models import PackageSpec


async def plan(settings: Settings, run: str, items: int) -> list[dict[str, object]]:
    """Plan the run; return the documents `work` will feed the commands."""
    per = max(1, items // 20)
    packages = [PackageSpec(name=f"pkg-{p}", items=[f"item-{i}" for i in range(per)]) for p in range(20)]
    engine = await Engine.open(settings)
    try:
        await engine.plan_run(run, packages=packages, goal="bench")
        page = await engine.list_outcomes(run=run, limit=1000)
        docs = list(page.outcomes)
        while page.next_cursor:
            page = await engine.list_outcomes(run=run, limit=1000, cursor=page.next_cursor)
            docs += page.outcomes
    finally:
        await engine.close()
    return [
        {
            "run": run,
            "package": o.package,
            "item": o.item,
            "outcome_id": o.id,
            "attempt": 1,
            "specifications": None,
            "briefing": "bench",
        }
        for o in docs
    ]


def xargs_rate(inputs: Path, files: list[Path], jobs: int) -> float:
    names = "\n".join(str(f) for f in files).encode()
    t0 = time.perf_counter()
    subprocess.run(
        ["xargs", "-P", str(jobs), "-n", "1", "cat"], input=names, stdout=subprocess.DEVNULL, check=True
    )
    return len(files) / (time.perf_counter() - t0)


def work_rate(settings: Settings, run: str, items: int, jobs: int) -> tuple[float, str]:
    cmd = [
        sys.executable,
        "-m",
        "matrix_mcp",
        "--database-url",
        settings.database_url,
        "--artifacts-dir",
        str(settings.artifacts_dir),
        "work",
        run,
        "-j",
        str(jobs),
        "--",
        "cat",
    ]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr[-2000:]
    summary = [line for line in done.stdout.splitlines() if line.startswith("this worker")]
    assert f"{items} completed" in summary[0], done.stdout
    return items / elapsed, summary[0]


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    args = ap.parse_args()
    if shutil.which("xargs") is None or shutil.which("cat") is None:
        sys.exit("needs xargs and cat on PATH")
    ours: list[float] = []
    theirs: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/bench.db"
        settings = Settings(database_url=url, artifacts_dir=Path(tmp) / "artifacts")
        backend = url.split(":", 1)[0]
        for r in range(args.rounds):
            run = f"work-bench-{time.time_ns()}"
            docs = await plan(settings, run, args.items)
            inputs = Path(tmp) / f"inputs-{r}"
            inputs.mkdir()
            files = []
            for n, doc in enumerate(docs):
                f = inputs / f"{n}.json"
                f.write_text(json.dumps(doc, ensure_ascii=False) + "\n")
                files.append(f)
            if r % 2 == 0:
                rate, line = work_rate(settings, run, len(docs), args.jobs)
                ours.append(rate)
                theirs.append(xargs_rate(inputs, files, args.jobs))
            else:
                theirs.append(xargs_rate(inputs, files, args.jobs))
                rate, line = work_rate(settings, run, len(docs), args.jobs)
                ours.append(rate)
            print(
                f"round {r + 1}: work {ours[-1]:.0f} items/s, xargs {theirs[-1]:.0f} items/s, "
                f"ratio {ours[-1] / theirs[-1]:.2f} ({line})"
            )
    w, x = statistics.median(ours), statistics.median(theirs)
    print(
        f"[{backend}] {args.items} items, -j {args.jobs}: matrix-mcp work -- cat {w:.0f} items/s (wall clock, start-up "
        f"included) ÷ xargs -P {args.jobs} cat {x:.0f} items/s = {w / x:.2f} (goal ≥ 0.5; median of {args.rounds})"
    )


if __name__ == "__main__":
    anyio.run(main)
