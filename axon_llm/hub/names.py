"""Validation of everything that becomes part of a URL or a cache path.

A repository id, a filename and a revision all end up inside a path under the cache
root, so each is checked before it is used: no absolute paths, no ``..``, no empty
segments, no characters that a filesystem or a URL would read differently. A sha256
is 64 lowercase hex digits. Every failure raises :class:`HubInputError` naming the
bad value.
"""

from __future__ import annotations

import re

from axon_llm.errors import HubError

__all__ = [
    "HubInputError", "validate_repo_id", "validate_filename", "validate_revision",
    "validate_sha256", "is_sha256", "is_commit",
]


class HubInputError(HubError, ValueError):
    """A repository id, filename, revision or checksum that is malformed or unsafe to use."""


_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
_FILE_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+=@-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_COMMIT = re.compile(r"[0-9a-f]{40}")


def is_sha256(value: str | None) -> bool:
    """True when ``value`` is 64 lowercase hex digits."""
    return value is not None and _SHA256.fullmatch(value) is not None


def is_commit(value: str | None) -> bool:
    """True when ``value`` is a full 40-hex git commit id."""
    return value is not None and _COMMIT.fullmatch(value) is not None


def validate_repo_id(repo_id: str) -> str:
    """Return ``repo_id`` ("name" or "org/name") or raise :class:`HubInputError`.

    ``--`` is refused because the cache folder is ``models--org--name``: allowing it
    would let two different repositories share a folder.
    """
    if not isinstance(repo_id, str) or not repo_id or len(repo_id) > 96:
        raise HubInputError(f"invalid repository id {repo_id!r}: expected 'name' or 'org/name' (at most 96 characters)")
    parts = repo_id.split("/")
    if len(parts) > 2 or any(_PART.fullmatch(p) is None for p in parts) or "--" in repo_id or ".." in repo_id:
        raise HubInputError(
            f"invalid repository id {repo_id!r}: expected 'name' or 'org/name' made of letters, digits, "
            "'.', '_' and '-' (no '--' or '..')")
    return repo_id


def validate_filename(filename: str) -> str:
    """Return ``filename`` (a relative POSIX path inside a repository) or raise :class:`HubInputError`."""
    if not isinstance(filename, str) or not filename or len(filename) > 255:
        raise HubInputError(f"invalid filename {filename!r}: expected a relative path inside the repository")
    parts = filename.split("/")
    if any(_FILE_PART.fullmatch(p) is None or ".." in p for p in parts):
        raise HubInputError(
            f"invalid filename {filename!r}: each '/'-separated part must be letters, digits and '._+=@-' "
            "(no absolute paths, '..', backslashes or empty parts)")
    return filename


def validate_revision(revision: str) -> str:
    """Return ``revision`` (a branch, tag or commit id) or raise :class:`HubInputError`."""
    if (not isinstance(revision, str) or not revision or len(revision) > 128
            or _REVISION.fullmatch(revision) is None or ".." in revision or "//" in revision
            or revision.endswith("/")):
        raise HubInputError(
            f"invalid revision {revision!r}: expected a branch, tag or commit id "
            "(letters, digits, '._/-', no '..')")
    return revision


def validate_sha256(sha256: str | None) -> str | None:
    """Return ``sha256`` lowercased (or None) or raise :class:`HubInputError`."""
    if sha256 is None:
        return None
    if not isinstance(sha256, str) or not is_sha256(sha256.lower()):
        raise HubInputError(f"invalid sha256 {sha256!r}: expected 64 hex digits")
    return sha256.lower()
