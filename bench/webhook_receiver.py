"""A minimal webhook receiver for bench_webhooks.py: raw ASGI under uvicorn on 127.0.0.1.

POST any path: record (arrival time, webhook-id, body's outcome_id, type, answer) and answer 200, or 500
with probability `fail` (set with POST /_config {"fail": 0.3}). GET /_log: the records as JSON;
POST /_reset: forget them.

    python bench/webhook_receiver.py PORT
"""

from __future__ import annotations

import json
import random
import sys
import time
from typing import Any

import uvicorn

records: list[list[Any]] = []
state = {"fail": 0.0}
rng = random.Random(14)


async def read_body(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def reply(send: Any, status: int, payload: bytes = b"") -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": payload})


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    body = await read_body(receive)
    if path == "/_log":
        await reply(send, 200, json.dumps(records).encode())
        return
    if path == "/_reset":
        records.clear()
        await reply(send, 200)
        return
    if path == "/_config":
        state.update(json.loads(body))
        await reply(send, 200)
        return
    now = time.time()
    headers = dict(scope["headers"])
    try:
        data = json.loads(body)
    except ValueError:
        data = {}
    status = 500 if rng.random() < state["fail"] else 200
    inner = data.get("data", {}) if isinstance(data, dict) else {}
    records.append(
        [now, headers.get(b"webhook-id", b"").decode(), inner.get("outcome_id"), data.get("type"), status]
    )
    await reply(send, status, b"{}")


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
