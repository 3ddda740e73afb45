"""Exporting a run's outcomes as JSON Lines or CSV."""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Any, Literal

import anyio

from matrix_mcp.artifacts import safe_component
from matrix_mcp.engine.core import EngineCore
from matrix_mcp.models import ExportResult


class Export(EngineCore):
    async def export_outcomes(self, run: str, *, format: Literal["jsonl", "csv"] = "jsonl") -> ExportResult:
        """Write a run's outcomes to a file under the artifacts root, as JSON Lines or CSV.

        Args:
            run: the run's name or id.
            format: "jsonl" or "csv".

        Returns:
            The file's path and URI, how many outcomes and bytes it holds.

        Raises:
            NotFound: no such run.
            ArtifactError: the file cannot be written.
        """
        info = await self.run_info(run)
        data, count = await self.export_bytes(info.id, format=format)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        name = f"{safe_component(info.name)}-{stamp}.{format}"
        path = await anyio.to_thread.run_sync(self.artifacts.write_export, name, data)
        return ExportResult(
            run=info.name, format=format, count=count, path=str(path), bytes=len(data), uri=path.as_uri()
        )

    async def export_bytes(self, run_id: str, *, format: Literal["jsonl", "csv"]) -> tuple[bytes, int]:
        """A run's outcomes as JSON Lines or CSV bytes (nested JSON in CSV cells), and how many; each with
        `usage`, what its attempts reported, summed.

        Args:
            run_id: the run's id.
            format: "jsonl" or "csv".
        """
        buf = io.StringIO()
        count = 0
        writer: Any = None
        spent = await self.store.outcome_usage(run_id)
        async for outcome in self.store.iter_outcomes(run_id):
            record = outcome.model_dump(mode="json")
            usage = spent.get(outcome.id)  # summed over its attempts; null when it reported none
            record["usage"] = usage.model_dump(mode="json", exclude_none=True) if usage is not None else None
            if format == "jsonl":
                buf.write(json.dumps(record, ensure_ascii=False) + "\n")
            else:
                if writer is None:
                    writer = csv.DictWriter(buf, fieldnames=list(record))
                    writer.writeheader()
                writer.writerow(
                    {
                        k: json.dumps(v, ensure_ascii=False) if isinstance(v, dict | list) else v
                        for k, v in record.items()
                    }
                )
            count += 1
        return buf.getvalue().encode(), count
