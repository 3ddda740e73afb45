"""The seed's tracking API: record outcomes and their status directly, list and summarise them."""

from __future__ import annotations

from typing import Any

from matrix_mcp.artifacts import in_run_folder
from matrix_mcp.engine.core import EngineCore
from matrix_mcp.models import (
    IntegrationEvent,
    Outcome,
    OutcomePage,
    PackageSummary,
    RecordResult,
    Status,
    SystemMetrics,
)
from matrix_mcp.store.params import NewRecord, OutcomeFilter, Report, StatusChange


class Tracking(EngineCore):
    async def record_outcome(
        self,
        *,
        run: str,
        package: str,
        item: str,
        status: Status = "pending",
        outcome_type: str | None = None,
        outcome_path: str | None = None,
        specifications: dict[str, Any] | str | None = None,
        metrics: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        error_message: str | None = None,
        created_by: str | None = None,
    ) -> RecordResult:
        info = await self.run_info(run)
        self._name(package, "package")
        self._name(item, "item")
        if outcome_type is not None:
            self._name(outcome_type, "outcome_type")
        if outcome_path is not None:
            self.artifacts.check_path(outcome_path)
            outcome_path = self.artifacts.check_path(in_run_folder(info.name, outcome_path))
        metrics = self._json(metrics, "metrics") or {}
        metadata = self._json(metadata, "metadata") or {}
        self._json(specifications, "specifications")
        if status == "complete":
            self._check_report(info.policy.outcome_schema, metrics, metadata)
        report = Report(outcome_path=outcome_path, metrics=metrics, metadata=metadata)
        record = NewRecord(
            run_id=info.id,
            package=package,
            item=item,
            status=status,
            outcome_type=outcome_type,
            specifications=specifications,
            report=report,
            error_message=error_message,
            created_by=created_by,
        )
        try:
            outcome, created = await self.store.record_outcome(record, now=self.now())
        except Exception as exc:
            await self._path_taken(exc, outcome_path, run_id=info.id, package=package, item=item)
            raise
        return RecordResult(outcome=outcome, created=created)

    async def update_outcome_status(
        self,
        outcome_id: str,
        *,
        status: Status,
        error_message: str | None = None,
        metrics: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        outcome_path: str | None = None,
    ) -> Outcome:
        self._name(outcome_id, "outcome_id")
        current = await self.store.get_outcome(outcome_id)
        metrics = self._json(metrics, "metrics") or {}
        metadata = self._json(metadata, "metadata") or {}
        if outcome_path is not None:
            self.artifacts.check_path(outcome_path)
            run_name = (await self.run_info(current.run_id)).name
            outcome_path = self.artifacts.check_path(in_run_folder(run_name, outcome_path))
        if status == "complete":
            info = await self.run_info(current.run_id)
            self._check_report(
                info.policy.outcome_schema, metrics or current.metrics, metadata or current.metadata
            )
        report = Report(outcome_path=outcome_path, metrics=metrics, metadata=metadata)
        change = StatusChange(status=status, error_message=error_message, report=report)
        try:
            return await self.store.update_status(outcome_id, change=change, now=self.now())
        except Exception as exc:
            await self._path_taken(
                exc, outcome_path, run_id=current.run_id, package=current.package, item=current.item
            )
            raise

    async def list_outcomes(
        self,
        *,
        run: str | None = None,
        package: str | None = None,
        status: Status | None = None,
        worker: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> OutcomePage:
        run_id = (await self.run_info(run)).id if run is not None else None
        self._limit(limit, "limit", self.limits.max_page_size)
        return await self.store.list_outcomes(
            OutcomeFilter(run_id, package, status, worker), limit=limit, cursor=cursor
        )

    async def package_summary(self, package: str, *, run: str | None = None) -> PackageSummary:
        run_id = (await self.run_info(run)).id if run is not None else None
        return await self.store.package_summary(self._name(package, "package"), run_id=run_id)

    async def system_metrics(self, run: str | None = None) -> SystemMetrics:
        run_id = (await self.run_info(run)).id if run is not None else None
        return await self.store.system_metrics(run_id, now=self.now())

    async def record_integration_event(
        self,
        *,
        integration_type: str,
        action: str,
        status: str = "success",
        run: str | None = None,
        outcome_id: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> IntegrationEvent:
        run_id = (await self.run_info(run)).id if run is not None else None
        self._name(integration_type, "integration_type")
        self._name(action, "action")
        self._name(status, "status")
        details = self._json(details, "details") or {}
        return await self.store.record_integration(
            run_id=run_id,
            outcome_id=outcome_id,
            integration_type=integration_type,
            action=action,
            status=status,
            details=details,
            now=self.now(),
        )
