"""The download cache: a folder per repository shaped like huggingface_hub's.

::

    <root>/models--<org>--<name>/
        blobs/<sha256>                      the verified bytes, one file per distinct content
        blobs/<key>-<pid>-<rand>.incomplete a download in progress (never trusted, never linked)
        snapshots/<commit>/<filename>       symlink -> ../../blobs/<sha256> (hard link or copy where
                                            symlinks fail)
        refs/<revision>                     text file: the commit (snapshot folder) of a branch/tag
        .no_exist/<commit>/<filename>       an optional file the server answered 404 for
        .locks/<key>.lock                   fcntl lock serialising downloads of one file

A file appears under ``snapshots/`` only after its bytes were verified and moved into
``blobs/`` with ``os.replace``; so anything reachable from ``snapshots/`` is complete and
a killed download leaves at most an ``.incomplete`` file, which nothing reads and the next
download of the same file deletes.

The root is ``$AXON_HUB_CACHE``, else ``$XDG_CACHE_HOME/axon/hub/llm``, else
``~/.cache/axon/hub/llm``, read at call time. Existing huggingface_hub caches
(``$HF_HUB_CACHE``, ``$HF_HOME/hub``, ``~/.cache/huggingface/hub``) are searched read-only.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from axon_llm.hub.names import is_commit, is_sha256, validate_filename, validate_repo_id, validate_revision

__all__ = [
    "cache_root", "hf_cache_roots", "RepoCache", "CachedRepo", "scan_cache", "file_sha256", "place_file",
]

_HASH_BLOCK = 1 << 20


def cache_root() -> Path:
    """The cache root, from the environment at call time (see the module docstring)."""
    explicit = os.environ.get("AXON_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "axon" / "hub" / "llm"


def hf_cache_roots() -> list[Path]:
    """Existing huggingface_hub cache folders, in huggingface_hub's order of precedence."""
    candidates = []
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]).expanduser())
    if os.environ.get("HF_HOME"):
        candidates.append(Path(os.environ["HF_HOME"]).expanduser() / "hub")
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        candidates.append(Path(xdg).expanduser() / "huggingface" / "hub")
    candidates.append(Path.home() / ".cache" / "huggingface" / "hub")
    seen, roots = set(), []
    for path in candidates:
        key = os.path.realpath(path)
        if key not in seen and path.is_dir():
            seen.add(key)
            roots.append(path)
    return roots


def file_sha256(path: Path) -> str:
    """The sha256 of a file's content, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def place_file(target: Path, source: Path) -> None:
    """Make ``target`` name the content of ``source`` atomically.

    Tries a relative symlink, then a hard link, then a copy; whichever works is first
    created under a temporary name beside ``target`` and then ``os.replace``-d onto it,
    so ``target`` is never seen half-made.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        try:
            os.symlink(os.path.relpath(os.path.realpath(source), os.path.realpath(target.parent)), tmp)
        except (OSError, NotImplementedError):
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@dataclass(frozen=True)
class RepoCache:
    """The cache folder of one repository under one cache root (ours or huggingface_hub's)."""

    root: Path
    repo_id: str

    def __post_init__(self) -> None:
        validate_repo_id(self.repo_id)

    @property
    def folder(self) -> Path:
        """``<root>/models--<owner>--<name>``, huggingface_hub's folder name for the repo."""
        return self.root / ("models--" + self.repo_id.replace("/", "--"))

    @property
    def blobs(self) -> Path:
        """``<folder>/blobs``: file contents, named by their sha256."""
        return self.folder / "blobs"

    @property
    def locks(self) -> Path:
        """``<folder>/.locks``: one lock file per (revision, filename) being downloaded."""
        return self.folder / ".locks"

    def key(self, revision: str, filename: str) -> str:
        """A short stable name for (revision, filename), used for its lock and temp files."""
        return hashlib.sha256(f"{revision}\n{filename}".encode()).hexdigest()[:24]

    def lock_path(self, revision: str, filename: str) -> Path:
        """The lock file that serialises downloads of (revision, filename)."""
        return self.locks / f"{self.key(revision, filename)}.lock"

    def temp_path(self, revision: str, filename: str) -> Path:
        """A unique temporary file in ``blobs/`` (same filesystem, so ``os.replace`` is atomic)."""
        return self.blobs / f"{self.key(revision, filename)}-{os.getpid()}-{uuid.uuid4().hex[:8]}.incomplete"

    def remove_stale_temps(self, revision: str, filename: str) -> int:
        """Delete leftover temp files of (revision, filename); call only while holding its lock."""
        removed = 0
        if self.blobs.is_dir():
            for stale in self.blobs.glob(f"{self.key(revision, filename)}-*.incomplete"):
                stale.unlink(missing_ok=True)
                removed += 1
        return removed

    def snapshot_folder(self, revision: str) -> str | None:
        """The snapshot folder name a revision points at, or None when unknown."""
        validate_revision(revision)
        ref = self.folder / "refs" / revision
        if ref.is_file():
            name = ref.read_text().strip()
            if name and "/" not in name and name not in (".", ".."):
                return name
        if is_commit(revision):
            return revision
        return None

    def set_ref(self, revision: str, folder_name: str) -> None:
        """Record that ``revision`` points at snapshot folder ``folder_name``."""
        validate_revision(revision)
        if not is_commit(revision):
            _write_text_atomic(self.folder / "refs" / revision, folder_name)

    def find(self, revision: str, filename: str) -> Path | None:
        """The cached file for (revision, filename) if present and not a dangling link."""
        validate_filename(filename)
        folder = self.snapshot_folder(revision)
        if folder is None:
            return None
        path = self.folder / "snapshots" / folder / filename
        return path if path.is_file() else None

    def _absence_marker(self, folder_name: str, filename: str) -> Path:
        return self.folder / ".no_exist" / folder_name / validate_filename(filename)

    def mark_absent(self, folder_name: str, filename: str) -> None:
        """Remember that the server answered 404 for an optional file of this snapshot."""
        marker = self._absence_marker(folder_name, filename)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()

    def known_absent(self, folder_name: str, filename: str) -> bool:
        """True when :meth:`mark_absent` recorded a 404 for this file of this snapshot."""
        return self._absence_marker(folder_name, filename).exists()

    def snapshot_path(self, folder_name: str, filename: str) -> Path:
        """``<folder>/snapshots/<folder_name>/<filename>`` (the filename validated first)."""
        return self.folder / "snapshots" / folder_name / validate_filename(filename)

    def is_empty(self) -> bool:
        """True when the folder holds no file but lock files: no blob (complete or in progress),
        snapshot, ref or absence marker."""
        if not self.folder.is_dir():
            return False
        for sub in self.folder.iterdir():
            if sub.name == ".locks":
                continue
            if sub.is_file() or any(p.is_file() or p.is_symlink() for p in sub.rglob("*")):
                return False
        return True

    def remove_if_empty(self) -> bool:
        """Delete the repository folder if :meth:`is_empty` (after a download that failed before
        storing anything), so ``cache ls`` does not list it; True when it was removed."""
        try:
            if self.is_empty():
                shutil.rmtree(self.folder, ignore_errors=True)
                return True
        except OSError:
            pass
        return False

    def store_blob(self, tmp: Path, sha256: str) -> Path:
        """Move a verified temp file to ``blobs/<sha256>`` (or drop it if that blob exists)."""
        assert is_sha256(sha256)
        blob = self.blobs / sha256
        if blob.is_file():
            tmp.unlink()
        else:
            os.replace(tmp, blob)
        return blob


def cached_sha256(path: Path) -> str:
    """The sha256 of a cached file, read from its blob name when it is a link to ``blobs/<sha256>``."""
    name = Path(os.path.realpath(path)).name
    return name if is_sha256(name) else file_sha256(path)


@dataclass(frozen=True)
class CachedRepo:
    """One repository in the cache, as listed by ``axon-llm cache ls``."""

    repo_id: str
    folder: Path
    size_bytes: int
    num_blobs: int
    revisions: dict[str, str]   # ref name -> snapshot folder
    incomplete: int             # leftover temp files of interrupted downloads


def scan_cache(root: Path | None = None) -> list[CachedRepo]:
    """Every repository folder under the cache root, with its size and revisions."""
    root = cache_root() if root is None else root
    repos = []
    if not root.is_dir():
        return repos
    for folder in sorted(root.glob("models--*")):
        if not folder.is_dir():
            continue
        repo_id = folder.name[len("models--"):].replace("--", "/")
        try:
            if RepoCache(root, repo_id).is_empty():   # left by a failed download: nothing to list
                continue
        except (ValueError, OSError):
            pass
        blobs = [p for p in (folder / "blobs").glob("*") if p.is_file()] if (folder / "blobs").is_dir() else []
        done = [p for p in blobs if not p.name.endswith(".incomplete")]
        refs = {}
        refs_dir = folder / "refs"
        if refs_dir.is_dir():
            for ref in refs_dir.rglob("*"):
                if ref.is_file():
                    refs[str(ref.relative_to(refs_dir))] = ref.read_text().strip()
        snapshots = folder / "snapshots"
        if snapshots.is_dir():
            for snap in snapshots.iterdir():
                if snap.name not in refs.values():
                    refs[snap.name] = snap.name
        # bytes on disk: blobs plus snapshot copies made where symlinks failed; a hard link counts once
        files = {}
        for p in done + ([q for q in snapshots.rglob("*") if q.is_file() and not q.is_symlink()]
                         if snapshots.is_dir() else []):
            st = p.stat()
            files[(st.st_dev, st.st_ino)] = st.st_size
        size = sum(files.values())
        repos.append(CachedRepo(repo_id, folder, size, len(done), refs, len(blobs) - len(done)))
    return repos
