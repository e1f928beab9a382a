"""The transformer family with HuggingFace parity, one file per architecture family.

(The SSM, Hydra, Chimera and Trident models live beside these in their own files.)
"""

from axon_llm.config import BertConfig, GPT2Config, LLaMAConfig, MistralConfig, Phi3Config, PhiConfig
from axon_llm.models.llama import LLaMAForCausalLM, LLaMAModel

__all__ = ["GPT2Config", "BertConfig", "LLaMAConfig", "MistralConfig", "PhiConfig", "Phi3Config",
           "LLaMAForCausalLM", "LLaMAModel"]
