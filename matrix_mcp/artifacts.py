"""Artifact storage: outcome content kept safely under one root.

Content is first written to an immutable, content-addressed blob (`.blobs/ab/abcdef…`) with an
atomic write (temporary file, fsync, rename). The outcome row records the blob's sha256, so the
store commit is what makes a report count. After the commit the blob is linked at the outcome's
human path (atomic replace). A killed write leaves either the old content or none, and a stale
worker whose report is rejected never touches the human path.

A rejected report's blob (stale lease, conflicting repeat) is left behind: deleting it at once could pull
it from under a concurrent report of the same bytes. `collect_garbage` removes blobs no outcome refers to
once nothing has written them for a while; writing a blob that exists refreshes its time.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import mimetypes
import os
import re
import shutil
import stat
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from matrix_mcp.errors import StoreError

log = logging.getLogger("matrix_mcp.artifacts")

BLOBS = ".blobs"
EXPORTS = "exports"
_RESERVED = {
    "con",
    "prn",
    "aux",
    "nul",
    *(f"com{i}" for i in range(1, 10)),
    *(f"lpt{i}" for i in range(1, 10)),
}
_TMP_SEQ = itertools.count()  # names of temporary files: unique within the process (with pid and thread)
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_COMPONENT_BYTES = 255
MAX_PATH_BYTES = 1024


class ArtifactError(StoreError):
    """A bad artifact path or a failed write; names the field."""


@dataclass(frozen=True)
class Blob:
    sha256: str
    size: int


def _older(path: Path, cutoff: float) -> bool:
    try:
        return path.stat().st_mtime < cutoff
    except FileNotFoundError:
        return False


@dataclass(frozen=True)
class GarbageReport:
    removed: int
    removed_bytes: int
    kept: int  # blobs an outcome refers to, or written too recently to judge
    # content kept in the store (small reports, inline) that no outcome refers to any more
    contents_removed: int = 0
    contents_removed_bytes: int = 0


@dataclass(frozen=True)
class RepairReport:
    checked: int  # complete outcomes with content and a path
    repaired: int  # of those, files linked again at their outcome_path (missing, or with other bytes)
    unrepairable: int  # their content is gone from the blob store too
    skipped: int = 0  # their path is held by another outcome (reported before paths were unique): left alone


def safe_component(name: str) -> str:
    """A readable, filesystem-safe path component for a run, package or item name (stable, collision-free)."""
    cleaned = _SAFE.sub("_", name).strip("._") or "_"
    if cleaned != name or cleaned.lower() in _RESERVED or cleaned in (BLOBS, EXPORTS):
        cleaned = f"{cleaned[:80]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return cleaned[:120]


def default_path(run: str, package: str, item: str, outcome_type: str) -> str:
    return "/".join(safe_component(p) for p in (run, package, item))


def in_run_folder(run: str, rel: str) -> str:
    """A client's outcome_path, relative to its run's folder, as the path relative to the artifacts root the
    store records (the run's folder is the first component of its default paths too)."""
    return f"{safe_component(run)}/{rel}"


def make_dirs(path: Path) -> None:
    """Create `path` and any missing parent, each mode 0700 (umask can only take bits away): what a run
    writes is readable by the service's user alone. Existing folders are left as they are."""
    missing: list[Path] = []
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # a concurrent writer made it first
            folder.mkdir(mode=0o700)


def _sha256_of(path: Path) -> str | None:
    """The sha256 of a regular file's bytes (None when there is none at `path`), read in 1 MiB pieces."""
    digest = hashlib.sha256()
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == getattr(os, "ELOOP", -1):  # a symlink planted at the path: not the content
            return ""
        raise
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return ""
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class Artifacts:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root.absolute()
        self.max_bytes = max_bytes
        self._real_root: Path | None = None  # the root with its symlinks resolved, once it exists

    def secure_root(self) -> None:
        """At start: create the root mode 0700, or take group and other rights off an existing root this
        user owns (made before folders were 0700), so nothing under it is reachable by another local user
        whatever the mode of the folders and files below. A root owned by another user is left alone."""
        try:
            st = os.stat(self.root)
        except FileNotFoundError:
            make_dirs(self.root)
            return
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and st.st_mode & 0o077:
            os.chmod(self.root, stat.S_IMODE(st.st_mode) & 0o700)
            log.info("artifacts root %s: group and other rights removed (now 0700)", self.root)

    # ---- paths ----------------------------------------------------------------------------------

    def check_path(self, rel: str, field: str = "outcome_path") -> str:
        """Validate a client-supplied relative path; returns it normalised. Never leaves the root."""
        if not rel or "\x00" in rel or "\\" in rel:
            raise ArtifactError("must be a non-empty relative path using '/' and no NUL bytes", field)
        if len(rel.encode()) > MAX_PATH_BYTES:
            raise ArtifactError(f"longer than {MAX_PATH_BYTES} bytes", field)
        p = PurePosixPath(rel)
        if p.is_absolute() or rel.startswith("~"):
            raise ArtifactError("must be relative to the artifacts root, not absolute", field)
        parts = p.parts
        if not parts:  # "." and the like name the root itself
            raise ArtifactError("must name a file under the artifacts root", field)
        for part in parts:
            if part in ("..", "."):
                raise ArtifactError("may not contain '.' or '..' components", field)
            if len(part.encode()) > MAX_COMPONENT_BYTES:
                raise ArtifactError(f"has a component longer than {MAX_COMPONENT_BYTES} bytes", field)
            if part.split(".")[0].lower() in _RESERVED:
                raise ArtifactError(f"uses the reserved name {part!r}", field)
        if parts[0] in (BLOBS, EXPORTS):
            raise ArtifactError(f"may not write inside the internal '{parts[0]}' folder", field)
        self._resolve_inside(rel, field)
        return str(p)

    def _resolve_inside(self, rel: str, field: str) -> Path:
        target = self.root / rel
        # resolved once (a realpath is a few lstat calls; a report checks its path three times): were the
        # root later replaced by a symlink to elsewhere, every path would resolve outside it and be refused
        root = self._real_root
        if root is None:
            root = self.root.resolve()
            if root.is_dir():
                self._real_root = root
        if self._plainly_inside(root, rel):
            return target
        # resolve() follows every symlink that exists along the way, so an escape is caught here
        resolved = target.resolve()
        if resolved != root and root not in resolved.parents:
            raise ArtifactError("resolves outside the artifacts root (symlink?)", field)
        return target

    def blocking_path(self, rel: str) -> str | None:
        """What keeps a file from being written at `rel` (a checked path): a leading part of it that is a
        file where a folder is needed, or `rel` itself when it is a folder; None when nothing is in the way."""
        parts = rel.split("/")
        current = str(self.root)
        for n, part in enumerate(parts, 1):
            current = current + "/" + part
            try:
                mode = os.lstat(current).st_mode
            except FileNotFoundError:
                return None
            if stat.S_ISLNK(mode):  # inside the root (checked): judged by what it points at
                try:
                    mode = os.stat(current).st_mode
                except OSError:
                    return None
            if n < len(parts) and not stat.S_ISDIR(mode):
                return "/".join(parts[:n])
            if n == len(parts) and stat.S_ISDIR(mode):
                return rel
        return None

    def mime_for(self, rel: str | None, given: str | None) -> str:
        if given:
            return given
        if rel:
            guessed, _ = mimetypes.guess_type(rel)
            if guessed:
                return guessed
        return "text/plain"

    @staticmethod
    def _plainly_inside(root: Path, rel: str) -> bool:
        """True when `rel` has no '.', '..' or empty component and no existing component of it under the
        (resolved) root is a symlink: then it cannot lead outside. One lstat per existing component, where
        a full resolve() costs a realpath of the whole absolute path; anything else takes the full check."""
        current = str(root)
        for part in rel.split("/"):
            if part in ("", ".", ".."):
                return False
            current = current + "/" + part
            try:
                mode = os.lstat(current).st_mode
            except FileNotFoundError:
                return True  # nothing below a missing component exists, so no symlink either
            except OSError:
                return False
            if stat.S_ISLNK(mode):
                return False
        return True

    # ---- writes ---------------------------------------------------------------------------------

    def put_blob(self, data: bytes) -> Blob:
        if len(data) > self.max_bytes:
            raise ArtifactError(f"content is {len(data)} bytes; the limit is {self.max_bytes}", "content")
        sha = hashlib.sha256(data).hexdigest()
        path = self.blob_path(sha)
        try:
            os.utime(path)  # it exists: fresh again, so collect_garbage leaves it to this report
        except FileNotFoundError:
            self._atomic_write(path, data)
        except OSError as exc:
            raise ArtifactError(f"could not write the artifact: {exc.strerror or exc}", "content") from exc
        return Blob(sha, len(data))

    def write_copy(self, rel: str, data: bytes) -> Path:
        """The readable file of content the store keeps (inline), after its commit: its blob written without
        fsync (the store holds the durable copy and rebuilds this one when it is lost), linked at rel."""
        sha = hashlib.sha256(data).hexdigest()
        blob = self.blob_path(sha)
        if not os.path.exists(blob):
            self._atomic_write(blob, data, sync=False)
        return self.materialize(rel, sha)

    def collect_garbage(self, referenced: set[str], older_than: float, now: float) -> GarbageReport:
        """Delete the blobs no outcome refers to that nothing has written for `older_than` seconds.

        `referenced` must be read after any report that could refer to a blob older than that has
        committed (reports commit seconds after writing their blob). A candidate is first moved aside,
        then judged on the moved file's time, so a report writing the same bytes meanwhile either
        refreshed it (kept, moved back) or found it gone and wrote it anew."""
        removed = removed_bytes = kept = 0
        root = self.root / BLOBS
        if not root.is_dir():
            return GarbageReport(0, 0, 0)
        cutoff = now - older_than
        paths = sorted(root.glob("??/*"))
        held = {p.name.removeprefix(".gc-") for p in paths if not p.name.startswith(".tmp-")}
        if held and not held & referenced and any(_older(p, cutoff) for p in paths):
            # not one stored blob is referred to: most likely a store these artifacts do not belong to
            # (a forgotten --database-url); deleting by its word would delete everything
            raise ArtifactError(
                f"none of the {len(held)} stored blobs under {self.root} is referred to by this store's"
                " outcomes; is the database URL the one these artifacts belong to? nothing was deleted",
                "database_url",
            )
        for path in paths:
            sha = path.name
            if path.name.startswith((".gc-", ".tmp-")):
                # left by a killed collection (a blob moved aside) or a killed write (a partial file)
                with contextlib.suppress(FileNotFoundError):
                    st = path.stat()
                    if st.st_mtime >= cutoff:
                        continue
                    blob = path.with_name(path.name[4:])
                    if path.name.startswith(".gc-") and blob.name in referenced and not blob.exists():
                        os.replace(path, blob)
                        kept += 1
                        continue
                    path.unlink()
                    removed += 1
                    removed_bytes += st.st_size
                continue
            if not re.fullmatch(r"[0-9a-f]{64}", sha) or path.parent.name != sha[:2]:
                continue  # not ours
            try:
                if sha in referenced or path.stat().st_mtime >= cutoff:
                    kept += 1
                    continue
                aside = path.with_name(f".gc-{sha}")
                os.replace(path, aside)
                st = aside.stat()
                if st.st_mtime >= cutoff:  # refreshed by a report between the two looks: put it back
                    os.replace(aside, path)
                    kept += 1
                    continue
                aside.unlink()
            except FileNotFoundError:
                continue
            removed += 1
            removed_bytes += st.st_size
        return GarbageReport(removed, removed_bytes, kept)

    def blob_path(self, sha: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise ArtifactError("not a sha256", "content_sha256")
        return self.root / BLOBS / sha[:2] / sha

    def materialize(self, rel: str, sha: str) -> Path:
        """Place the blob at its human path (after the store committed the report)."""
        target = self._resolve_inside(rel, "outcome_path")
        source = self.blob_path(sha)
        tmp = target.parent / f".{target.name}.{os.getpid()}.{sha[:8]}.tmp"
        try:
            try:
                self._link_or_copy(source, tmp)
            except FileNotFoundError:
                if not source.exists():
                    raise
                make_dirs(target.parent)  # its folder is new
                self._resolve_inside(rel, "outcome_path")  # re-check after creating parents
                self._link_or_copy(source, tmp)
            os.replace(tmp, target)
        except OSError as exc:
            raise ArtifactError(f"could not write the artifact: {exc.strerror or exc}", "content") from exc
        return target

    @staticmethod
    def _link_or_copy(source: Path, tmp: Path) -> None:
        try:
            os.link(source, tmp)
        except FileExistsError:  # left by a write killed midway: replaced
            os.unlink(tmp)
            os.link(source, tmp)
        except FileNotFoundError:
            raise
        except OSError:  # no hard links here (another file system, a Windows share)
            shutil.copyfile(source, tmp)
            os.chmod(tmp, 0o600)

    def ensure_linked(self, rel: str, sha: str) -> bool:
        """Link the blob at outcome_path when nothing is there (a process killed between the store's commit
        and materialize left it missing); True when it had to. A file already there is left alone."""
        if self._resolve_inside(rel, "outcome_path").exists():
            return False
        if not self.blob_path(sha).exists():
            raise ArtifactError(f"its content {sha[:12]}… is not in the blob store", "outcome_path")
        self.materialize(rel, sha)
        return True

    def file_differs(self, rel: str, sha: str) -> bool:
        """True when the file at outcome_path holds bytes other than the content `sha` (a file another report
        or a person wrote there, a symlink or a folder); False when it matches or is missing."""
        found = _sha256_of(self._resolve_inside(rel, "outcome_path"))
        return found is not None and found != sha

    def blob_intact(self, sha: str) -> bool:
        """The blob of `sha` exists and still holds those bytes (a readable file is a hard link to it: an
        edit made in place through the link changes the blob too)."""
        return _sha256_of(self.blob_path(sha)) == sha

    def restore(self, rel: str, sha: str, body: bytes | None) -> None:
        """Put the content `sha` back at outcome_path, replacing whatever is there: from its blob when that is
        intact, else from `body` (content the store keeps), whose blob is written anew."""
        if not self.blob_intact(sha):
            if body is None or hashlib.sha256(body).hexdigest() != sha:
                raise ArtifactError(f"its content {sha[:12]}… is not in the blob store", "outcome_path")
            self._atomic_write(self.blob_path(sha), body)
        self.materialize(rel, sha)

    def read_blob(self, sha: str) -> bytes:
        return self.blob_path(sha).read_bytes()

    def write_export(self, name: str, data: bytes) -> Path:
        path = self.root / EXPORTS / name
        self._atomic_write(path, data)
        return path

    def _atomic_write(self, path: Path, data: bytes, sync: bool = True) -> None:
        tmp = f"{path.parent}/.tmp-{os.getpid()}-{threading.get_ident()}-{next(_TMP_SEQ)}"
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileNotFoundError:  # its folder is new
                make_dirs(path.parent)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    if sync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            raise ArtifactError(
                f"could not write the artifact ({exc.strerror or exc}); the outcome was not changed",
                "content",
            ) from exc
