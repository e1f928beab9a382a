"""The transformer family with HuggingFace parity, one file per architecture family.

(The SSM, Hydra, Chimera and Trident models live beside these in their own files.)
"""

from axon_llm.config import BertConfig, GPT2Config, LLaMAConfig, MistralConfig, Phi3Config, PhiConfig
from axon_llm.models.bert import Bert, BertForMaskedLM, BertForSequenceClassification
from axon_llm.models.gpt2 import GPT2, GPT2LMHead
from axon_llm.models.llama import LLaMAForCausalLM, LLaMAModel
from axon_llm.models.mistral import MistralForCausalLM, MistralModel
from axon_llm.models.phi import PhiForCausalLM, PhiModel

__all__ = [
    "GPT2Config", "BertConfig", "LLaMAConfig", "MistralConfig", "PhiConfig", "Phi3Config",
    "GPT2", "GPT2LMHead", "Bert", "BertForMaskedLM", "BertForSequenceClassification",
    "LLaMAModel", "LLaMAForCausalLM", "MistralModel", "MistralForCausalLM", "PhiModel", "PhiForCausalLM",
]
