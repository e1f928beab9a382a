"""``from_pretrained``: one entry point for HF folders, GGUF files and registry names.

The class is picked from ``config.json`` ``architectures[0]`` (else ``model_type``) through the
architecture table :data:`axon_llm.models.ARCHITECTURES`, derived from the model classes; a
``.gguf`` file goes to ``axon_llm.loaders.gguf.build_from_gguf``; any
other string is looked up in the model registry (``axon_llm.hub``), which yields one of the two.

Causal LMs get their ``generation_config`` as transformers does: the EOS / pad ids of the config,
overridden by the folder's ``generation_config.json`` when there is one; for GGUF, the file's
EOS id (plus its end-of-turn ids, which llama.cpp stops at too).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from axon_llm.errors import CheckpointError, GenerationError, ModelFormatError, ModelNotFoundError, UnsupportedError
from axon_llm.limits import check_config_against_file

__all__ = ["from_pretrained", "model_class_for", "config_class_for", "load_llama_from_hf", "load_mistral_from_hf"]


def model_class_for(config: dict):
    """``(model class, HF architecture)`` for a config.json dict, from the one architecture table
    :data:`axon_llm.models.ARCHITECTURES` (``UnsupportedError`` lists the supported ones)."""
    from axon_llm.models import ARCHITECTURES, MODEL_TYPES

    archs = config.get("architectures") or []
    model_type = config.get("model_type", "")
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs) or not isinstance(model_type, str):
        raise ModelFormatError(f"config.json: architectures must be a list of strings and model_type a string, "
                               f"got {str(archs)[:40]} / {str(model_type)[:40]}")
    arch = archs[0] if archs else MODEL_TYPES.get(model_type)
    if arch not in ARCHITECTURES:
        what = arch or f"model_type {config.get('model_type')!r}"
        raise UnsupportedError(f"unsupported architecture {what}; supported: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[arch], arch


def config_class_for(cls, config: dict):
    """The config class of ``cls`` that reads this config.json dict: the one for its ``model_type``
    (``Phi3Config`` for ``phi3``), else the architecture's (``MistralConfig`` for ``mixtral``)."""
    from axon_llm.models import CONFIG_CLASSES

    candidates = cls.accepted_configs()
    by_type = CONFIG_CLASSES.get(config.get("model_type") or "")
    if by_type in candidates:
        return by_type
    arch_type = cls.architectures.get((config.get("architectures") or [""])[0])
    return next((c for c in candidates if c.model_type == arch_type), cls.config_class)


def _with_folder_generation_config(model, folder: Path):
    """Give a causal LM the settings of the folder's ``generation_config.json`` (transformers
    reads it over the defaults config.json implies); other models are returned as they are."""
    from axon_llm.generation import generation_config_from_dict
    from axon_llm.loaders.safetensors import read_generation_config_json
    from axon_llm.sampling import GenerationConfig

    base = getattr(model, "generation_config", None)
    if not isinstance(base, GenerationConfig):
        return model
    data = read_generation_config_json(folder)
    if data is not None:
        try:
            model.generation_config = generation_config_from_dict(data, base)
        except GenerationError as e:
            raise ModelFormatError(f"{folder / 'generation_config.json'}: {e}") from None
    return model


def _with_gguf_generation_config(model):
    """A GGUF model's EOS ids: ``tokenizer.ggml.eos_token_id`` (already in its config, as
    transformers reads it) plus the end-of-turn ids llama.cpp also stops at (``eot_token_id``,
    ``eom_token_id``) when the file lists them."""
    md = getattr(model, "gguf_metadata", None) or {}
    cfg = getattr(model, "generation_config", None)
    if cfg is None:                                   # an encoder (BERT) generates nothing
        return model
    extra = [int(md[k]) for k in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
             if isinstance(md.get(k), (int, np.integer)) and not isinstance(md.get(k), bool)]
    extra = [e for e in extra if e not in cfg.eos_token_ids]
    if extra:
        model.generation_config = cfg.with_eos_tokens(cfg.eos_token_ids + tuple(extra))
    return model


def _load_hf_folder(folder: Path):
    from axon_llm.loaders.safetensors import HFLoader, load_state

    loader = HFLoader(folder)
    cls, _ = model_class_for(loader.config)
    if hasattr(cls, "from_hf"):                         # models with their own loading (SSM, Trident)
        own = getattr(cls, "config_class", None)
        if own is not None:                             # the same checks before they build anything
            check_config_against_file(own.from_dict(loader.config), loader.num_elements(), str(folder))
        return _with_folder_generation_config(cls.from_hf(folder), folder)
    config = config_class_for(cls, loader.config).from_dict(loader.config)
    check_config_against_file(config, loader.num_elements(), str(folder))
    model = cls(config)
    load_state(model, loader.tensors(), strict=False)   # unused tensors: a warning, as in transformers
    model.eval()
    return _with_folder_generation_config(model, folder)


def from_pretrained(src: str | Path, adapter: str | Path | None = None, **kwargs):
    """Build a model with its weights from ``src``.

    ``src`` is a HF-layout folder (``config.json`` + ``*.safetensors``, sharded or not), a
    ``.gguf`` file, or a registry name (see ``axon_llm.list_models()``). ``adapter`` is a LoRA
    adapter folder in PEFT's format (``adapter_config.json`` + ``adapter_model.safetensors``),
    applied over the loaded weights (see axon_llm/lora.py).
    """
    if adapter is not None:
        from axon_llm.lora import load_adapter

        return load_adapter(from_pretrained(src, **kwargs), adapter)
    path = Path(src)
    if path.is_file() and path.suffix == ".gguf":
        try:
            from axon_llm.loaders.gguf import build_from_gguf
        except ImportError as e:
            raise UnsupportedError(f"GGUF loading is not available ({e})") from None
        return _with_gguf_generation_config(build_from_gguf(path, **kwargs))
    if path.is_file() and path.name in ("config.json", "model.safetensors", "model.safetensors.index.json"):
        path = path.parent
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return from_pretrained(ggufs[0], **kwargs)
            raise ModelFormatError(f"{path} has no config.json (not a HF-layout model folder)")
        if kwargs:
            raise TypeError(f"from_pretrained: unexpected keyword(s) {sorted(kwargs)} for a HF-layout folder")
        return _load_hf_folder(path)
    if path.exists():
        raise ModelFormatError(f"{path} is neither a model folder nor a .gguf file")
    try:
        from axon_llm.hub import resolve_model_path
    except ImportError:
        raise ModelNotFoundError(f"{src!r} is not a folder or file, and the model registry is unavailable") from None
    return from_pretrained(resolve_model_path(str(src)), **kwargs)


def _load_folder(path: str | Path, expected: set[str]):
    model = from_pretrained(path)
    if type(model).__name__ not in expected:
        raise CheckpointError(f"{path} holds a {type(model).__name__}, expected one of {sorted(expected)}")
    return model


def load_llama_from_hf(path: str | Path):
    """A ``LLaMAForCausalLM`` from a HF LlamaForCausalLM folder (the Rust crate's loader; see axon_llm/compat.py)."""
    return _load_folder(path, {"LLaMAForCausalLM"})


def load_mistral_from_hf(path: str | Path):
    """A ``MistralForCausalLM`` (Mistral or Mixtral) from a HF folder."""
    return _load_folder(path, {"MistralForCausalLM"})
