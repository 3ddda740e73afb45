"""Jira and GitHub sinks against small fakes of their APIs on 127.0.0.1 that check each request's shape
(ADF, transitions by name; blob → tree → commit → ref → pull), on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import threading
import time
from typing import Any

import anyio
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from matrix_mcp.engine import Engine
from matrix_mcp.integrations.service import Hooks
from matrix_mcp.models import PackageSpec, RunPolicy
from tests.integrations.test_hooks_dispatch import dispatching, fast, until

pytestmark = pytest.mark.anyio


class FakeApi:
    def __init__(self) -> None:
        self.server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
        self.lock = threading.Lock()
        self.calls: list[tuple[str, str, Any, dict[str, str]]] = []
        self.server.expect_request(re.compile(".*")).respond_with_handler(self._handle)

    def _handle(self, request: Request) -> Response:
        body = json.loads(request.get_data(as_text=True) or "null")
        path = request.full_path.rstrip("?")
        with self.lock:
            self.calls.append(
                (request.method, path, body, {k.lower(): v for k, v in request.headers.items()})
            )
            status, reply, headers = self.answer(request.method, path, body)
        return Response(json.dumps(reply) if reply is not None else "", status=status, headers=headers)

    def answer(self, method: str, path: str, body: Any) -> tuple[int, Any, dict[str, str]]:
        raise NotImplementedError

    def __enter__(self) -> FakeApi:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.clear()
        self.server.stop()

    @property
    def url(self) -> str:
        return self.server.url_for("").rstrip("/")


class FakeJira(FakeApi):
    def __init__(self) -> None:
        super().__init__()
        self.issues: dict[str, dict[str, Any]] = {}

    def answer(self, method: str, path: str, body: Any) -> tuple[int, Any, dict[str, str]]:
        if (method, path) == ("GET", "/rest/api/3/myself"):
            return 200, {"accountId": "me"}, {}
        if (method, path) == ("POST", "/rest/api/3/search/jql"):
            wanted = re.search(r'labels = "([^"]+)"', body["jql"])
            found = [{"key": k} for k, i in self.issues.items() if wanted and wanted.group(1) in i["labels"]]
            return 200, {"issues": found[:1]}, {}
        if (method, path) == ("POST", "/rest/api/3/issue"):
            key = f"MX-{len(self.issues) + 1}"
            self.issues[key] = {**body["fields"], "comments": [], "status": "To Do"}
            return 201, {"id": str(10000 + len(self.issues)), "key": key}, {}
        m = re.fullmatch(r"/rest/api/3/issue/([A-Z]+-\d+)/(comment|transitions)", path)
        if m and m.group(1) in self.issues:
            issue = self.issues[m.group(1)]
            if m.group(2) == "comment":
                issue["comments"].append(body["body"])
                return 201, {"id": "1"}, {}
            if method == "GET":
                return 200, {"transitions": [{"id": "11", "name": "To Do"}, {"id": "31", "name": "Done"}]}, {}
            issue["status"] = {"11": "To Do", "31": "Done"}[body["transition"]["id"]]
            return 204, None, {}
        return 404, {"errorMessages": ["not found"]}, {}


async def test_jira_files_once_comments_on_retry_and_transitions_on_completion(engine: Engine) -> None:
    settings = fast()
    hooks = Hooks(engine.store, engine.settings.database_url, settings)
    policy = RunPolicy(max_attempts=3, backoff_seconds=0)
    with FakeJira() as jira:
        created = await hooks.add(
            jira.url,
            events=["*"],
            kind="jira",
            token="tok",
            options={"project": "MX", "email": "bot@example.com"},
        )
        assert created.webhook.options == {"email": "bot@example.com", "project": "MX"}
        assert (await hooks.test(created.webhook.id)).ok
        await engine.plan_run("r1", packages=[PackageSpec(name="p", items=["a", "b"])], policy=policy)
        async with dispatching(engine, settings):
            items = (await engine.claim_items("r1", worker="w", limit=2)).items
            for c in items:
                await engine.fail_item(
                    c.outcome_id, lease_token=c.lease_token, error=f"boom {c.item}", retryable=False
                )
            await until(lambda: len(jira.issues) == 2)
            await engine.retry_items("r1")
            again = (await engine.claim_items("r1", worker="w", limit=2)).items
            by_item = {c.item: c for c in again}
            await engine.fail_item(
                by_item["a"].outcome_id,
                lease_token=by_item["a"].lease_token,
                error="boom again",
                retryable=True,
            )
            await engine.complete_item(
                by_item["b"].outcome_id, lease_token=by_item["b"].lease_token, content="ok"
            )
            await until(
                lambda: (
                    any(i["comments"] for i in jira.issues.values())
                    and any(i["status"] == "Done" for i in jira.issues.values())
                )
            )
            await anyio.sleep(0.3)
        assert len(jira.issues) == 2  # one per outcome, never twice
        auth = jira.calls[-1][3]["authorization"]
        assert auth == "Basic " + base64.b64encode(b"bot@example.com:tok").decode()
        by_summary = {i["summary"]: i for i in jira.issues.values()}
        a = by_summary["Matrix: p/a failed in run r1"]
        b = by_summary["Matrix: p/b failed in run r1"]
        assert a["project"] == {"key": "MX"} and a["issuetype"] == {"name": "Task"}
        assert a["labels"][0] == "matrix" and a["labels"][1].startswith("matrix-")
        desc = a["description"]
        assert desc["type"] == "doc" and desc["version"] == 1
        assert desc["content"][0] == {"type": "paragraph", "content": [{"type": "text", "text": "Run: r1"}]}
        assert desc["content"][-1] == {"type": "codeBlock", "content": [{"type": "text", "text": "boom a"}]}
        assert (
            len(a["comments"]) == 1 and a["comments"][0]["content"][-1]["content"][0]["text"] == "boom again"
        )
        assert a["status"] == "To Do" and b["status"] == "Done" and b["comments"] == []
        transitions = [c for c in jira.calls if c[1].endswith("/transitions") and c[0] == "POST"]
        assert [c[2] for c in transitions] == [{"transition": {"id": "31"}}]


async def test_jira_finds_an_issue_whose_key_was_lost(engine: Engine) -> None:
    settings = fast()
    hooks = Hooks(engine.store, engine.settings.database_url, settings)
    with FakeJira() as jira:
        await hooks.add(
            jira.url, events=["outcome.failed"], kind="jira", token="tok", options={"project": "MX"}
        )
        await engine.plan_run("r1", packages=[PackageSpec(name="p", items=["a"])])
        c = (await engine.claim_items("r1", worker="w")).items[0]
        # filed earlier by a process that died before it could remember the key
        jira.issues["MX-1"] = {
            "labels": ["matrix", f"matrix-{c.outcome_id}"],
            "comments": [],
            "status": "To Do",
        }
        async with dispatching(engine, settings):
            await engine.fail_item(c.outcome_id, lease_token=c.lease_token, error="boom", retryable=False)
            await until(lambda: any(call[1] == "/rest/api/3/search/jql" for call in jira.calls))
            await anyio.sleep(0.3)
        assert list(jira.issues) == ["MX-1"] and jira.calls[-1][3]["authorization"] == "Bearer tok"
        assert not any(call[1] == "/rest/api/3/issue" for call in jira.calls)


class FakeGitHub(FakeApi):
    def __init__(self) -> None:
        super().__init__()
        self.refs: dict[str, str] = {"main": "c0"}
        self.commits: dict[str, dict[str, Any]] = {"c0": {"tree": "t0", "parents": []}}
        self.trees: dict[str, dict[str, str]] = {"t0": {"README.md": "b0"}}
        self.blobs: dict[str, bytes] = {}
        self.pulls: dict[int, dict[str, Any]] = {}
        self.limited = 1  # the first content-creating call hits the secondary rate limit

    def answer(self, method: str, path: str, body: Any) -> tuple[int, Any, dict[str, str]]:
        repo = "/repos/o/r"
        if (method, path) == ("GET", repo):
            return 200, {"full_name": "o/r"}, {}
        if not path.startswith(repo):
            return 404, {"message": "Not Found"}, {}
        path = path[len(repo) :]
        if method in ("POST", "PATCH") and self.limited:
            self.limited -= 1
            return 403, {"message": "secondary rate limit"}, {"retry-after": "0"}
        m = re.fullmatch(r"/git/ref/heads/(.+)", path)
        if m and method == "GET":
            sha = self.refs.get(m.group(1))
            return (200, {"object": {"sha": sha}}, {}) if sha else (404, {"message": "Not Found"}, {})
        m = re.fullmatch(r"/git/commits/(\w+)", path)
        if m and method == "GET":
            return 200, {"sha": m.group(1), "tree": {"sha": self.commits[m.group(1)]["tree"]}}, {}
        if (method, path) == ("POST", "/git/blobs"):
            data = base64.b64decode(body["content"])
            sha = hashlib.sha1(data).hexdigest()
            self.blobs[sha] = data
            return 201, {"sha": sha}, {}
        if (method, path) == ("POST", "/git/trees"):
            files = dict(self.trees[body["base_tree"]])
            files.update({e["path"]: e["sha"] for e in body["tree"]})
            sha = "t" + hashlib.sha1(json.dumps(sorted(files.items())).encode()).hexdigest()[:10]
            self.trees[sha] = files
            return 201, {"sha": sha}, {}
        if (method, path) == ("POST", "/git/commits"):
            sha = f"c{len(self.commits)}"
            self.commits[sha] = {"tree": body["tree"], "parents": body["parents"], "message": body["message"]}
            return 201, {"sha": sha}, {}
        if (method, path) == ("POST", "/git/refs"):
            self.refs[body["ref"].removeprefix("refs/heads/")] = body["sha"]
            return 201, {"ref": body["ref"]}, {}
        m = re.fullmatch(r"/git/refs/heads/(.+)", path)
        if m and method == "PATCH":
            if self.commits[body["sha"]]["parents"] != [self.refs[m.group(1)]]:
                return 422, {"message": "Update is not a fast forward"}, {}
            self.refs[m.group(1)] = body["sha"]
            return 200, {}, {}
        if method == "GET" and path.startswith("/pulls?"):
            return (
                200,
                [{"number": n} for n, p in self.pulls.items() if f":{p['head']}" in path.replace("%2F", "/")],
                {},
            )
        if (method, path) == ("POST", "/pulls"):
            n = len(self.pulls) + 1
            self.pulls[n] = dict(body)
            return 201, {"number": n}, {}
        m = re.fullmatch(r"/pulls/(\d+)", path)
        if m and method == "PATCH":
            self.pulls[int(m.group(1))].update(body)
            return 200, {"number": int(m.group(1))}, {}
        return 404, {"message": f"unexpected {method} {path}"}, {}


async def test_github_commits_artifacts_and_opens_one_pull_request(engine: Engine) -> None:
    settings = fast(github_min_interval=0.0)
    hooks = Hooks(engine.store, engine.settings.database_url, settings)
    with FakeGitHub() as gh:
        created = await hooks.add(
            gh.url,
            events=["package.completed", "run.completed"],
            kind="github",
            token="ghp_x",
            options={"repository": "o/r"},
        )
        assert (await hooks.test(created.webhook.id)).ok
        await engine.plan_run(
            "r1", packages=[PackageSpec(name="api", items=["a"]), PackageSpec(name="web", items=["b"])]
        )
        async with dispatching(engine, settings):
            for c in (await engine.claim_items("r1", worker="w", limit=2)).items:
                await engine.complete_item(
                    c.outcome_id,
                    lease_token=c.lease_token,
                    content=f"code of {c.item}",
                    outcome_path=f"src/{c.package}/{c.item}.py",
                )
            await until(
                lambda: (
                    len([d for d in _delivered(gh)]) >= 1 and "matrix/r1" in gh.refs and len(gh.pulls) == 1
                )
            )
            await until(lambda: "src/web/b.py" in gh.trees[gh.commits[gh.refs["matrix/r1"]]["tree"]])
            await until(lambda: "| web | 1/1 | 0 |" in gh.pulls[1].get("body", ""))
            # a sync refused by the rate limit is retried after the run's sync may have done its work
            limit = time.monotonic() + 15
            while (
                len((await hooks.deliveries(webhook=created.webhook.id, status="succeeded")).deliveries) < 3
            ):
                assert time.monotonic() < limit, "the syncs were not all recorded"
                await anyio.sleep(0.05)
        head_tree = gh.trees[gh.commits[gh.refs["matrix/r1"]]["tree"]]
        assert {p: gh.blobs.get(s) for p, s in head_tree.items() if p != "README.md"} == {
            "src/api/a.py": b"code of a",
            "src/web/b.py": b"code of b",
        }
        assert head_tree["README.md"] == "b0" and gh.refs["main"] == "c0"
        assert len(gh.pulls) == 1 and gh.pulls[1]["head"] == "matrix/r1" and gh.pulls[1]["base"] == "main"
        # the documented sequence, in order, for the first sync: blobs → tree → commit → ref → pull
        posts = [re.sub(r"/repos/o/r", "", p) for m, p, _, _ in gh.calls if m == "POST"]
        squeezed = [p for i, p in enumerate(posts) if i == 0 or p != posts[i - 1]]
        assert squeezed[:5] == ["/git/blobs", "/git/trees", "/git/commits", "/git/refs", "/pulls"]
        # no empty commit for the run once both packages were committed: the trees were equal
        messages = [c.get("message", "") for c in gh.commits.values()]
        assert sum("of run r1" in m for m in messages) <= 2
        assert all(h["authorization"] == "Bearer ghp_x" for _, _, _, h in gh.calls)
        page = await hooks.deliveries(webhook=created.webhook.id, status="succeeded")
        assert sorted(d.type for d in page.deliveries) == [
            "package.completed",
            "package.completed",
            "run.completed",
        ]


async def test_github_commits_content_kept_in_the_store_when_its_blob_is_gone(engine: Engine) -> None:
    """Small content lives in the store; the blob beside it is an unsynced copy a crash can lose."""
    settings = fast(github_min_interval=0.0)
    hooks = Hooks(engine.store, engine.settings.database_url, settings)
    with FakeGitHub() as gh:
        await hooks.add(
            gh.url, events=["package.completed"], kind="github", token="ghp_x", options={"repository": "o/r"}
        )
        await engine.plan_run("r1", packages=[PackageSpec(name="api", items=["a"])])
        c = (await engine.claim_items("r1", worker="w")).items[0]
        await engine.complete_item(
            c.outcome_id, lease_token=c.lease_token, content="kept in the store", outcome_path="src/a.py"
        )
        shutil.rmtree(engine.settings.artifacts_dir / ".blobs")
        async with dispatching(engine, settings):
            await until(lambda: "matrix/r1" in gh.refs and len(gh.pulls) == 1)
        head_tree = gh.trees[gh.commits[gh.refs["matrix/r1"]]["tree"]]
        assert gh.blobs.get(head_tree["src/a.py"]) == b"kept in the store"


def _delivered(gh: FakeGitHub) -> list[str]:
    return [p for m, p, _, _ in gh.calls if m == "POST" and p.endswith("/pulls")]


async def test_a_paced_github_sync_may_outlast_the_attempt_deadline(engine: Engine) -> None:
    """A sync makes one paced request per file: the attempt deadline (MATRIX_WEBHOOK_TIMEOUT) bounds each
    of its requests, not the whole sync, or a package of more than a few files would never commit."""
    settings = fast(github_min_interval=0.2, timeout=1.0)
    hooks = Hooks(engine.store, engine.settings.database_url, settings)
    with FakeGitHub() as gh:
        gh.limited = 0
        created = await hooks.add(
            gh.url, events=["package.completed"], kind="github", token="ghp_x", options={"repository": "o/r"}
        )
        items = [f"i{n}" for n in range(8)]  # 8 blobs + tree + commit + ref + pull: ≥ 2.2 s of pacing
        await engine.plan_run("r1", packages=[PackageSpec(name="api", items=items)])
        async with dispatching(engine, settings):
            for c in (await engine.claim_items("r1", worker="w", limit=8)).items:
                await engine.complete_item(
                    c.outcome_id, lease_token=c.lease_token, content=c.item, outcome_path=f"src/{c.item}.py"
                )
            await until(lambda: len(gh.pulls) == 1, timeout=20)
            limit = time.monotonic() + 10  # recorded just after the sync
            while (await hooks.deliveries(webhook=created.webhook.id, status="succeeded")).deliveries == []:
                assert time.monotonic() < limit, "the sync was not recorded"
                await anyio.sleep(0.05)
        page = await hooks.deliveries(webhook=created.webhook.id)
        assert [(d.status, d.attempts) for d in page.deliveries] == [("succeeded", 1)], page
