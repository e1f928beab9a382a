"""axon_llm: nine LLM architectures on the axon framework, with loaders, tokenizer, generation, hub and CLI.

The names below are the public API (see the project README); everything else is reachable
through its module (``axon_llm.attention``, ``axon_llm.loaders.gguf``, ...).
"""

from axon_llm.errors import (
    CheckpointError, ChecksumError, ConfigError, DownloadError, GatedModelError, GenerationError,
    HubError, InputError, LLMError, ModelFormatError, ModelNotFoundError, OfflineError,
    TokenizerError, UnsupportedError,
)
from axon_llm import hub
from axon_llm.hub import (
    PretrainedLLM, download_llm_weights, list_models, llm_registry, models_by_architecture, register,
)
from axon_llm.auto import from_pretrained
from axon_llm.cache import KVCache, LayerKVCache
from axon_llm.models import (
    GPT2, Bert, BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel, ChimeraConfig,
    ChimeraForCausalLM, ChimeraModel, GPT2Config, GPT2ForCausalLM, GPT2LMHead, GPT2Model, HydraConfig,
    HydraForCausalLM, HydraModel, LLaMAConfig, LLaMAForCausalLM, LLaMAModel, MistralConfig, MistralForCausalLM,
    MistralModel, Phi3Config, PhiConfig, PhiForCausalLM, PhiModel, SSMConfig, SSMForCausalLM, TridentConfig,
    TridentForCausalLM, TridentModel, Qwen2Config, Qwen2ForCausalLM, Gemma3Config, Gemma3ForCausalLM,
)
from axon_llm.models.ssm import SSMBlock
from axon_llm.ternary import TernaryLinear
from axon_llm.sampling import GenerationConfig, TextGenerator
from axon_llm.quantized import QuantizedLinear
from axon_llm.tokenizer import HFTokenizer, SpecialTokens, StreamDecoder

__version__ = "0.1.0"
