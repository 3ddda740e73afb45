"""Build the Matrix MCP bundle for Claude Desktop (a `.mcpb`): the manifest, the launcher and every package
the server needs, installed into `server/lib` for one platform and one Python minor.

    python packaging/mcpb/build_mcpb.py                       # this machine's platform and Python
    python packaging/mcpb/build_mcpb.py --platform macosx_11_0_arm64 --python-version 3.12
    python packaging/mcpb/build_mcpb.py --mcpb "npx -y @anthropic-ai/mcpb@2.1.2"   # also pack the .mcpb

Without `--mcpb` it stops after staging the bundle's folder (`--out`/stage) and prints its path; with it, it
runs `mcpb pack` on that folder (which validates the manifest first). Uses only the standard library, pip and
(without `--wheel`) the `build` package; it never imports matrix_mcp.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def mcpb_platform(pip_platform: str | None) -> str:
    """The manifest's platform name (darwin, linux, win32) for a pip platform tag, or for this machine."""
    if pip_platform is None:
        return "darwin" if sys.platform == "darwin" else "win32" if sys.platform == "win32" else "linux"
    if pip_platform.startswith("macosx"):
        return "darwin"
    if pip_platform.startswith("win"):
        return "win32"
    if "linux" in pip_platform:
        return "linux"
    raise SystemExit(f"build_mcpb: --platform {pip_platform!r}: not a macosx_*, win_* or *linux* wheel tag")


def build_wheel(out: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
        check=True,
        stdout=sys.stderr,
    )
    (wheel,) = out.glob("matrix_mcp-*.whl")
    return wheel


def wheel_version(wheel: Path) -> str:
    """The version in the wheel's own metadata (the one place it is written: matrix_mcp.__version__)."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        for line in archive.read(name).decode("utf-8").splitlines():
            if line.startswith("Version: "):
                return line.removeprefix("Version: ").strip()
    raise SystemExit(f"build_mcpb: {wheel}: no Version in its METADATA")


def install_lib(wheel: Path, lib: Path, platform: str | None, python_version: str | None) -> None:
    """pip installs the wheel and its dependencies into lib. For another platform or Python, only wheels
    built for it are accepted (--only-binary), so nothing is compiled for the wrong machine."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-compile",
        "--target",
        str(lib),
    ]
    if platform or python_version:
        command += ["--only-binary=:all:", "--implementation", "cp"]
        command += ["--platform", platform] if platform else []
        command += ["--python-version", python_version] if python_version else []
    subprocess.run([*command, str(wheel)], check=True, stdout=sys.stderr)
    shutil.rmtree(lib / "bin", ignore_errors=True)  # console scripts with this machine's interpreter path
    for cache in list(lib.rglob("__pycache__")):
        shutil.rmtree(cache, ignore_errors=True)


def stage(wheel: Path, folder: Path, platform: str | None, python_version: str | None) -> dict[str, Any]:
    """Lay out the bundle's folder; return the manifest written into it."""
    version = wheel_version(wheel)
    manifest: dict[str, Any] = json.loads((HERE / "manifest.json").read_text(encoding="utf-8"))
    if manifest["version"] != version:
        raise SystemExit(
            f"build_mcpb: packaging/mcpb/manifest.json has version {manifest['version']!r}, "
            f"the wheel {version!r}: update the manifest (and server.json) to matrix_mcp.__version__"
        )
    python = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    major, minor = (int(part) for part in python.split(".")[:2])
    target = mcpb_platform(platform)
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "server").mkdir(parents=True)
    shutil.copy2(HERE / "server" / "main.py", folder / "server" / "main.py")
    install_lib(wheel, folder / "server" / "lib", platform, python_version)
    built = {"python": f"{major}.{minor}", "platform": platform or f"{target} (built here)"}
    (folder / "server" / "bundle.json").write_text(json.dumps(built) + "\n", encoding="utf-8")
    # The compiled dependencies fit one platform and one Python minor: the manifest says so, and a host
    # refuses the bundle elsewhere instead of failing at the first import.
    manifest["compatibility"] = {
        **manifest.get("compatibility", {}),
        "platforms": [target],
        "runtimes": {"python": f">={major}.{minor}.0 <{major}.{minor + 1}.0"},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", "utf-8")
    return manifest


def pack(mcpb: str, folder: Path, output: Path) -> None:
    subprocess.run([*shlex.split(mcpb), "pack", str(folder), str(output)], check=True, stdout=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="build_mcpb.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, help="the matrix-mcp wheel to bundle (default: build one)")
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder (default: dist/)")
    parser.add_argument(
        "--platform", help="pip platform tag of the target, e.g. macosx_11_0_arm64, win_amd64"
    )
    parser.add_argument("--python-version", help="Python minor of the target, e.g. 3.12 (default: this one)")
    parser.add_argument(
        "--mcpb", help='the mcpb CLI command, e.g. "npx -y @anthropic-ai/mcpb@2.1.2": also pack'
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        wheel = args.wheel or build_wheel(Path(scratch))
        folder = args.out / "mcpb-stage"
        manifest = stage(wheel, folder, args.platform, args.python_version)
    if args.mcpb is None:
        print(folder)
        return
    python = args.python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    tag = args.platform or mcpb_platform(None)
    output = args.out / f"matrix-mcp-{manifest['version']}-{tag}-py{python.replace('.', '')}.mcpb"
    pack(args.mcpb, folder, output)
    print(output)


if __name__ == "__main__":
    main()
