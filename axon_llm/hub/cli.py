"""The hub's part of the ``axon-llm`` command: ``download``, ``list`` and ``cache ls|rm``.

``axon_llm/cli.py`` builds the top-level parser and calls :func:`add_subcommands`; each
subcommand stores its handler in ``args.func`` (a function ``(args) -> int``). Results go
to stdout, progress bars to stderr; failures are raised as ``LLMError`` for the caller to
print as one line. ``python -m axon_llm.hub.cli ...`` runs these commands on their own.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys

from axon_llm.errors import HubError, LLMError, ModelNotFoundError
from axon_llm.hub.cache import RepoCache, cache_root, scan_cache
from axon_llm.hub.download import resolve_local, resolve_model_path
from axon_llm.hub.names import validate_repo_id
from axon_llm.hub.registry import get_model, llm_registry

__all__ = ["add_subcommands", "main"]


def _human(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def cmd_download(args: argparse.Namespace) -> int:
    """Fetch a registry model (or find it in its installed package) and print the path to open."""
    print(resolve_model_path(args.name, force=args.force))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Print the registry: name, family, parameters, context, download size, where it is available."""
    models = sorted(llm_registry().values(), key=lambda m: m.name)
    if args.architecture:
        key = args.architecture.lower()
        models = [m for m in models if key in (m.architecture.lower(), m.hf_architecture.lower())]
    cached = {r.repo_id for r in scan_cache()}
    rows = []
    for m in models:
        where = "package" if resolve_local(m) is not None else ("cached" if m.repo_id in cached else "")
        rows.append({"name": m.name, "architecture": m.architecture, "parameters": m.num_parameters,
                     "context_length": m.context_length, "repo_id": m.repo_id, "revision": m.revision,
                     "format": m.format, "download_size": m.download_size, "gated": m.gated, "available": where})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = f"{'NAME':34} {'ARCH':8} {'PARAMS':>7} {'CONTEXT':>7} {'SIZE':>9}  {'REPO':52} AVAILABLE"
    print(header)
    for r in rows:
        ctx = "-" if r["context_length"] is None else str(r["context_length"])
        note = r["available"] + (" (gated)" if r["gated"] else "")
        print(f"{r['name']:34} {r['architecture']:8} {_params(r['parameters']):>7} {ctx:>7} "
              f"{_human(r['download_size']):>9}  {r['repo_id']:52} {note.strip()}")
    return 0


def cmd_cache_ls(args: argparse.Namespace) -> int:
    """Print every cached repository with its size, revisions and folder."""
    repos = scan_cache()
    print(f"cache: {cache_root()}")
    if not repos:
        print("(empty)")
        return 0
    for r in repos:
        revs = ", ".join(f"{k}->{v[:12]}" if k != v else v[:12] for k, v in sorted(r.revisions.items()))
        extra = f", {r.incomplete} interrupted download(s)" if r.incomplete else ""
        print(f"{r.repo_id:48} {_human(r.size_bytes):>9}  {r.num_blobs} file(s){extra}  [{revs}]  {r.folder}")
    return 0


def _repo_of(name: str) -> str:
    try:
        return get_model(name).repo_id
    except ModelNotFoundError:
        if "/" in name:
            return validate_repo_id(name)
        raise


def cmd_cache_rm(args: argparse.Namespace) -> int:
    """Delete the cached files of registry models or repositories."""
    root = cache_root()
    for name in args.names:
        folder = RepoCache(root, _repo_of(name)).folder
        if not folder.is_dir():
            raise ModelNotFoundError(f"{name!r} is not in the cache {root}")
        try:
            shutil.rmtree(folder)
        except OSError as exc:
            raise HubError(f"could not remove {folder}: {exc}") from exc
        print(f"removed {folder}")
    return 0


def add_subcommands(subparsers) -> None:
    """Add ``download``, ``list`` and ``cache`` to an ``argparse`` subparsers object."""
    p = subparsers.add_parser("download", help="download a registry model and print the path to load",
                              description="Download every file of a registry model (or find it in its "
                                          "installed package) and print the path from_pretrained opens.")
    p.add_argument("name", help="registry name (see `axon-llm list`) or repository id")
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p.set_defaults(func=cmd_download)

    p = subparsers.add_parser("list", help="list the models in the registry")
    p.add_argument("--architecture", help="only this family (llama, gpt2, ...) or HF class")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    p = subparsers.add_parser("cache", help="inspect or clear the download cache")
    cache_sub = p.add_subparsers(dest="cache_command", metavar="{ls,rm}")
    cache_sub.required = True
    ls = cache_sub.add_parser("ls", help="list cached repositories")
    ls.set_defaults(func=cmd_cache_ls)
    rm = cache_sub.add_parser("rm", help="delete cached repositories")
    rm.add_argument("names", nargs="+", help="registry names or repository ids")
    rm.set_defaults(func=cmd_cache_rm)


def main(argv: list[str] | None = None) -> int:
    """Run the hub subcommands on their own: ``python -m axon_llm.hub.cli list``."""
    parser = argparse.ArgumentParser(prog="axon-llm", description="axon-llm hub commands")
    sub = parser.add_subparsers(dest="command", metavar="{download,list,cache}")
    sub.required = True
    add_subcommands(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except LLMError as exc:
        print(f"axon-llm: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:    # e.g. permissions while removing a cache folder
        print(f"axon-llm: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("axon-llm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
