"""Argument checks every use case shares: names, JSON, media types, sequence numbers, limits, reports.

Each check raises InputError naming the field; the constants are also what the REST API's OpenAPI
document states, so a client is told the same bounds the engine holds.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any, Literal

from matrix_mcp.config import Limits
from matrix_mcp.errors import InputError

# Event sequence numbers are 64-bit signed integers in both stores: a cursor past the largest is refused
# here, the same on both (SQLite could not even bind it).
MAX_SEQ = 2**63 - 1
# A media type (RFC 9110 §8.3.1): type "/" subtype *( OWS ";" OWS name "=" ( token / quoted-string ) ),
# ASCII only: no CR, LF or other control character can reach a Content-Type header.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
MEDIA_TYPE_PATTERN = (  # also what the REST API's OpenAPI document states
    rf'{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|"(?:[\t !#-\[\]-~]|\\[\t -~])*"))*'
)
_MEDIA_TYPE = re.compile(MEDIA_TYPE_PATTERN)
MAX_MEDIA_TYPE_LENGTH = 255
MEDIA_TYPE_ERROR = (
    "must be a media type such as 'text/markdown; charset=utf-8' "
    f"(type/subtype and parameters, printable ASCII, at most {MAX_MEDIA_TYPE_LENGTH} characters)"
)


def is_media_type(value: str) -> bool:
    """Whether `value` is a media type as a Content-Type header may carry it."""
    return len(value) <= MAX_MEDIA_TYPE_LENGTH and _MEDIA_TYPE.fullmatch(value) is not None


def json_depth(value: Any, limit: int) -> int:
    """Depth of nested JSON containers; stops counting past `limit`."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    deepest = 0
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d)
            if d > limit:
                return d
            children = v.values() if isinstance(v, dict) else v
            stack.extend((c, d + 1) for c in children)
    return deepest


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(json.loads(schema_json))


class Checks:
    """The checks, bound to the configured limits."""

    limits: Limits

    def _name(self, value: str, field: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise InputError("must be a non-empty string", field)
        if len(value) > self.limits.max_name_length:
            raise InputError(f"longer than {self.limits.max_name_length} characters", field)
        if "\x00" in value:
            raise InputError("may not contain NUL characters", field)
        return value

    def _json(self, value: Any, field: str) -> Any:
        if value is None:
            return None
        if json_depth(value, self.limits.max_json_depth) > self.limits.max_json_depth:
            raise InputError(f"nested deeper than {self.limits.max_json_depth} levels", field)
        try:
            text = json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise InputError(f"is not JSON-serialisable: {exc}", field) from exc
        if len(text.encode()) > self.limits.max_json_bytes:
            raise InputError(f"larger than {self.limits.max_json_bytes} bytes of JSON", field)
        if "\\u0000" in text:
            raise InputError("may not contain NUL characters", field)
        return value

    def _media_type(self, value: str | None, field: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not is_media_type(value):
            raise InputError(MEDIA_TYPE_ERROR, field)
        return value

    def _seq(self, value: int | None, field: str) -> int | None:
        if value is not None and not 0 <= value <= MAX_SEQ:
            raise InputError(f"must be an event sequence number from 0 to {MAX_SEQ}", field)
        return value

    def _limit(self, value: int, field: str, maximum: int) -> int:
        if value < 1 or value > maximum:
            raise InputError(f"must be between 1 and {maximum}", field)
        return value

    def _wait(self, value: float, field: str) -> float:
        if not 0 <= value <= self.limits.max_wait_seconds:  # NaN too
            raise InputError(f"must be between 0 and {self.limits.max_wait_seconds:g}", field)
        return value

    def _check_report(
        self, schema: dict[str, Any] | None, metrics: dict[str, Any], metadata: dict[str, Any]
    ) -> None:
        if schema is None:
            return
        validator = _validator(json.dumps(schema, sort_keys=True))
        doc = {"metrics": metrics, "metadata": metadata}
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
        if errors:
            first = errors[0]
            where = ".".join(str(p) for p in first.absolute_path) or "metrics"
            more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
            raise InputError(f"violates the run's outcome_schema: {first.message}{more}", where)

    def _content_bytes(self, content: str | None, encoding: Literal["utf-8", "base64"]) -> bytes | None:
        if content is None:
            return None
        if encoding == "base64":
            import base64
            import binascii

            try:
                return base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InputError("is not valid base64", "content") from exc
        return content.encode("utf-8", errors="surrogatepass")
