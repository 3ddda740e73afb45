"""Files another local user must not read or plant: the key file, the SQLite database and the artifacts.

The tests run as root here, so "another user" is made by chown to uid 65534 (nobody).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.integrations.crypto import KeyError_, key_file, load_keyring, new_key, write_key_file
from matrix_mcp.models import PackageSpec

pytestmark = pytest.mark.anyio

NOBODY = 65534


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The usual umask, under which SQLite alone creates 0644 files and mkdir 0755 folders."""
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def planted_key(tmp_path: Path) -> tuple[str, Path]:
    url = f"sqlite:///{tmp_path / 'matrix.db'}"
    path = key_file(url)
    assert path is not None
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(new_key() + "\n")
    return url, path


def test_a_key_file_owned_by_another_user_is_refused_naming_it_and_the_fix(tmp_path: Path) -> None:
    url, path = planted_key(tmp_path)
    os.chown(path, NOBODY, NOBODY)  # planted beforehand by another local user
    with pytest.raises(KeyError_) as err:
        load_keyring(url, ())
    text = str(err.value)
    assert str(path) in text and f"uid {NOBODY}" in text and f"chown {os.geteuid()} {path}" in text, text
    assert "\n" not in text
    with pytest.raises(KeyError_):  # the dispatcher's way in (create=False) refuses it too
        load_keyring(url, (), create=False)


def test_a_key_file_open_to_other_users_is_refused_naming_chmod(tmp_path: Path) -> None:
    url, path = planted_key(tmp_path)
    for loose in (0o644, 0o640, 0o602):
        os.chmod(path, loose)
        with pytest.raises(KeyError_) as err:
            load_keyring(url, ())
        assert f"chmod 600 {path}" in str(err.value) and f"{loose:04o}" in str(err.value), str(err.value)
    os.chmod(path, 0o600)
    ring = load_keyring(url, ())  # the service's own 0600 file is used
    assert ring.decrypt(ring.encrypt({"k": 1})) == {"k": 1}


def test_a_key_file_symlink_is_refused_and_a_planted_temporary_file_is_not_written_through(
    tmp_path: Path,
) -> None:
    url, path = planted_key(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("someone's file\n")
    (tmp_path / "matrix.db.key.tmp").symlink_to(elsewhere)
    write_key_file(path, [new_key()])  # what `hooks rotate-key` does
    assert elsewhere.read_text() == "someone's file\n"
    assert mode(path) == 0o600 and not os.path.islink(path)
    path.unlink()
    path.symlink_to(elsewhere)
    with pytest.raises(KeyError_) as err:
        load_keyring(url, ())
    assert "symlink" in str(err.value)


async def test_a_new_sqlite_database_its_wal_and_shm_are_0600_and_folders_0700(
    tmp_path: Path, usual_umask: None
) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'state' / 'matrix.db'}", artifacts_dir=tmp_path / "state" / "art"
    )
    engine = await Engine.open(settings)
    try:
        await engine.plan_run("r", packages=[PackageSpec(name="p", items=["i"])])
        item = (await engine.claim_items("r", worker="w")).items[0]
        await engine.complete_item(item.outcome_id, lease_token=item.lease_token, content="x" * 100_000)
        export = await engine.export_outcomes("r")
        db = tmp_path / "state" / "matrix.db"
        for name in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            assert mode(name) == 0o600, (name, oct(mode(name)))
        root = tmp_path / "state" / "art"
        blob_folder = next((root / ".blobs").iterdir())
        for folder in (tmp_path / "state", root, root / "r", root / "r" / "p", root / ".blobs", blob_folder):
            assert mode(folder) == 0o700, (folder, oct(mode(folder)))
        assert mode(Path(export.path).parent) == 0o700
        assert mode(root / "r" / "p" / "i") == 0o600
    finally:
        await engine.close()


async def test_existing_database_files_and_artifacts_root_are_tightened_at_start(
    tmp_path: Path, usual_umask: None
) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'matrix.db'}", artifacts_dir=tmp_path / "art")
    root = tmp_path / "art"
    (root / "old-run").mkdir(parents=True)
    os.chmod(root, 0o755)
    os.chmod(root / "old-run", 0o755)
    engine = await Engine.open(settings)
    await engine.plan_run("r", packages=[PackageSpec(name="p", items=["i"])])
    await engine.close()
    db = tmp_path / "matrix.db"
    os.chmod(db, 0o644)  # as a release before this one left it
    engine = await Engine.open(settings)
    try:
        await engine.plan_run("r2", packages=[PackageSpec(name="p", items=["i"])])
        assert mode(db) == 0o600 and mode(Path(f"{db}-wal")) == 0o600
        assert mode(root) == 0o700  # nothing below is reachable by another user any more
        assert mode(root / "old-run") == 0o755  # left as it was (documented)
    finally:
        await engine.close()
