"""Every model family, one file each, and THE architecture table derived from their classes.

Each model class declares what it implements (``architectures``: HF architecture name ->
config.json ``model_type``; ``accepted_configs()``; ``train_name``; see
:class:`axon_llm.blocks.PretrainedModel`). The tables below are computed from :data:`MODEL_CLASSES`
and are the only copy: ``from_pretrained`` (:mod:`axon_llm.auto`) and ``axon-llm train``
(:mod:`axon_llm.training`) read them. Adding a model = adding its class to :data:`MODEL_CLASSES`.
"""

from axon_llm.models.bert import Bert, BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel
from axon_llm.models.chimera import ChimeraBackbone, ChimeraConfig, ChimeraForCausalLM, ChimeraModel
from axon_llm.models.gemma3 import Gemma3Config, Gemma3ForCausalLM, Gemma3Model
from axon_llm.models.gpt2 import GPT2, GPT2Config, GPT2ForCausalLM, GPT2LMHead, GPT2Model
from axon_llm.models.hydra import HydraBackbone, HydraConfig, HydraForCausalLM, HydraModel
from axon_llm.models.llama import LLaMAConfig, LLaMAForCausalLM, LLaMAModel
from axon_llm.models.mistral import MistralConfig, MistralForCausalLM, MistralModel
from axon_llm.models.phi import Phi3Config, PhiConfig, PhiForCausalLM, PhiModel
from axon_llm.models.qwen2 import Qwen2Config, Qwen2ForCausalLM, Qwen2Model
from axon_llm.models.ssm import SSMConfig, SSMForCausalLM, SSMModel
from axon_llm.models.trident import TridentBackbone, TridentConfig, TridentForCausalLM, TridentModel

#: every model class ``from_pretrained`` builds; for a model_type shared by several classes
#: (BERT) the first one listed is the default when config.json has no ``architectures``
MODEL_CLASSES = (
    GPT2LMHead, BertModel, BertForMaskedLM, BertForSequenceClassification, LLaMAForCausalLM, MistralForCausalLM,
    PhiForCausalLM, Qwen2ForCausalLM, Gemma3ForCausalLM, SSMForCausalLM, HydraForCausalLM, ChimeraForCausalLM, TridentForCausalLM,
)


def _architectures() -> dict:
    table = {}
    for cls in MODEL_CLASSES:
        for arch in cls.architectures:
            if arch in table:
                raise RuntimeError(f"architecture {arch} is declared by {table[arch].__name__} and {cls.__name__}")
            table[arch] = cls
    return table


#: HF architecture name (config.json ``architectures[0]``) -> model class
ARCHITECTURES: dict[str, type] = _architectures()
#: config.json ``model_type`` -> the architecture used when ``architectures`` is absent
MODEL_TYPES: dict[str, str] = {}
#: config.json ``model_type`` -> config class
CONFIG_CLASSES: dict[str, type] = {}
for _cls in MODEL_CLASSES:
    for _arch, _model_type in _cls.architectures.items():
        MODEL_TYPES.setdefault(_model_type, _arch)
        _config = next((c for c in _cls.accepted_configs() if c.model_type == _model_type), _cls.config_class)
        CONFIG_CLASSES.setdefault(_model_type, _config)
#: ``axon-llm train --arch`` name -> model class
TRAINABLE: dict[str, type] = {c.train_name: c for c in MODEL_CLASSES if c.train_name}
del _cls, _arch, _model_type, _config

__all__ = [
    "MODEL_CLASSES", "ARCHITECTURES", "MODEL_TYPES", "CONFIG_CLASSES", "TRAINABLE",
    "GPT2Config", "BertConfig", "LLaMAConfig", "MistralConfig", "PhiConfig", "Phi3Config", "SSMConfig",
    "HydraConfig", "ChimeraConfig", "TridentConfig", "Qwen2Config", "Gemma3Config",
    "GPT2Model", "GPT2LMHead", "GPT2", "GPT2ForCausalLM", "BertModel", "Bert", "BertForMaskedLM",
    "BertForSequenceClassification", "LLaMAModel", "LLaMAForCausalLM", "MistralModel", "MistralForCausalLM",
    "PhiModel", "PhiForCausalLM", "Qwen2Model", "Qwen2ForCausalLM", "Gemma3Model", "Gemma3ForCausalLM", "SSMModel", "SSMForCausalLM", "HydraBackbone", "HydraForCausalLM", "HydraModel",
    "ChimeraBackbone", "ChimeraForCausalLM", "ChimeraModel", "TridentBackbone", "TridentForCausalLM", "TridentModel",
]
