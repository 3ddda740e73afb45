"""The live board under /ui/: server-rendered pages, one small script and a stylesheet from package files.

The pages hold no data of their own beyond escaped names: the script reads the REST API (same scopes,
same models) and follows the run's event stream. Every name and every byte of content is untrusted: the
server escapes what it renders, the script sets only `textContent`, and a strict Content-Security-Policy
(scripts and styles from this origin only, no inline script) backs both. Action buttons are rendered
only for callers with `matrix:plan`; the actions themselves are REST calls, which check the scope again
and require the page's CSRF token.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from html import escape
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from mcp.server import MCPServer
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from matrix_mcp.app import App
from matrix_mcp.errors import MatrixError
from matrix_mcp.http.access import SIGNIN_MAX_BYTES, Caller, Identify, Sessions
from matrix_mcp.http.paths import param
from matrix_mcp.http.ratelimit import RateLimits
from matrix_mcp.http.rest import ApiError, classify, json_response, read_body
from matrix_mcp.http.scopes import PLAN, READ
from matrix_mcp.models import STATUSES

STATIC = {"board.js": "text/javascript; charset=utf-8", "board.css": "text/css; charset=utf-8"}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # no-referrer would make a form post's Origin "null"
    "Cache-Control": "no-store",
}
STATUS_CODE = {status: i for i, status in enumerate(STATUSES)}
# each status's shape on the grid (board.js draws them; colour is never the only cue)
SHAPES = {
    "pending": "outline",
    "generating": "half filled",
    "complete": "solid",
    "failed": "cross ×",
    "cancelled": "slash /",
    "blocked": "bar –",
    "in_review": "dot •",
}
CHART_MINUTES = 60  # the throughput chart's span


def _static(name: str) -> bytes:
    return resources.files("matrix_mcp.http").joinpath("board_static", name).read_bytes()


class Board:
    def __init__(
        self,
        mcp: MCPServer[Any],
        identify: Identify,
        sessions: Sessions,
        app: App,
        limits: RateLimits | None,
    ) -> None:
        self.mcp = mcp
        self.identify = identify
        self.sessions = sessions
        self.app = app
        self.limits = limits
        self._files = {name: _static(name) for name in STATIC}

    # ---- pages -----------------------------------------------------------------------------------

    def _page(self, caller: Caller, title: str, main: str, page: str, run: str | None = None) -> Response:
        can_plan = PLAN in caller.scopes
        who = (
            f'<span class="who">{escape(caller.principal)}</span>'
            f'<form method="post" action="/ui/signout"><input type="hidden" name="csrf" '
            f'value="{self.sessions.csrf(caller.cookie)}"><button type="submit">Sign out</button></form>'
            if caller.principal is not None and caller.cookie is not None
            else (f'<span class="who">{escape(caller.principal)}</span>' if caller.principal else "")
        )
        run_meta = f'<meta name="matrix-run" content="{escape(run)}">' if run is not None else ""
        html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{self.sessions.csrf(caller.cookie)}">
<meta name="matrix-page" content="{page}">{run_meta}
<meta name="matrix-can-plan" content="{"1" if can_plan else "0"}">
<title>{escape(title)} · Matrix</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/ui/static/board.css">
<script src="/ui/static/board.js" defer></script>
</head><body>
<header><a class="brand" href="/ui/">Matrix</a><span id="live" class="live" title="live updates">○ connecting</span>{who}</header>
<main>{main}</main>
</body></html>"""
        return Response(html, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)

    async def _caller_or_signin(self, request: Request) -> Caller | Response:
        caller = await self.identify(request)
        if caller is None:
            return RedirectResponse("/ui/signin", status_code=303, headers=SECURITY_HEADERS)
        if READ not in caller.scopes:
            return self._message(
                caller, "This credential has no matrix:read scope: the board cannot show it.", 403
            )
        return caller

    def _message(self, caller: Caller, text: str, status: int) -> Response:
        response = self._page(caller, "Matrix", f'<p class="notice">{escape(text)}</p>', "message")
        response.status_code = status
        return response

    async def runs_page(self, request: Request) -> Response:
        caller = await self._caller_or_signin(request)
        if isinstance(caller, Response):
            return caller
        main = """<h1>Runs</h1>
<table id="runs" class="runs"><thead><tr><th scope="col">Run</th><th scope="col">State</th>
<th scope="col">Progress</th><th scope="col">Pending</th><th scope="col">Blocked</th><th scope="col">Generating</th><th scope="col">In review</th><th scope="col">Complete</th>
<th scope="col">Failed</th><th scope="col">Cancelled</th><th scope="col">Finished/min</th><th scope="col">ETA</th><th scope="col">Cost</th></tr></thead>
<tbody></tbody></table><p id="empty" class="notice" hidden>No runs yet.</p>"""
        return self._page(caller, "Runs", main, "runs")

    async def run_page(self, request: Request) -> Response:
        caller = await self._caller_or_signin(request)
        if isinstance(caller, Response):
            return caller
        run = param(request, "run")
        actions = ""
        if PLAN in caller.scopes:
            actions = """<section id="actions" class="actions" aria-label="actions">
<button type="button" data-action="retry-all" hidden>Retry all failed</button>
<label id="retry-package-label" hidden>Package <select id="retry-package"></select></label><button type="button" data-action="retry-package" hidden>Retry package</button>
<button type="button" data-action="retry-selected" disabled hidden>Retry selected (<span id="selected-count">0</span>)</button>
<button type="button" data-action="pause" hidden>Pause</button><button type="button" data-action="resume" hidden>Resume</button>
<button type="button" data-action="cancel" class="danger" hidden>Cancel run</button>
<span id="action-result" role="status"></span></section>"""
        review = ""
        if PLAN in caller.scopes:
            review = """<div id="d-review" class="actions" hidden><label>Review note <input id="d-review-note" maxlength="2000"></label>
<button type="button" data-review="approve">Approve</button><button type="button" data-review="reject" class="danger">Reject</button>
<span id="d-review-result" role="status"></span></div>"""
        legend = "".join(
            f'<li><span class="swatch s-{s}" aria-hidden="true"></span>{s} <span class="sym">{SHAPES[s]}</span></li>'
            for s in STATUSES
        )
        main = f"""<h1><a href="/ui/">Runs</a> / <span id="run-name">{escape(run)}</span> <span id="run-state" class="state"></span></h1>
<section class="overview"><div id="progress" class="progress" role="img" aria-label="progress"><div class="bar complete"></div><div class="bar failed"></div><div class="bar cancelled"></div></div>
<p id="counts" class="counts"></p><p id="spent" class="counts"></p><p id="paused-reason" class="notice" role="status"></p></section>
{actions}
<section class="grid-wrap"><h2>Packages × items</h2><ul class="legend">{legend}</ul>
<div id="grid-box" class="grid-box"><canvas id="grid" role="img" aria-label="grid of items by status; click a cell for details"></canvas>
<div id="tip" class="tip" hidden></div></div></section>
<section id="detail" class="detail" hidden aria-live="polite"><h2>Item <span id="d-title"></span></h2>
<dl id="d-fields"></dl>{review}<h3>Attempts</h3><table class="attempts"><thead><tr><th>#</th><th>Worker</th><th>Status</th><th>Started</th><th>Ended</th><th>Error</th><th>Note</th><th>Usage</th><th>Review</th></tr></thead><tbody id="d-attempts"></tbody></table>
<h3>Metrics</h3><pre id="d-metrics"></pre><h3>Content preview</h3><pre id="d-content" class="content"></pre></section>
<section><h2>Packages</h2><table class="packages"><thead><tr><th>Package</th><th>Total</th><th>Complete</th><th>Failed</th>
<th>Pending</th><th>Blocked</th><th>Generating</th><th title="completed, awaiting review">In review</th><th title="what its reports spent">Cost</th><th>Success</th><th>p50 s</th><th>p90 s</th><th>Lines</th><th>Quality</th>
<th title="claimed before lower priorities">Priority</th><th title="at most this many generating at once">Cap</th><th>After</th></tr></thead><tbody id="packages"></tbody></table></section>
<section><h2>Throughput</h2><svg id="chart" class="chart" viewBox="0 0 600 160" role="img" aria-label="finished items per minute over time"></svg><p id="chart-note" class="note"></p></section>
<section><h2>Failures</h2><table class="failures"><thead><tr><th></th><th>Package</th><th>Item</th><th>Attempts</th><th>Error</th></tr></thead><tbody id="failures"></tbody></table><p id="no-failures" class="note">No failed items.</p></section>"""
        return self._page(caller, run, main, "run", run)

    # ---- grid data -------------------------------------------------------------------------------

    async def grid(self, request: Request) -> Response:
        """Every cell of a run, compact: per package its outcome ids, item names and a status-code string
        (the index into `statuses`). `latest_seq` is read first, so following the event stream from it
        misses nothing that happened while the grid was read."""
        caller = await self.identify(request)
        if caller is None:
            return ApiError(401, "invalid_token", "sign in again").response()
        if READ not in caller.scopes:
            return ApiError(
                403, "insufficient_scope", f"insufficient_scope: the grid needs {READ}"
            ).response()
        try:
            engine = self.app.engine
            info = await engine.run_info(param(request, "run"))
            latest = await engine.latest_seq()
            packages: dict[str, dict[str, Any]] = {}
            codes: dict[str, list[str]] = {}
            for cell in await engine.cells(info.id):
                p = packages.get(cell.package)
                if p is None:
                    p = packages[cell.package] = {"name": cell.package, "ids": [], "items": []}
                    codes[cell.package] = []
                p["ids"].append(cell.outcome_id)
                p["items"].append(cell.item)
                codes[cell.package].append(str(STATUS_CODE[cell.status]))
        except MatrixError as exc:
            return classify(exc).response()
        for name, p in packages.items():
            p["status"] = "".join(codes[name])
        return json_response(
            {
                "run": info.name,
                "latest_seq": latest,
                "statuses": list(STATUSES),
                "packages": list(packages.values()),
            }
        )

    async def throughput(self, request: Request) -> Response:
        """Items finished per minute, from the store's per-minute counts (those the run's throughput
        window sums): the last `CHART_MINUTES` minutes, or from `since` (a minute) on to extend the chart."""
        caller = await self.identify(request)
        if caller is None:
            return ApiError(401, "invalid_token", "sign in again").response()
        if READ not in caller.scopes:
            return ApiError(
                403, "insufficient_scope", f"insufficient_scope: the chart needs {READ}"
            ).response()
        try:
            engine = self.app.engine
        except MatrixError as exc:  # Unavailable while starting or stopping
            return classify(exc).response()
        now_minute = int(engine.now() // 60)
        first = now_minute - CHART_MINUTES + 1
        since = request.query_params.get("since", "")
        if since:
            try:
                first = max(first, min(int(since), now_minute + 1))  # later: nothing yet (and no overflow)
            except ValueError:
                return ApiError(400, "invalid_argument", "since: must be a whole minute", "since").response()
        try:
            info = await engine.run_info(param(request, "run"))
            minutes = await engine.throughput(info.id, since_minute=first)
        except MatrixError as exc:
            return classify(exc).response()
        return json_response(
            {
                "now_minute": now_minute,
                "since_minute": first,
                "minutes": [[m.minute, m.completed, m.failed] for m in minutes],
            }
        )

    # ---- sign-in ---------------------------------------------------------------------------------

    def _signin_form(self, error: str | None = None, status: int = 200) -> Response:
        note = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
        html = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign in · Matrix</title>
<link rel="icon" href="data:,"><link rel="stylesheet" href="/ui/static/board.css"></head><body><main class="signin">
<h1>Matrix</h1>{note}<form method="post" action="/ui/signin">
<label for="token">API key or JWT</label><input id="token" name="token" type="password" autocomplete="off" required>
<button type="submit">Sign in</button></form>
<p class="note">The key is kept, encrypted, in an HttpOnly session cookie for this browser.</p></main></body></html>"""
        return Response(
            html, status_code=status, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS
        )

    async def signin_page(self, request: Request) -> Response:
        if self.identify.open:
            return RedirectResponse("/ui/", status_code=303)
        return self._signin_form()

    async def signin(self, request: Request) -> Response:
        if self.identify.open or self.identify.verifier is None:
            return RedirectResponse("/ui/", status_code=303)
        if not same_origin(request):
            return self._signin_form("Sign-in refused: the form was posted from another site.", 403)
        address = request.client.host if request.client else "unknown"
        if self.limits is not None and not (await self.limits.auth_blocked(address)).allowed:
            return self._signin_form("Too many failed sign-ins; wait a minute.", 429)
        try:
            body = (await read_body(request, SIGNIN_MAX_BYTES)).decode("utf-8", "replace")
        except ApiError:
            return self._signin_form("That is too long for an API key or JWT.", 413)
        token = (parse_qs(body).get("token") or [""])[0].strip()
        access = await self.identify.verifier.verify_token(token) if token else None
        if access is None:
            if self.limits is not None:
                await self.limits.auth_failed(address)
            return self._signin_form("That API key or JWT was not accepted.", 401)
        response = RedirectResponse("/ui/", status_code=303, headers=SECURITY_HEADERS)
        response.headers.append("Set-Cookie", self.sessions.cookie_header(self.sessions.seal(token)))
        return response

    async def signout(self, request: Request) -> Response:
        caller = await self.identify(request)
        try:
            body = (await read_body(request, 4096)).decode("utf-8", "replace")
        except ApiError as err:
            return err.response()
        given = (parse_qs(body).get("csrf") or [""])[0]
        cookie = caller.cookie if caller else None
        if not hmac.compare_digest(given.encode(), self.sessions.csrf(cookie).encode()):
            return Response("CSRF token missing or wrong", status_code=403, headers=SECURITY_HEADERS)
        if cookie is not None:
            try:
                await self.sessions.end(cookie)  # every replica on this store refuses it from now on
            except MatrixError as exc:
                return classify(exc).response()
        response = RedirectResponse("/ui/signin", status_code=303, headers=SECURITY_HEADERS)
        response.headers.append("Set-Cookie", self.sessions.cookie_header("", max_age=0))
        return response

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in self._files:
            return Response("not found", status_code=404)
        return Response(
            self._files[name],
            media_type=STATIC[name],
            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"},
        )


def same_origin(request: Request) -> bool:
    """A form post is this site's own when its Origin (or, lacking one, Referer) names this host."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if origin is None:
        return True  # not a browser: nothing to forge
    host = request.headers.get("host", "")
    return urlsplit(origin).netloc == host


def mount_board(mcp: MCPServer[Any], board: Board) -> None:
    def route(path: str, method: str, handler: Callable[[Request], Awaitable[Response]]) -> None:
        mcp.custom_route(path, methods=[method])(board.identify.hosted(handler))

    route("/ui/", "GET", board.runs_page)
    route("/ui/runs/{run}", "GET", board.run_page)
    route("/ui/runs/{run}/grid", "GET", board.grid)
    route("/ui/runs/{run}/throughput", "GET", board.throughput)
    route("/ui/signin", "GET", board.signin_page)
    route("/ui/signin", "POST", board.signin)
    route("/ui/signout", "POST", board.signout)
    route("/ui/static/{name}", "GET", board.static)

    async def to_board(request: Request) -> Response:
        return RedirectResponse("/ui/", status_code=307)

    route("/ui", "GET", to_board)
    route("/", "GET", to_board)  # the service's root: a person who opens the bare address meets the board
