"""Local receivers on 127.0.0.1 for the events-out tests and benches (pytest-httpserver, threaded)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

Status = Callable[[int, dict[str, Any]], int | tuple[int, dict[str, str]]]


class Receiver:
    """Records every request (headers, parsed JSON, arrival time); answers what `status` says."""

    def __init__(self, status: Status | None = None, delay: float = 0.0, path: str = "/hook") -> None:
        self.server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
        self.status = status or (lambda n, body: 200)
        self.delay = delay
        self.path = path
        self.lock = threading.Lock()
        self.requests: list[tuple[dict[str, str], str, dict[str, Any], float]] = []
        self.codes: dict[int, int] = {}  # request index -> the status it was answered with
        self.server.expect_request(path).respond_with_handler(self._handle)
        self.server.expect_request("/api/chat.postMessage").respond_with_handler(self._handle)

    def _handle(self, request: Request) -> Response:
        raw = request.get_data(as_text=True)
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        with self.lock:
            self.requests.append(({k.lower(): v for k, v in request.headers.items()}, raw, body, time.time()))
            n = len(self.requests)
        if self.delay:
            time.sleep(self.delay)
        answer = self.status(n, body)
        code, headers = answer if isinstance(answer, tuple) else (answer, {})
        with self.lock:
            self.codes[n - 1] = code
        reply: Any = {"ok": True, "ts": f"1700000000.{n:06d}"} if request.path.endswith("postMessage") else ""
        return Response(json.dumps(reply) if reply else "", status=code, headers=headers)

    @property
    def url(self) -> str:
        return self.server.url_for(self.path)

    def bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [b for _, _, b, _ in self.requests]

    def types(self) -> list[str]:
        return [b.get("type", "") for b in self.bodies()]

    def __enter__(self) -> Receiver:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.clear()
        if self.server.is_running():
            self.server.stop()
