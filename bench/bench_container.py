"""The container image's figures: its size, and cold start to /healthz; and the same start on the host.

Cold start: from `podman run -d` of the default command (the team service, with an API key in its volume so it
starts authenticated) until `GET /healthz` answers 200 on the published port, polled every 10 ms; a new
container each run, medians over the runs. The split printed beside it: when `podman run -d` returned (the
container created and its process started), `podman run --rm IMAGE true` (the runtime's own cost), the same
importing the serve path, that import on the host, and the host's own start to /healthz (below). Size: what
`podman image inspect` reports, and the layer this project adds (the virtualenv) apart from the base.

    python bench/bench_container.py [--image localhost/matrix-mcp:test] [--runs 7]

Without --image it builds the image the way tests/distribution/test_container.py does (a local Debian base from
mmdebstrap, cached under /var/cache/matrix-mcp-test/; no image registry is needed).

`--host`: no podman. `matrix-mcp serve --transport streamable-http` on 127.0.0.1, authenticated by an API
key in a fresh store, from process start to the first 200 from /healthz, for each --tree (a checkout; the
default is this one), the trees interleaved run by run so that load falls on each alike; with the split:
the interpreter alone (`python -c pass`), importing the serve path, and the service's own start (the rest).

    python bench/bench_container.py --host --runs 10 --tree /path/to/main --tree .
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import container_helpers as ch
from tests.support.http_helpers import free_port


def cold_start(image: str, volume: str, returned: list[float]) -> float:
    """Seconds from `podman run -d` to the first 200 from /healthz (and into `returned`: when run returned)."""
    port = free_port()
    name = f"matrix-bench-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    ch.podman(
        "run",
        "-d",
        "--name",
        name,
        "-p",
        f"127.0.0.1:{port}:8000",
        "-v",
        f"{volume}:/var/lib/matrix-mcp",
        image,
    )
    returned.append(time.perf_counter() - started)
    try:
        while True:
            try:
                if httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    return time.perf_counter() - started
            except httpx2.HTTPError:
                pass
            if time.perf_counter() - started > 60:
                raise SystemExit(
                    f"/healthz did not answer within 60 s: {ch.podman('logs', name, check=False).stderr}"
                )
            time.sleep(0.01)
    finally:
        ch.podman("rm", "--force", name, check=False)


SERVE_IMPORTS = "import matrix_mcp.http.app, uvicorn"
HERE = Path(__file__).resolve().parent.parent


def cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) process `pid` has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def healthy_after(argv: list[str], port: int, env: dict[str, str], cwd: Path, cpu: list[float]) -> float:
    """Seconds from starting `argv` to the first 200 from its /healthz on 127.0.0.1:`port` (and into `cpu`:
    the CPU seconds it used to get there, which the machine's load does not inflate); then stops it."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while True:
            try:
                if httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    took = time.perf_counter() - started
                    cpu.append(cpu_seconds(process.pid))
                    return took
            except httpx2.HTTPError:
                pass
            if process.poll() is not None:
                raise SystemExit(f"the service exited {process.returncode}: {process.stderr.read().decode()}")  # type: ignore[union-attr]
            if time.perf_counter() - started > 120:
                raise SystemExit("/healthz did not answer within 120 s")
            time.sleep(0.01)
    finally:
        process.terminate()
        process.wait(timeout=60)


class HostTree:
    """A checkout whose `matrix-mcp` serves on this host, with a store of its own holding an API key."""

    def __init__(self, tree: str, scratch: Path) -> None:
        self.tree = Path(tree).resolve()
        self.env = {**os.environ, "PYTHONPATH": str(self.tree)}
        self.env = {k: v for k, v in self.env.items() if not k.startswith(("OTEL_", "MATRIX_"))}
        home = scratch / uuid.uuid4().hex[:8]
        self.store = [
            "--database-url",
            f"sqlite:///{home}/matrix.db",
            "--artifacts-dir",
            str(home / "artifacts"),
        ]
        home.mkdir()
        key = home / "api_key"
        key.write_text("mtx_" + secrets.token_urlsafe(32) + "\n")
        cli = [sys.executable, "-m", "matrix_mcp", *self.store]
        subprocess.run(
            [*cli, "keys", "create", "bench", "--scope", "read", "--key-file", str(key)],
            env=self.env,
            cwd=self.tree,
            check=True,
            capture_output=True,
        )
        self.start: list[float] = []
        self.cpu: list[float] = []
        self.imports: list[float] = []
        self.imports_cpu: list[float] = []
        self.interpreter: list[float] = []

    def run(self) -> None:
        port = free_port()
        argv = [sys.executable, "-m", "matrix_mcp", *self.store, "serve", "--transport", "streamable-http"]
        argv += ["--host", "127.0.0.1", "--port", str(port)]
        self.start.append(healthy_after(argv, port, self.env, self.tree, self.cpu))
        py = [sys.executable]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.imports.append(
            _timed(
                lambda: subprocess.run([*py, "-c", SERVE_IMPORTS], env=self.env, cwd=self.tree, check=True)
            )
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.imports_cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        self.interpreter.append(
            _timed(lambda: subprocess.run([*py, "-c", "pass"], env=self.env, cwd=self.tree, check=True))
        )


def host_start(trees: list[str], runs: int) -> None:
    """The serve path's start on this host, each tree in turn, run by run."""
    with tempfile.TemporaryDirectory() as scratch:
        sides = [HostTree(t, Path(scratch)) for t in trees]
        before = _load()
        for _ in range(runs):
            for side in sides:
                side.run()
    print(
        f"matrix-mcp serve (streamable-http, API key, SQLite) on this host, process start to the first 200 from"
        f" /healthz, {runs} runs per tree, interleaved; load average {before} at the start, {_load()} at the end"
    )
    for side in sides:
        med = statistics.median
        print(
            f"  {side.tree}: median {med(side.start):.2f} s (min {min(side.start):.2f}, max {max(side.start):.2f}),"
            f" CPU {med(side.cpu):.2f} s (min {min(side.cpu):.2f});"
            f" of which the interpreter alone {med(side.interpreter):.2f} s, importing the serve path"
            f" ({SERVE_IMPORTS!r}, with the interpreter) {med(side.imports):.2f} s (CPU {med(side.imports_cpu):.2f}"
            f" s), the service's own start (the rest) {med(side.start) - med(side.imports):.2f} s (CPU"
            f" {med(side.cpu) - med(side.imports_cpu):.2f} s)"
        )


def _load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def _timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image", help="an image built from the Containerfile (default: build it)")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--host", action="store_true", help="the serve path's start on this host, no podman")
    parser.add_argument("--tree", action="append", help="with --host: a checkout to start (repeatable)")
    args = parser.parse_args()
    if args.host:
        host_start(args.tree or [str(HERE)], args.runs)
        return
    reason = ch.podman_unavailable()
    if reason:
        raise SystemExit(f"bench_container: {reason}")
    image = args.image or ch.build_project_image()
    size = int(ch.podman("image", "inspect", image, "--format", "{{.Size}}").stdout)
    history = json.loads(ch.podman("history", "--format", "json", image).stdout)
    venv = sum(int(e["size"]) for e in history if "/opt/matrix-mcp" in str(e.get("CreatedBy", "")))
    base = int(history[-1]["size"])
    print(
        f"image {image}: {size / 1e6:.1f} MB: base layer {base / 1e6:.1f} MB, "
        f"the virtualenv (/opt/matrix-mcp) {venv / 1e6:.1f} MB"
    )
    volume = f"matrix-bench-{uuid.uuid4().hex[:8]}"
    ch.podman("volume", "create", volume)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            key_file = Path(scratch, "api_key")
            key_file.write_text("mtx_" + secrets.token_urlsafe(32) + "\n")
            os.chmod(key_file, 0o644)
            ch.podman(
                "run",
                "--rm",
                "-v",
                f"{volume}:/var/lib/matrix-mcp",
                "-v",
                f"{key_file}:/run/secrets/api_key:ro",
                image,
                "matrix-mcp",
                "keys",
                "create",
                "bench",
                "--scope",
                "read",
                "--key-file",
                "/run/secrets/api_key",
            )
        returned: list[float] = []
        times = [cold_start(image, volume, returned) for _ in range(args.runs)]
        runtime = [
            _timed(lambda: ch.podman("run", "--rm", "--network", "none", image, "true"))
            for _ in range(args.runs)
        ]
        imports = [
            _timed(
                lambda: ch.podman("run", "--rm", "--network", "none", image, "python3", "-c", SERVE_IMPORTS)
            )
            for _ in range(args.runs)
        ]
        host = [
            _timed(lambda: subprocess.run([sys.executable, "-c", SERVE_IMPORTS], check=True))
            for _ in range(args.runs)
        ]
        with tempfile.TemporaryDirectory() as scratch:
            here = HostTree(str(HERE), Path(scratch))
            for _ in range(args.runs):
                here.run()
    finally:
        ch.podman("volume", "rm", "--force", volume, check=False)
    load = os.getloadavg()[0]
    print(
        f"cold start to /healthz over {args.runs} runs: median {statistics.median(times):.2f} s, "
        f"min {min(times):.2f} s, max {max(times):.2f} s (load average {load:.1f})"
    )
    print(
        f"  of which: `podman run --rm IMAGE true` median {statistics.median(runtime):.2f} s; the same plus "
        f"importing the serve path ({SERVE_IMPORTS!r}) median {statistics.median(imports):.2f} s; "
        f"that import on this host, outside a container, median {statistics.median(host):.2f} s"
    )
    print(
        f"  `podman run -d` returned after {statistics.median(returned):.2f} s (median): the rest is the service"
        f" starting in the container; on this host, outside a container, `matrix-mcp serve` reached /healthz"
        f" in {statistics.median(here.start):.2f} s (median; its imports {statistics.median(here.imports):.2f} s)"
    )


if __name__ == "__main__":
    main()
