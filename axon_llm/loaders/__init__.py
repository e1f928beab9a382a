"""Checkpoint loaders: HF-layout safetensors folders (``safetensors.py``) and GGUF files (``gguf.py``).

A loader never imports ``axon_llm.auto`` (which picks a loader); the Rust crate's
``load_llama_from_hf`` / ``load_mistral_from_hf`` wrap ``from_pretrained`` and live beside it in
``axon_llm.auto``.
"""

from axon_llm.loaders.safetensors import (
    HFLoader, SafetensorsFile, load_state, map_axonml_to_hf, map_hf_to_axonml, read_safetensors, save_pretrained,
    write_safetensors,
)

__all__ = [
    "HFLoader", "SafetensorsFile", "load_state",
    "map_axonml_to_hf", "map_hf_to_axonml", "read_safetensors", "save_pretrained", "write_safetensors",
]
