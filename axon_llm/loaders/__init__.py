"""Checkpoint loaders: HF-layout safetensors folders (``safetensors.py``) and GGUF files (``gguf.py``)."""

from axon_llm.auto import load_llama_from_hf, load_mistral_from_hf  # the crate's names (see axon_llm/compat.py)
from axon_llm.loaders.safetensors import (
    HFLoader, SafetensorsFile, load_state, map_axonml_to_hf, map_hf_to_axonml, read_safetensors, save_pretrained,
    write_safetensors,
)

__all__ = [
    "HFLoader", "SafetensorsFile", "load_llama_from_hf", "load_mistral_from_hf", "load_state",
    "map_axonml_to_hf", "map_hf_to_axonml", "read_safetensors", "save_pretrained", "write_safetensors",
]
