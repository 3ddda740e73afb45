"""Podman for the container tests: local base images from Debian's packages (no image registry is reachable
here), cached between runs under CACHE_DIR and keyed by a hash of what made them, and the project's image built
on them. Everything is a subprocess call to podman; nothing here talks to a registry."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
CACHE_DIR = Path(os.environ.get("MATRIX_CONTAINER_CACHE", "/var/cache/matrix-mcp-test"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

# minbase + what a base needs; documentation, manuals and translations are left out of the file system, and
# /usr is merged by mmdebstrap's hook rather than by the usrmerge package, which would bring perl with it
# (about 50 MB of the image: perl, its modules and libraries; perl-base, which dpkg needs, stays)
_TRIM = [
    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-include=/usr/share/locale/locale.alias",
]
PYTHON_PACKAGES = "python3,python3-venv,ca-certificates"
POSTGRES_PACKAGES = "postgresql,ca-certificates"


def podman_unavailable() -> str | None:
    """None when podman can run a container here, else the reason."""
    for tool in ("podman", "mmdebstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (.ci/run installs podman, runc and mmdebstrap)"
    if os.geteuid() != 0:
        return "the container tests need root (rootful podman with runc, as in .ci/run)"
    probe = subprocess.run(["podman", "info", "--format", "{{.Host.OCIRuntime.Name}}"], capture_output=True)
    if probe.returncode != 0:
        return f"podman info failed: {probe.stderr.decode(errors='replace').strip()[:300]}"
    return None


def podman(
    *args: str, check: bool = True, timeout: float = 900, **kw: object
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done  # type: ignore[no-any-return]


def image_exists(tag: str) -> bool:
    return podman("image", "exists", tag, check=False).returncode == 0


def _key(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


def debian_base(name: str, packages: str, suite: str = "bookworm") -> str:
    """localhost/matrix-test-NAME:KEY, imported from an mmdebstrap tarball (made once, kept in CACHE_DIR)."""
    command = ["mmdebstrap", "--variant=minbase", f"--include={packages}", *_TRIM, suite]
    key = _key(*command)
    tag = f"localhost/matrix-test-{name}:{key}"
    if image_exists(tag):
        return tag
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tarball = CACHE_DIR / f"{name}-{key}.tar"
    if not tarball.exists():
        partial = tarball.with_suffix(".partial.tar")
        done = subprocess.run([*command, str(partial)], capture_output=True, text=True, timeout=1200)
        if done.returncode != 0:
            raise AssertionError(f"mmdebstrap failed:\n{done.stderr[-3000:]}")
        partial.rename(tarball)
    podman("import", str(tarball), tag)
    return tag


def trusting_base(base: str) -> str:
    """BASE plus this machine's certificate authorities (its TLS to the package index passes one of its own),
    for builds only: never in the shipped Containerfile."""
    bundle = CA_BUNDLE.read_bytes()
    tag = f"{base.split(':')[0]}-ca:{_key(base, hashlib.sha256(bundle).hexdigest())}"
    if image_exists(tag):
        return tag
    with tempfile.TemporaryDirectory() as context:
        Path(context, "ca.crt").write_bytes(bundle)
        Path(context, "Containerfile").write_text(
            f"FROM {base}\n"
            "COPY ca.crt /etc/ssl/certs/ca-certificates.crt\n"
            "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"
            " REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt\n"
        )
        podman("build", "--network", "host", "-t", tag, context)
    return tag


def build_project_image(tag: str = "localhost/matrix-mcp:test") -> str:
    """The repository's Containerfile on the local Debian base (podman's layer cache makes a rebuild after a
    source change cost only the project's own layer)."""
    base = trusting_base(debian_base("python", PYTHON_PACKAGES))
    podman(
        "build",
        "--network",
        "host",
        "--format",
        "docker",
        "--build-arg",
        f"BASE={base}",
        "-t",
        tag,
        "-f",
        str(REPO / "Containerfile"),
        str(REPO),
        timeout=1500,
    )
    return tag


POSTGRES_ENTRYPOINT = """#!/bin/sh
# the interface of the public postgres image that compose.yaml uses: POSTGRES_USER, POSTGRES_DB,
# POSTGRES_PASSWORD_FILE, data in PGDATA, listening on 5432
set -eu
bin=$(ls -d /usr/lib/postgresql/*/bin | tail -n 1)
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pw=$(mktemp)
  cat "$POSTGRES_PASSWORD_FILE" > "$pw"
  "$bin/initdb" -D "$PGDATA" -U "${POSTGRES_USER:-postgres}" --pwfile="$pw" --auth=scram-sha-256 >/dev/null
  rm -f "$pw"
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
  "$bin/postgres" --single -D "$PGDATA" postgres <<SQL >/dev/null
CREATE DATABASE "${POSTGRES_DB:-postgres}";
SQL
fi
exec "$bin/postgres" -D "$PGDATA" -c listen_addresses="${POSTGRES_LISTEN:-*}" -c port="${POSTGRES_PORT:-5432}"
"""


def build_postgres_image() -> str:
    """PostgreSQL from Debian's package on the local base, speaking the public image's environment."""
    base = debian_base("postgres", POSTGRES_PACKAGES)
    tag = f"localhost/matrix-test-postgres-server:{_key(base, POSTGRES_ENTRYPOINT)}"
    if image_exists(tag):
        return tag
    with tempfile.TemporaryDirectory() as context:
        Path(context, "entrypoint").write_text(POSTGRES_ENTRYPOINT)
        Path(context, "Containerfile").write_text(
            f"FROM {base}\n"
            "COPY entrypoint /usr/local/bin/postgres-entrypoint\n"
            "RUN chmod 755 /usr/local/bin/postgres-entrypoint && mkdir -p /var/lib/postgresql/data"
            " /var/run/postgresql && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql\n"
            "ENV PGDATA=/var/lib/postgresql/data\n"
            "USER postgres\n"
            'CMD ["/usr/local/bin/postgres-entrypoint"]\n'
        )
        podman("build", "--network", "host", "-t", tag, context)
    return tag
