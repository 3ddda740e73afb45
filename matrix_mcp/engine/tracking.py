"""The seed's tracking API: record outcomes and their status directly, list and summarise them."""

from __future__ import annotations

from typing import Any

from matrix_mcp import rules
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
        """The seed's tracking call: create the item (and its package) when new, then set its status and report
        as `update_outcome_status` does.

        Args:
            run: the run's name or id.
            package: the item's package.
            item: the item's name.
            status: the status to record.
            outcome_type: the outcome's type (default: the run's).
            outcome_path: its file, relative to the run's folder.
            specifications: what the item is to produce.
            metrics: numbers about the result.
            metadata: anything else; with metrics, checked against the outcome_schema when complete.
            error_message: why it failed.
            created_by: who recorded it.

        Returns:
            The outcome, and whether it was created.

        Raises:
            InputError: a bad name or JSON, status blocked (only dependencies block an item), or a complete
                report that violates the outcome_schema.
            ArtifactError: an outcome_path that is not a safe relative path.
            NotFound: no such run.
            Conflict: an outcome_path another item's file holds.
        """
        rules.check_settable(status)
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
        """Override an item's status (any status from any status): counters move, and a fresh lease token
        fences off whoever held it.

        Args:
            outcome_id: the item.
            status: its new status.
            error_message: why it failed.
            metrics: numbers about the result (kept when not given).
            metadata: anything else (kept when not given).
            outcome_path: its file, relative to the run's folder.

        Raises:
            InputError: bad JSON, status blocked (only dependencies block an item), or a complete report
                that violates the outcome_schema.
            ArtifactError: an outcome_path that is not a safe relative path.
            NotFound: no such outcome.
            Conflict: an outcome_path another item's file holds.
        """
        self._name(outcome_id, "outcome_id")
        rules.check_settable(status)
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
        """A page of outcomes, filtered, in a stable order; `next_cursor` fetches the next page.

        Args:
            run: only this run's (name or id).
            package: only this package's.
            status: only those with this status.
            worker: only those this worker claimed.
            limit: at most this many (1 to the page size).
            cursor: the `next_cursor` of the previous page.

        Raises:
            InputError: a bad limit.
            InputError: a cursor this server did not issue.
            NotFound: no such run.
        """
        run_id = (await self.run_info(run)).id if run is not None else None
        self._limit(limit, "limit", self.limits.max_page_size)
        return await self.store.list_outcomes(
            OutcomeFilter(run_id, package, status, worker), limit=limit, cursor=cursor
        )

    async def package_summary(self, package: str, *, run: str | None = None) -> PackageSummary:
        """A package's counts, averages and duration percentiles.

        Args:
            package: the package's name.
            run: the run it is in (name or id); needed when several runs have a package of that name.

        Raises:
            NotFound: no such run or package.
            Conflict: the package is in several runs and no run was given.
        """
        run_id = (await self.run_info(run)).id if run is not None else None
        return await self.store.package_summary(self._name(package, "package"), run_id=run_id)

    async def package_summaries(self, run: str) -> list[PackageSummary]:
        """Every package of a run with its counts, averages and duration percentiles, in plan order.

        Args:
            run: the run's name or id.

        Raises:
            NotFound: no such run.
        """
        return await self.store.package_summaries((await self.run_info(run)).id)

    async def system_metrics(self, run: str | None = None) -> SystemMetrics:
        """Counts and generation times across every run, or one.

        Args:
            run: only this run (name or id).

        Raises:
            NotFound: no such run.
        """
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
        """Record that an integration (a CI job, a tracker...) acted on a run or an outcome.

        Args:
            integration_type: what kind of integration.
            action: what it did.
            status: how it went.
            run: the run it concerns (name or id).
            outcome_id: the outcome it concerns.
            details: anything else, as JSON.

        Raises:
            InputError: a bad name or JSON.
            NotFound: no such run.
        """
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
