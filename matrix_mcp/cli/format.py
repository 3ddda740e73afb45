"""What the commands print, and how to start this server as a subprocess: shared by `main`, `demo` and
`work`, which import it (never each other)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from matrix_mcp.config import Settings

RUNS_ROW = "{:<30} {:<9} {:>13} {:>10} {:>8} {:>8} {:>7} {:>9}"  # `status` with no run: one row per run


def format_status(status: Any) -> str:
    c = status.counts
    blocked = f", {c.blocked} blocked" if c.blocked else ""  # waiting for dependencies
    lines = [
        f"run {status.run} ({status.state}) — {c.complete}/{c.total} complete, {c.failed} failed, "
        f"{c.generating} generating, {c.pending} pending{blocked}, {c.cancelled} cancelled"
    ]
    if status.throughput_per_minute:
        eta = "–" if status.eta_seconds is None else f"{status.eta_seconds:.0f} s"
        lines.append(f"throughput {status.throughput_per_minute:.1f} items/min, ETA {eta}")
    # a run with dependencies also shows each package's blocked items and what it waits for
    staged = any(p.blocked_items or p.after for p in status.packages)
    lines.append(
        f"{'package':<24} {'done':>9} {'failed':>6} {'success':>8} {'avg s':>7} {'p90 s':>7} {'lines':>7} {'quality':>7}"
        + (f" {'blocked':>7}  after" if staged else "")
    )
    for p in status.packages:
        lines.append(
            f"{p.package[:24]:<24} {p.completed_items:>4}/{p.total_items:<4} {p.failed_items:>6} "
            f"{_fmt(p.success_rate, '{:.0%}'):>8} {_fmt(p.avg_duration_seconds, '{:.2f}'):>7} "
            f"{_fmt(p.p90_duration_seconds, '{:.2f}'):>7} {p.total_lines_generated:>7.0f} "
            f"{_fmt(p.average_quality_score, '{:.2f}'):>7}"
            + (f" {p.blocked_items:>7}  {', '.join(p.after) or '-'}" if staged else "")
        )
    return "\n".join(lines)


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def server_command(settings: Settings) -> tuple[str, list[str]]:
    """How to start this server as a subprocess with the same store (used by the demo and tests)."""
    return sys.executable, [
        "-m",
        "matrix_mcp",
        "--database-url",
        settings.database_url,
        "--artifacts-dir",
        str(Path(settings.artifacts_dir).absolute()),
    ]
