"""The registry: named, real pretrained models and the lookup over them.

An entry (:class:`~axon_llm.hub.entry.PretrainedLLM`) says where a model lives (repository id and
revision on the hub), which files to fetch (with size and sha256 where they are pinned), what it
is (architecture family, parameter count, context length) and, for the two models the
project's demo and tests use, the PyPI package that already holds the files, so they
resolve with no network at all. The built-in entries are in ``axon_llm.hub.models``; models a
user adds with :func:`register` live here for the process.
"""

from __future__ import annotations

from axon_llm.errors import ModelNotFoundError
from axon_llm.hub.entry import HubFile, LocalPackage, PretrainedLLM
from axon_llm.hub.models import BUILTIN_MODELS
from axon_llm.hub.names import HubInputError

__all__ = [
    "HubFile", "LocalPackage", "PretrainedLLM", "llm_registry", "list_models", "models_by_architecture",
    "register", "unregister", "get_model",
]


_USER_MODELS: dict[str, PretrainedLLM] = {}


def _builtin() -> dict[str, PretrainedLLM]:
    return {m.name: m for m in BUILTIN_MODELS}


def llm_registry() -> dict[str, PretrainedLLM]:
    """Every known model by name: the built-in entries plus those added with :func:`register`."""
    models = _builtin()
    models.update(_USER_MODELS)
    return models


def list_models() -> list[str]:
    """The names of every known model, sorted."""
    return sorted(llm_registry())


def models_by_architecture(architecture: str) -> list[PretrainedLLM]:
    """Models of one family (``"llama"``) or HF class (``"LlamaForCausalLM"``), case-insensitive."""
    key = architecture.lower()
    return [m for m in llm_registry().values() if key in (m.architecture.lower(), m.hf_architecture.lower())]


def register(model: PretrainedLLM, *, replace: bool = False) -> PretrainedLLM:
    """Add a user-hosted model to the registry (for this process).

    Its files are fetched from ``$AXON_HUB_ENDPOINT/{repo_id}/resolve/{revision}/{filename}``
    like any other. A name already taken raises unless ``replace=True``.
    """
    if not isinstance(model, PretrainedLLM):
        raise HubInputError(f"register() takes a PretrainedLLM, not {type(model).__name__}")
    if not replace and model.name.lower() in {n.lower() for n in llm_registry()}:
        raise HubInputError(f"a model named {model.name!r} is already registered; pass replace=True to override it")
    _USER_MODELS[model.name] = model
    return model


def unregister(name: str) -> None:
    """Remove a model added with :func:`register` (built-in entries cannot be removed)."""
    if name not in _USER_MODELS:
        raise ModelNotFoundError(f"{name!r} was not added with register()")
    del _USER_MODELS[name]


def get_model(name: str) -> PretrainedLLM:
    """Look a model up by name (case-insensitive) or by repository id."""
    if isinstance(name, PretrainedLLM):
        return name
    models = llm_registry()
    if name in models:
        return models[name]
    lowered = str(name).lower()
    for model in models.values():
        if model.name.lower() == lowered:
            return model
    for model in models.values():
        if model.repo_id.lower() == lowered:
            return model
    raise ModelNotFoundError(
        f"unknown model {name!r}; known models: {', '.join(sorted(models))} "
        "(or pass a local folder / .gguf file, or add one with axon_llm.hub.register)")
