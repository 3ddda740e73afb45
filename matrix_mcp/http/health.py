"""/healthz (the process answers) and /readyz (the store answers, migrated, within a bound)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from matrix_mcp.config import redact_text
from matrix_mcp.errors import StoreError

if TYPE_CHECKING:
    from matrix_mcp.engine.access import Access

READY_TIMEOUT = 2.0


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def readyz_endpoint(
    access: Callable[[], Access | None], timeout: float = READY_TIMEOUT
) -> Callable[[Request], Any]:
    async def readyz(request: Request) -> Response:
        current = access()
        if current is None:
            return JSONResponse({"status": "unavailable", "reason": "the store is not open"}, status_code=503)
        try:
            with anyio.fail_after(timeout):
                # reads the change feed's head: the store is reachable and its tables exist
                seq = await current.latest_seq()
        except TimeoutError:
            reason = f"the store did not answer within {timeout:g} s"
        except StoreError as exc:
            reason = f"the store is unreachable: {redact_text(str(exc))}"
        except Exception as exc:  # a driver error the store did not classify; never a traceback
            reason = f"the store is unreachable: {type(exc).__name__}"
        else:
            return JSONResponse({"status": "ready", "latest_seq": seq})
        return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)

    return readyz
