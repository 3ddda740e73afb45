"""Webhook tools, the resource and the CLI: through the SDK Client (both eras, both backends) and as
subprocesses; the server's own dispatcher delivers once a subscription exists."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client import Client
from standardwebhooks.webhooks import Webhook

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.integrations.crypto import new_key
from matrix_mcp.mcp.server import create_server
from matrix_mcp.models import PackageSpec
from tests.integrations.test_hooks_dispatch import until
from tests.support.hooks_helpers import Receiver

pytestmark = pytest.mark.anyio

FAST_ENV = {
    "MATRIX_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
    "MATRIX_WEBHOOK_LEASE_SECONDS": "2",
    "MATRIX_WEBHOOK_POLL_SECONDS": "0.2",
    "MATRIX_WEBHOOK_BUSY_PAUSE": "0.01",
    "MATRIX_WEBHOOK_RETRY_SCHEDULE": "0.05,0.05",
}


@pytest.fixture(params=["auto", "legacy"])
async def client(
    request: pytest.FixtureRequest, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Client]:
    for k, v in {**FAST_ENV, "MATRIX_ENCRYPTION_KEY": new_key()}.items():
        monkeypatch.setenv(k, v)
    settings = Settings(database_url=database_url, artifacts_dir=tmp_path / "artifacts")
    async with Client(create_server(settings), mode=request.param) as c:
        yield c


async def call(client: Client, tool: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    result = await client.call_tool(tool, args or {})
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return dict(result.structured_content)


async def error(client: Client, tool: str, args: dict[str, Any]) -> str:
    result = await client.call_tool(tool, args)
    assert result.is_error
    return " ".join(getattr(c, "text", "") for c in result.content)


async def test_tools_end_to_end(client: Client) -> None:
    with Receiver() as rx:
        created = await call(
            client, "add_webhook", {"url": rx.url, "events": ["outcome.completed", "run.completed"]}
        )
        secret, hook = created["secret"], created["webhook"]
        assert secret.startswith("whsec_") and hook["active"] and hook["circuit"] == "closed"
        await call(client, "plan_run", {"name": "r", "packages": [{"name": "p", "items": ["a"]}]})
        item = (await call(client, "claim_items", {"run": "r", "worker": "w"}))["items"][0]
        await call(
            client,
            "complete_item",
            {"outcome_id": item["outcome_id"], "lease_token": item["lease_token"], "content": "x"},
        )
        await until(lambda: sorted(rx.types()) == ["outcome.completed", "run.completed"])
        for headers, raw, body, _ in rx.requests:
            assert Webhook(secret).verify(raw, headers) == body
        listed = await call(client, "list_webhooks")
        assert [w["id"] for w in listed["webhooks"]] == [hook["id"]] and secret not in json.dumps(listed)
        resource = await client.read_resource("matrix://webhooks")
        assert hook["id"] in resource.contents[0].text and secret not in resource.contents[0].text  # type: ignore[union-attr]
        for _ in range(200):  # the results are recorded just after the receiver answered
            deliveries = await call(client, "list_deliveries", {"webhook": hook["id"], "status": "succeeded"})
            if len(deliveries["deliveries"]) == 2:
                break
            await anyio.sleep(0.02)
        assert len(deliveries["deliveries"]) == 2
        again = await call(client, "redeliver", {"delivery_id": deliveries["deliveries"][0]["id"]})
        assert again["redelivered"] == 1
        await until(lambda: len(rx.requests) == 3)
        ping = await call(client, "test_webhook", {"id": hook["id"]})
        assert ping["ok"] and ping["status_code"] == 200
        updated = await call(client, "update_webhook", {"id": hook["id"], "active": False})
        assert not updated["webhook"]["active"]
        assert (await call(client, "remove_webhook", {"id": hook["id"]}))["removed"]
        assert (await call(client, "list_webhooks"))["webhooks"] == []


async def test_tool_errors_name_the_field(client: Client) -> None:
    assert "events[1]" in await error(
        client, "add_webhook", {"url": "https://example.com/h", "events": ["*", "nope"]}
    )
    assert "url" in await error(client, "add_webhook", {"url": "ftp://example.com/h", "events": ["*"]})
    # refused before connecting: a literal private address, never contacted
    msg = await error(client, "add_webhook", {"url": "https://10.1.2.3/h", "events": ["*"]})
    assert "url: 10.1.2.3 is a private address" in msg
    assert "secret" in await error(
        client, "add_webhook", {"url": "http://127.0.0.1:9/h", "events": ["*"], "secret": "x"}
    )
    assert "run" in await error(
        client, "add_webhook", {"url": "http://127.0.0.1:9/h", "events": ["*"], "run": "nope"}
    )
    assert "webhook" in await error(client, "remove_webhook", {"id": "wh_nope"})
    assert "delivery_id" in await error(client, "redeliver", {})
    assert "cursor" in await error(client, "list_deliveries", {"cursor": "!!"})
    assert "headers.Host" in await error(
        client, "add_webhook", {"url": "http://127.0.0.1:9/h", "events": ["*"], "headers": {"Host": "x"}}
    )


def cli(args: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "matrix_mcp", *args], env=env, capture_output=True, text=True, timeout=60
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


async def test_cli_key_file_rotation_and_standalone_dispatch(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MATRIX_")}
    env.update(FAST_ENV, MATRIX_DATABASE_URL=f"sqlite:///{db}", MATRIX_ARTIFACTS_DIR=str(tmp_path / "a"))
    with Receiver() as rx:
        added = json.loads(
            cli(["hooks", "add", rx.url, "--events", "outcome.completed", "--header", "X-A=1"], env).stdout
        )
        secret, hid = added["secret"], added["webhook"]["id"]
        key = Path(str(db) + ".key")
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        first_key = key.read_text()
        listed = cli(["hooks", "list"], env).stdout
        assert hid in listed and secret not in listed and first_key.strip() not in listed
        assert json.loads(cli(["hooks", "test", hid], env).stdout)["ok"]
        assert "1 subscription" in cli(["hooks", "rotate-key"], env).stdout
        assert key.read_text() != first_key and len(key.read_text().split()) == 1
        assert json.loads(cli(["hooks", "test", hid], env).stdout)["ok"]  # still decrypts after rotation
        Webhook(secret).verify(rx.requests[-1][1], rx.requests[-1][0])
        bad = cli(["hooks", "add", rx.url, "--events", "bogus"], env, check=False)
        assert bad.returncode != 0 and "events[0]" in bad.stderr and "Traceback" not in bad.stderr
        # the standalone dispatcher delivers what another process commits
        proc = subprocess.Popen(
            [sys.executable, "-m", "matrix_mcp", "dispatch"], env=env, stderr=subprocess.PIPE
        )
        try:
            engine = await Engine.open(Settings(database_url=f"sqlite:///{db}", artifacts_dir=tmp_path / "a"))
            try:
                await engine.plan_run("r", packages=[PackageSpec(name="p", items=["a", "b"])])
                for c in (await engine.claim_items("r", worker="w", limit=2)).items:
                    await engine.complete_item(c.outcome_id, lease_token=c.lease_token, content="x")
            finally:
                await engine.close()
            await until(lambda: rx.types().count("outcome.completed") == 2, timeout=20)
            for _ in range(250):  # recorded just after the receiver answered
                done = cli(["hooks", "deliveries", "--webhook", hid, "--status", "succeeded"], env).stdout
                if len(json.loads(done)["deliveries"]) == 2:
                    break
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        deliveries = json.loads(
            cli(["hooks", "deliveries", "--webhook", hid, "--status", "succeeded"], env).stdout
        )
        assert len(deliveries["deliveries"]) == 2
