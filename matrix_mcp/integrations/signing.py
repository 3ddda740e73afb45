"""Standard Webhooks signing (https://www.standardwebhooks.com): secrets `whsec_<base64>`, headers
`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256(id.timestamp.body)>`,
one signature per live secret (space-separated) while a secret is being rotated."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence

PREFIX = "whsec_"


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_bytes(secret: str) -> bytes:
    """The key of a `whsec_` secret; ValueError names the field on anything else."""
    raw = secret[len(PREFIX) :] if secret.startswith(PREFIX) else secret
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except ValueError:
        raise ValueError("secret: not a whsec_<base64> secret") from None
    if not 24 <= len(key) <= 64:
        raise ValueError("secret: the key must be 24 to 64 bytes")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    mac = hmac.new(secret_bytes(secret), f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def headers(live_secrets: Sequence[str], msg_id: str, timestamp: int, body: str) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in live_secrets),
    }
