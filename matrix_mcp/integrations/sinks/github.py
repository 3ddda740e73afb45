"""GitHub: when a package or a run completes, commit its artifacts in one commit to branch
`matrix/<run>` through the Git Data API (blobs → tree → commit → ref) and open or update a pull
request with the summary.

Retrying is safe: blobs are content-addressed, a commit whose tree equals the branch head's is not
made, the ref moves only forward from the head it was built on, and the pull request is found by
branch before one is opened (its number is also kept in hook_links). Content-creating requests are
paced (GitHub's secondary limit: ~80 a minute) and a 403/429 with Retry-After or x-ratelimit-reset
becomes a retry at that time.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any
from urllib.parse import quote

import anyio

from matrix_mcp.artifacts import default_path, safe_component
from matrix_mcp.integrations.policy import Answer, retry_after_seconds
from matrix_mcp.integrations.sinks.base import SinkContext, answer_from
from matrix_mcp.store.hooks import DeliveryRow
from matrix_mcp.store.params import OutcomeFilter

DEFAULT_API = "https://api.github.com"
WANTED = frozenset({"package.completed", "run.completed", "ping"})
MAX_FILES = 1000


class _Stop(Exception):
    def __init__(self, answer: Answer) -> None:
        self.answer = answer


class GitHubSink:
    service = "github"
    attempt_deadline = False  # paced, up to MAX_FILES requests: each request has its own deadline

    def __init__(self, min_interval: float = 0.75) -> None:
        self.min_interval = min_interval  # between content-creating requests
        self._last_write = 0.0
        self._lock = anyio.Lock()  # one sync at a time: they all move the same branch

    def wants(self, event_type: str) -> bool:
        return event_type in WANTED

    async def _call(
        self, ctx: SinkContext, method: str, path: str, body: Any = None, ok404: bool = False
    ) -> Any:
        if method in ("POST", "PATCH", "PUT"):
            wait = self._last_write + self.min_interval - time.monotonic()
            if wait > 0:
                await anyio.sleep(wait)
            self._last_write = time.monotonic()
        api = str(ctx.credentials.get("url") or DEFAULT_API).rstrip("/")
        headers = {
            "authorization": f"Bearer {ctx.credentials.get('token', '')}",
            "accept": "application/vnd.github+json",
            "x-github-api-version": "2022-11-28",
        }
        response = await ctx.http.request(method, api + path, headers, json=body)
        if ok404 and response.status_code == 404:
            return None
        answer = answer_from(response, ctx.now())
        if response.status_code in (403, 429):
            delay = retry_after_seconds(response.headers.get("retry-after"), ctx.now())
            reset = response.headers.get("x-ratelimit-reset")
            if delay is None and reset and response.headers.get("x-ratelimit-remaining") == "0":
                delay = max(0.0, float(reset) - ctx.now())
            if delay is not None:  # a rate limit: retried at that time, like a 429
                answer = Answer(429, f"GitHub rate limit (HTTP {response.status_code})", delay)
        if not answer.ok:
            raise _Stop(answer)
        return response.json() if response.content else None

    async def deliver(self, ctx: SinkContext, delivery: DeliveryRow) -> Answer:
        payload = json.loads(delivery.body)
        kind, data = payload["type"], payload.get("data", {})
        repo = str(ctx.subscription.config.get("repository"))
        try:
            if kind == "ping":
                await self._call(ctx, "GET", f"/repos/{repo}")
                return Answer(200)
            async with self._lock:
                return await self._sync(ctx, repo, kind, data)
        except _Stop as stop:
            return stop.answer

    async def _files(self, ctx: SinkContext, run: str, package: str | None) -> dict[str, bytes]:
        assert ctx.store is not None and ctx.read_content is not None
        run_id = (await ctx.store.get_run(run)).id
        files: dict[str, bytes] = {}
        folder = safe_component(run) + "/"
        cursor = None
        while len(files) < MAX_FILES:
            page = await ctx.store.list_outcomes(
                OutcomeFilter(run_id=run_id, package=package, status="complete"), limit=500, cursor=cursor
            )
            for o in page.outcomes:
                if o.content_sha256 and len(files) < MAX_FILES:
                    path = o.outcome_path or f"{o.package}/{o.item}"
                    if path.startswith(folder) and path != default_path(
                        run, o.package, o.item, o.outcome_type
                    ):
                        path = path[len(folder) :]  # a client's path: as it wrote it, relative to the run
                    files[path.lstrip("/")] = await ctx.read_content(o.content_sha256)
            cursor = page.next_cursor
            if cursor is None:
                break
        return files

    async def _sync(self, ctx: SinkContext, repo: str, kind: str, data: dict[str, Any]) -> Answer:
        run = str(data.get("run"))
        package = data.get("package") if kind == "package.completed" else None
        files = await self._files(ctx, run, package)
        if not files:
            return Answer(200)
        base = str(ctx.subscription.config.get("base_branch") or "main")
        branch = f"matrix/{run}"
        head = await self._call(
            ctx, "GET", f"/repos/{repo}/git/ref/heads/{quote(branch, safe='/')}", ok404=True
        )
        exists = head is not None
        if not exists:
            head = await self._call(ctx, "GET", f"/repos/{repo}/git/ref/heads/{quote(base, safe='/')}")
        parent = head["object"]["sha"]
        parent_commit = await self._call(ctx, "GET", f"/repos/{repo}/git/commits/{parent}")
        entries = []
        for path, content in sorted(files.items()):
            blob = await self._call(
                ctx,
                "POST",
                f"/repos/{repo}/git/blobs",
                {"content": base64.b64encode(content).decode(), "encoding": "base64"},
            )
            entries.append({"path": path, "mode": "100644", "type": "blob", "sha": blob["sha"]})
        tree = await self._call(
            ctx,
            "POST",
            f"/repos/{repo}/git/trees",
            {"base_tree": parent_commit["tree"]["sha"], "tree": entries},
        )
        what = f"package {package}" if package else "run"
        if tree["sha"] != parent_commit["tree"]["sha"]:  # else: already committed (a retry)
            commit = await self._call(
                ctx,
                "POST",
                f"/repos/{repo}/git/commits",
                {
                    "message": f"matrix: {what} of run {run} ({len(files)} files)",
                    "tree": tree["sha"],
                    "parents": [parent],
                },
            )
            if exists:
                await self._call(
                    ctx,
                    "PATCH",
                    f"/repos/{repo}/git/refs/heads/{quote(branch, safe='/')}",
                    {"sha": commit["sha"], "force": False},
                )
            else:
                await self._call(
                    ctx,
                    "POST",
                    f"/repos/{repo}/git/refs",
                    {"ref": f"refs/heads/{branch}", "sha": commit["sha"]},
                )
        await self._pull(ctx, repo, run, branch, base, data)
        return Answer(200)

    async def _pull(
        self, ctx: SinkContext, repo: str, run: str, branch: str, base: str, data: dict[str, Any]
    ) -> None:
        # the body is always the run's current table (not the event's): syncs may finish in any order
        assert ctx.store is not None
        summaries = await ctx.store.package_summaries((await ctx.store.get_run(run)).id)
        lines = [f"Generated by Matrix run `{run}`.", "", "| package | done | failed |", "|---|---|---|"]
        lines += [
            f"| {p.package} | {p.completed_items}/{p.total_items} | {p.failed_items} |" for p in summaries
        ]
        body = "\n".join(lines)
        ref = f"pr:{run}"
        number = await ctx.hooks.get_link(ctx.subscription.id, ref=ref)
        if number is None:
            owner = repo.split("/", 1)[0]
            found = await self._call(
                ctx, "GET", f"/repos/{repo}/pulls?head={quote(owner)}:{quote(branch, safe='')}&state=open"
            )
            if found:
                number = str(found[0]["number"])
            else:
                pr = await self._call(
                    ctx,
                    "POST",
                    f"/repos/{repo}/pulls",
                    {"title": f"Matrix run {run}", "head": branch, "base": base, "body": body},
                )
                await ctx.hooks.set_link(ctx.subscription.id, ref=ref, value=str(pr["number"]))
                return
            await ctx.hooks.set_link(ctx.subscription.id, ref=ref, value=number)
        await self._call(ctx, "PATCH", f"/repos/{repo}/pulls/{number}", {"body": body})
