"""Settings from the environment and the command line.

Precedence: CLI flag > environment variable > default. Nothing here opens a connection.
"""

from __future__ import annotations

import argparse
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

DEFAULT_DATABASE_URL = "sqlite:///.matrix/matrix.db"
DEFAULT_ARTIFACTS_DIR = ".matrix/artifacts"

# Which tools a connection lists (`--toolset`, env MATRIX_TOOLSET); the tools of each: `mcp/toolsets.py`
Toolset = Literal["worker", "orchestrator", "all"]
TOOLSET_NAMES: tuple[Toolset, ...] = ("worker", "orchestrator", "all")


def parse_toolset(value: str, source: str) -> Toolset:
    """`value` as a toolset; the ValueError names `source` (the flag or variable it came from)."""
    for name in TOOLSET_NAMES:
        if value == name:
            return name
    raise ValueError(f"{source} must be one of {', '.join(TOOLSET_NAMES)}, got {value!r}")


class SettingError(ValueError):
    """A setting that cannot be used; the message names it. Reported as one line before anything starts."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its usage errors in one line on stderr (exit status 2), like every other CLI error.
    Subcommand parsers are made with the same class."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog.split()[0]} --help)\n")


def add_serve_flags(parser: argparse.ArgumentParser, port: int) -> None:
    """The transport flags both servers take (HTTP ones read by `ServiceOptions.from_args`)."""
    parser.add_argument("--transport", choices=["stdio", "streamable-http"], default="stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument(
        "--stateless", action="store_true", help="HTTP: no sessions, any replica answers any request"
    )
    parser.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="HTTP: serve without authentication on a non-loopback address",
    )
    parser.add_argument(
        "--allowed-hosts", action="append", help="HTTP: Host names clients use (env MATRIX_ALLOWED_HOSTS)"
    )
    parser.add_argument(
        "--allowed-origins", action="append", help="HTTP: browser origins (env MATRIX_ALLOWED_ORIGINS)"
    )
    parser.add_argument("--public-url", help="HTTP: the URL clients reach, e.g. https://matrix.example.com")
    parser.add_argument(
        "--header-timeout",
        type=float,
        help="HTTP: seconds a connection has to send a request's headers (env MATRIX_HTTP_HEADER_TIMEOUT)",
    )
    parser.add_argument(
        "--trusted-proxies",
        action="append",
        help="HTTP: proxies whose X-Forwarded-For is believed, addresses or CIDRs (env MATRIX_TRUSTED_PROXIES)",
    )


# Settings that hold secrets may come from a file instead: NAME_FILE=/run/secrets/x sets NAME to the file's
# text (one trailing newline dropped), the convention of container secrets and systemd credentials.
SECRET_FILE_SETTINGS = (
    "MATRIX_DATABASE_URL",
    "MATRIX_SESSION_SECRET",
    "MATRIX_ENCRYPTION_KEY",
    "MATRIX_JWT_SECRET",
    "MATRIX_METRICS_TOKEN",
    "DB_PASSWORD",
)
MAX_SECRET_FILE_BYTES = 64 * 1024


def load_secret_files(env: typing.MutableMapping[str, str]) -> None:
    """Fill each SECRET_FILE_SETTINGS name from the file its NAME_FILE variable names. Raises SettingError
    naming the variable when both are set, or the file cannot be read, is empty or is too large."""
    for name in SECRET_FILE_SETTINGS:
        path = env.get(f"{name}_FILE")
        if not path:
            continue
        if env.get(name):
            raise SettingError(f"{name} and {name}_FILE are both set: set one")
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_SECRET_FILE_BYTES + 1)
        except OSError as exc:
            raise SettingError(f"{name}_FILE: cannot read {path!r} ({exc.strerror or exc})") from None
        if len(data) > MAX_SECRET_FILE_BYTES:
            raise SettingError(f"{name}_FILE: {path!r} is larger than {MAX_SECRET_FILE_BYTES} bytes")
        try:
            value = data.decode("utf-8").removesuffix("\n").removesuffix("\r")
        except UnicodeDecodeError:
            raise SettingError(f"{name}_FILE: {path!r} is not UTF-8 text") from None
        if not value.strip():
            raise SettingError(f"{name}_FILE: {path!r} is empty")
        env[name] = value


def setup_logging(level: str, prog: str) -> None:
    """Log to stderr only (stdout is the stdio transport); a bad level is one line and exit 1."""
    import logging
    import sys

    try:
        logging.basicConfig(
            stream=sys.stderr, level=level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
        )
    except ValueError as exc:
        sys.exit(f"{prog}: --log-level / MATRIX_LOG_LEVEL: {exc}")


def is_checked_setting(name: str) -> bool:
    """The variables this project reads: its own MATRIX_*, the seed's DB_* and the schema server's DATABASE_URL."""
    return name.startswith(("MATRIX_", "DB_")) or name == "DATABASE_URL"


def check_placeholders(env: Mapping[str, str | None], every: bool = False) -> None:
    """Refuse a setting whose value is an unexpanded placeholder such as `${MATRIX_DATABASE_URL:-…}`: some
    MCP hosts pass a config's `env` values literally. Used by both servers and the CLI before they start.
    Checks the variables this project reads (is_checked_setting), or every entry (command-line flags)."""
    for name, value in env.items():
        if value and "${" in value and (every or is_checked_setting(name)):
            shown = redact_text(value)
            shown = shown if len(shown) <= 80 else shown[:80] + "…"
            raise SettingError(
                f"{name} is {shown!r}, an unexpanded placeholder (the MCP host passed it literally): "
                "set a real value or remove the entry to use the default"
            )


def check_database_url(url: str, name: str) -> str:
    """The URL when it names a backend this project speaks; else a SettingError naming where it came from."""
    if is_postgres_url(url) or sqlite_path(url) is not None:
        return url
    raise SettingError(
        f"{name}: unsupported database URL {redact_url(url)!r}: use sqlite:///path or postgresql://…"
    )


# The longest a long-poll (wait_seconds) may wait, in the tool schemas and the engine alike: under the
# 60 s request timeout many MCP hosts keep (the TypeScript SDK's default), with room for the answer.
MAX_WAIT_SECONDS = 50


@dataclass(frozen=True)
class Limits:
    """Caps enforced on every input; each violation is a clear tool error naming the field."""

    max_content_bytes: int = 10 * 1024 * 1024
    # content up to this size is stored in the store, in the report's own transaction (one sync); larger
    # content goes to the content-addressed blob store (fsync) before the report
    inline_content_bytes: int = 256 * 1024
    max_items_per_plan: int = 200_000
    # dependency rows one plan may store: an item's "package/item" refs, plus one per item for each
    # package it waits for ("package/*", a package's `after`)
    max_edges_per_plan: int = 1_000_000
    # a claimed item's previous_attempts (errors, notes, review notes), as JSON, at most this many bytes
    max_briefing_bytes: int = 8192
    max_page_size: int = 1000
    max_json_depth: int = 32
    max_json_bytes: int = 1024 * 1024
    max_name_length: int = 512
    max_wait_seconds: float = MAX_WAIT_SECONDS


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    artifacts_dir: Path = field(default_factory=lambda: Path(DEFAULT_ARTIFACTS_DIR))
    schema_database_url: str | None = None
    limits: Limits = field(default_factory=Limits)
    toolset: Toolset = "all"
    # PostgreSQL: every database call answers within this many seconds, even over a silent link
    db_deadline_seconds: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        env = os.environ if env is None else env
        check_placeholders(env)
        flags = {f"--{k.replace('_', '-')}": str(v) for k, v in overrides.items() if v is not None}
        check_placeholders(flags, every=True)
        limits = Limits(
            max_content_bytes=_int(env, "MATRIX_MAX_CONTENT_BYTES", Limits.max_content_bytes),
            inline_content_bytes=_int(env, "MATRIX_INLINE_CONTENT_BYTES", Limits.inline_content_bytes),
            max_items_per_plan=_int(env, "MATRIX_MAX_ITEMS_PER_PLAN", Limits.max_items_per_plan),
            max_edges_per_plan=_int(env, "MATRIX_MAX_EDGES_PER_PLAN", Limits.max_edges_per_plan),
            max_briefing_bytes=_int(env, "MATRIX_MAX_BRIEFING_BYTES", Limits.max_briefing_bytes),
            max_page_size=_int(env, "MATRIX_MAX_PAGE_SIZE", Limits.max_page_size),
            max_json_depth=_int(env, "MATRIX_MAX_JSON_DEPTH", Limits.max_json_depth),
            max_json_bytes=_int(env, "MATRIX_MAX_JSON_BYTES", Limits.max_json_bytes),
        )
        settings = cls(
            database_url=env.get("MATRIX_DATABASE_URL") or url_from_parts(env) or DEFAULT_DATABASE_URL,
            artifacts_dir=Path(env.get("MATRIX_ARTIFACTS_DIR") or DEFAULT_ARTIFACTS_DIR),
            schema_database_url=env.get("MATRIX_SCHEMA_DATABASE_URL") or None,
            limits=limits,
            db_deadline_seconds=_seconds(env, "MATRIX_DB_DEADLINE_SECONDS", cls.db_deadline_seconds),
        )
        clean = {k: v for k, v in overrides.items() if v is not None}
        if "database_url" in clean:
            check_database_url(str(clean["database_url"]), "--database-url")
        else:
            source = "MATRIX_DATABASE_URL" if env.get("MATRIX_DATABASE_URL") else "DB_HOST/DB_NAME"
            check_database_url(settings.database_url, source)
        if settings.schema_database_url:
            check_database_url(settings.schema_database_url, "MATRIX_SCHEMA_DATABASE_URL")
        toolset = clean.pop("toolset", None)
        settings = replace(
            settings,
            toolset=parse_toolset(str(toolset), "--toolset")
            if toolset is not None
            else parse_toolset(env.get("MATRIX_TOOLSET") or "all", "MATRIX_TOOLSET"),
        )
        if "artifacts_dir" in clean:
            clean["artifacts_dir"] = Path(str(clean["artifacts_dir"]))
        return replace(settings, **clean)  # type: ignore[arg-type]


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def positive_number(env: Mapping[str, str], name: str, default: float, *, unit: str = "") -> float:
    """A positive, finite number from the environment (`unit`, e.g. " of seconds", words the error);
    unset or empty gives `default`. A bad value is one line naming the setting."""
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise SettingError(f"{name} must be a number{unit}, got {raw!r}") from exc
    if not 0 < value < float("inf"):
        raise SettingError(f"{name} must be positive and finite, got {raw!r}")
    return value


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    return positive_number(env, name, default, unit=" of seconds")


# libpq's own variables that name a database to connect to; the rest (PGUSER, PGPASSWORD, PGPORT,
# PGSSLMODE, PGPASSFILE, ...) fill in whatever a URL leaves out, as libpq always does
LIBPQ_TARGET_VARIABLES = ("PGHOST", "PGHOSTADDR", "PGDATABASE", "PGSERVICE")


def url_from_parts(env: Mapping[str, str]) -> str | None:
    """The seed's DB_HOST/DB_PORT/DB_NAME/DB_USER/DB_PASSWORD as a PostgreSQL URL, when DB_HOST or DB_NAME is
    set; else `postgresql://` (libpq reads its PG* variables) when one of LIBPQ_TARGET_VARIABLES is set."""
    host, name = env.get("DB_HOST"), env.get("DB_NAME")
    if not host and not name:
        return "postgresql://" if any(env.get(v) for v in LIBPQ_TARGET_VARIABLES) else None
    user = env.get("DB_USER", "")
    password = env.get("DB_PASSWORD", "")
    auth = ""
    if user:
        auth = quote(user, safe="")
        if password:
            auth += ":" + quote(password, safe="")
        auth += "@"
    port = env.get("DB_PORT", "")
    netloc = auth + (host or "") + (f":{port}" if port else "")
    return f"postgresql://{netloc}/{quote(name or '', safe='')}"


# Bounded quantifiers keep these linear in the text's length (unbounded ones backtracked quadratically:
# a 2 MB name echoed in an error message froze the server). A URL cut off by truncation (no '@' yet)
# still has its password part redacted.
_PASSWORD_IN_TEXT = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]{0,31}://)(?P<user>[^:/@\s]{0,256}):(?P<pw>[^@\s]{0,1024})(?:@|\Z)"
)
_PASSWORD_PARAM = re.compile(r"(?i)(password\s*=\s*)('[^']*'?|\S+)")  # on text cut to MAX_MESSAGE_CHARS
MAX_MESSAGE_CHARS = 4000


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***; safe for logs, errors and tool results."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    if parts.password is None:
        return redact_text(url)
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return redact_text(urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)))


def redact_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove passwords from free text: URLs with credentials, password=... pairs and the given secrets.
    Text longer than MAX_MESSAGE_CHARS is cut (it is for people; clients may echo megabytes)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[:MAX_MESSAGE_CHARS] + f"… ({len(text) - MAX_MESSAGE_CHARS} more characters)"
    text = _PASSWORD_IN_TEXT.sub(
        lambda m: f"{m['scheme']}{m['user']}:***" + ("@" if m[0].endswith("@") else ""), text
    )
    text = _PASSWORD_PARAM.sub(lambda m: f"{m.group(1)}***", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def url_password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def sqlite_path(url: str) -> Path | None:
    """The file path of a sqlite:/// URL (relative to the working directory), or None for other schemes."""
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///") :])
    if url.startswith("sqlite://"):
        return Path(url[len("sqlite://") :])
    return None


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://"))
