"""The container image's figures: its size, and cold start to /healthz.

Cold start: from `podman run -d` of the default command (the team service, with an API key in its volume so it
starts authenticated) until `GET /healthz` answers 200 on the published port, polled every 10 ms; a new
container each run, medians over the runs. Beside it, to show where the time goes: `podman run --rm IMAGE true`
(the runtime's own cost), the same importing the serve path, and that import on the host (Python's share). Size: what `podman image inspect` reports, and the layer this
project adds (the virtualenv) apart from the base.

    python bench/bench_container.py [--image localhost/matrix-mcp:test] [--runs 7]

Without --image it builds the image the way tests/test_container.py does (a local Debian base from
mmdebstrap, cached under /var/cache/matrix-mcp-test/; no image registry is needed).
"""

from __future__ import annotations

import argparse
import json
import os
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

from tests import container_helpers as ch
from tests.http_helpers import free_port


def cold_start(image: str, volume: str) -> float:
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
    args = parser.parse_args()
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
        times = [cold_start(image, volume) for _ in range(args.runs)]
        runtime = [
            _timed(lambda: ch.podman("run", "--rm", "--network", "none", image, "true"))
            for _ in range(args.runs)
        ]
        host = [
            _timed(lambda: subprocess.run([sys.executable, "-c", SERVE_IMPORTS], check=True))
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


if __name__ == "__main__":
    main()
