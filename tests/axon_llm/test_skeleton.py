"""The one model skeleton: the derived architecture table, the one tying mechanism, the shared config checks."""

import numpy as np
import pytest

import axon
import axon_llm
from axon_llm import training
from axon_llm.auto import config_class_for, from_pretrained, model_class_for
from axon_llm.blocks import CausalLM, PretrainedModel
from axon_llm.errors import ConfigError, UnsupportedError
from axon_llm.loaders.safetensors import read_safetensors
from axon_llm.models import (
    ARCHITECTURES, CONFIG_CLASSES, MODEL_CLASSES, MODEL_TYPES, TRAINABLE, BertConfig, ChimeraConfig,
    ChimeraForCausalLM, GPT2Config, GPT2LMHead, HydraConfig, HydraForCausalLM, LLaMAConfig, LLaMAForCausalLM,
    MistralConfig, MistralForCausalLM, Phi3Config, PhiConfig, PhiForCausalLM, SSMConfig, SSMForCausalLM,
    TridentConfig, TridentForCausalLM,
)


# ---------------------------------------------------------------------------------------------
# one architecture table, derived from the classes
# ---------------------------------------------------------------------------------------------
def test_every_architecture_round_trips_to_the_class_that_declares_it():
    declared = {arch: cls for cls in MODEL_CLASSES for arch in cls.architectures}
    assert ARCHITECTURES == declared
    for arch, cls in ARCHITECTURES.items():
        assert issubclass(cls, PretrainedModel)
        assert model_class_for({"architectures": [arch]}) == (cls, arch)
        model_type = cls.architectures[arch]
        got, got_arch = model_class_for({"model_type": model_type})   # no architectures: the model_type's default
        assert got_arch == MODEL_TYPES[model_type] and model_type in got.architectures.values()
        config_cls = config_class_for(cls, {"architectures": [arch], "model_type": model_type})
        assert config_cls in cls.accepted_configs() and CONFIG_CLASSES[model_type] is config_cls


def test_the_table_covers_the_contract_and_the_config_model_types():
    contract = {"GPT2LMHeadModel": "GPT2LMHead", "BertModel": "Bert", "BertForMaskedLM": "BertForMaskedLM",
                "BertForSequenceClassification": "BertForSequenceClassification",
                "LlamaForCausalLM": "LLaMAForCausalLM", "MistralForCausalLM": "MistralForCausalLM",
                "MixtralForCausalLM": "MistralForCausalLM", "PhiForCausalLM": "PhiForCausalLM",
                "Phi3ForCausalLM": "PhiForCausalLM", "MambaForCausalLM": "SSMForCausalLM",
                "BitNetForCausalLM": "TridentModel"}
    for arch, name in contract.items():
        assert ARCHITECTURES[arch] is getattr(axon_llm, name)
    assert CONFIG_CLASSES["phi3"] is Phi3Config and CONFIG_CLASSES["mixtral"] is MistralConfig
    for model_type, config_cls in CONFIG_CLASSES.items():
        assert config_cls.model_type == model_type or model_type == "mixtral"
    with pytest.raises(UnsupportedError, match="supported: "):
        model_class_for({"architectures": ["NoSuchForCausalLM"]})


def test_training_reads_the_same_table():
    assert training.ARCHITECTURES is TRAINABLE
    assert list(TRAINABLE) == ["gpt2", "bert", "llama", "mistral", "phi", "qwen2", "gemma3", "ssm", "hydra", "chimera", "trident"]
    assert all(TRAINABLE[name].train_name == name for name in TRAINABLE)
    assert set(training.list_presets("phi")) >= {"phi1", "phi2", "tiny"}


def test_old_names_are_the_same_objects():
    from axon_llm.models import bert, chimera, gpt2, hydra, trident

    assert axon_llm.TridentModel is trident.TridentForCausalLM is TridentForCausalLM
    assert axon_llm.HydraModel is hydra.HydraForCausalLM is HydraForCausalLM
    assert axon_llm.ChimeraModel is chimera.ChimeraForCausalLM is ChimeraForCausalLM
    assert axon_llm.GPT2 is gpt2.GPT2Model and axon_llm.GPT2ForCausalLM is GPT2LMHead
    assert axon_llm.Bert is bert.BertModel
    # the backbones are the XModel / XBackbone classes the LMs hold under HF's prefix
    assert isinstance(HydraForCausalLM(HydraConfig.tiny()).model, hydra.HydraBackbone)
    assert isinstance(TridentForCausalLM(TridentConfig.tiny()).model, trident.TridentBackbone)
    # files saved under the old architecture names still load into the same classes
    assert ARCHITECTURES["HydraModel"] is HydraForCausalLM and ARCHITECTURES["ChimeraModel"] is ChimeraForCausalLM


# ---------------------------------------------------------------------------------------------
# one tying mechanism
# ---------------------------------------------------------------------------------------------
TIED = {
    "gpt2": lambda: GPT2LMHead(GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=1, n_head=2)),
    "llama": lambda: LLaMAForCausalLM(LLaMAConfig(vocab_size=40, hidden_size=16, intermediate_size=32,
                                                  num_hidden_layers=1, num_attention_heads=2,
                                                  tie_word_embeddings=True)),
    "phi": lambda: PhiForCausalLM(PhiConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, tie_word_embeddings=True)),
    "ssm": lambda: SSMForCausalLM(SSMConfig.from_d_model(16, 40, num_layers=1)),
    "hydra": lambda: HydraForCausalLM(HydraConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2,
                                                  num_attention_heads=2, intermediate_size=32, sliding_window=4,
                                                  tie_word_embeddings=True)),
    "chimera": lambda: ChimeraForCausalLM(ChimeraConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1,
                                                        num_attention_heads=2, num_local_experts=2,
                                                        intermediate_size=32, tie_word_embeddings=True)),
    "trident": lambda: TridentForCausalLM(TridentConfig(vocab_size=40, hidden_size=16, intermediate_size=32,
                                                        num_hidden_layers=1, num_attention_heads=2,
                                                        num_key_value_heads=1, tie_word_embeddings=True)),
}


@pytest.mark.parametrize("family", sorted(TIED))
def test_tied_head_is_the_embedding_parameter_and_is_stored_once(family, tmp_path):
    model = TIED[family]()
    assert isinstance(model, CausalLM)
    embedding = model.get_submodule(model.embedding_path).weight
    assert model.lm_head.weight is embedding                          # one Parameter ...
    assert model.tied_weights() == ("lm_head.weight",)
    keys = list(model.state_dict())
    assert "lm_head.weight" in keys and f"{model.embedding_path}.weight" in keys   # ... under two keys, as torch
    assert sum(p is embedding for p in model.parameters()) == 1
    ids = np.random.default_rng(0).integers(0, 40, (2, 5))
    with axon.no_grad():
        before = model.eval()(ids).numpy()
    model.save_pretrained(tmp_path)
    stored = set(read_safetensors(tmp_path / "model.safetensors"))
    assert stored == set(keys) - {"lm_head.weight"}                    # transformers stores the embedding only
    again = from_pretrained(tmp_path)
    assert type(again) is type(model) and again.lm_head.weight is again.get_submodule(again.embedding_path).weight
    with axon.no_grad():
        np.testing.assert_array_equal(again(ids).numpy(), before)


def test_untied_head_is_its_own_parameter_and_is_stored():
    model = LLaMAForCausalLM(LLaMAConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2))
    assert model.lm_head.weight is not model.model.embed_tokens.weight and model.tied_weights() == ()


# ---------------------------------------------------------------------------------------------
# one router-logits path
# ---------------------------------------------------------------------------------------------
def test_router_logits_are_collected_one_way():
    ids = np.random.default_rng(1).integers(0, 40, (2, 3))
    mixtral = MistralForCausalLM(MistralConfig(vocab_size=40, hidden_size=16, intermediate_size=32,
                                               num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                               num_local_experts=3, num_experts_per_tok=2))
    chimera = TIED["chimera"]()
    for model, layers, experts in ((mixtral, 2, 3), (chimera, 1, 2)):
        with axon.no_grad():
            logits, router = model.forward_with_router_logits(ids)
            np.testing.assert_array_equal(logits.numpy(), model(ids).numpy())
        assert len(router) == layers and all(tuple(r.shape) == (6, experts) for r in router)


# ---------------------------------------------------------------------------------------------
# the shared config checks behave the same in every family
# ---------------------------------------------------------------------------------------------
WINDOWED = {
    "mistral": lambda **kw: MistralConfig.tiny().replace(**kw),
    "phi": lambda **kw: PhiConfig.tiny().replace(**kw),
    "phi3": lambda **kw: Phi3Config.tiny().replace(**kw),
    "hydra": lambda **kw: HydraConfig.tiny().replace(**kw),
}


@pytest.mark.parametrize("family", sorted(WINDOWED))
@pytest.mark.parametrize("window", [True, False, 0, -1, 2.5, "4"])
def test_every_window_rejects_non_windows(family, window):
    with pytest.raises(ConfigError, match="sliding_window"):
        WINDOWED[family](sliding_window=window)


@pytest.mark.parametrize("family", sorted(WINDOWED))
def test_every_window_accepts_a_positive_integer(family):
    assert WINDOWED[family](sliding_window=np.int64(3)).sliding_window == 3
    assert WINDOWED[family](sliding_window=1).sliding_window == 1


def test_only_hydra_requires_a_window():
    for family in ("mistral", "phi", "phi3"):
        assert WINDOWED[family](sliding_window=None).sliding_window is None
    with pytest.raises(ConfigError, match="sliding_window"):
        WINDOWED["hydra"](sliding_window=None)


HEADED = {
    "gpt2": lambda h, n, kv: GPT2Config(n_embd=h, n_head=n),
    "bert": lambda h, n, kv: BertConfig(hidden_size=h, num_attention_heads=n),
    "llama": lambda h, n, kv: LLaMAConfig(hidden_size=h, num_attention_heads=n, num_key_value_heads=kv),
    "mistral": lambda h, n, kv: MistralConfig(hidden_size=h, num_attention_heads=n, num_key_value_heads=kv),
    "phi": lambda h, n, kv: PhiConfig(hidden_size=h, num_attention_heads=n, num_key_value_heads=kv,
                                      partial_rotary_factor=1.0),
    "phi3": lambda h, n, kv: Phi3Config(hidden_size=h, num_attention_heads=n, num_key_value_heads=kv),
    "hydra": lambda h, n, kv: HydraConfig(hidden_size=h, num_attention_heads=n, num_key_value_heads=kv),
    "chimera": lambda h, n, kv: ChimeraConfig(hidden_size=h, num_attention_heads=n, num_key_value_heads=kv),
    "trident": lambda h, n, kv: TridentConfig(hidden_size=h, num_attention_heads=n, num_key_value_heads=kv),
}
HAS_KV_HEADS = sorted(set(HEADED) - {"gpt2", "bert"})


@pytest.mark.parametrize("family", sorted(HEADED))
def test_heads_must_divide_the_hidden_size_everywhere(family):
    assert HEADED[family](64, 4, 4).num_attention_heads == 4                    # the same shapes are fine
    with pytest.raises(ConfigError, match=r"hidden_size \(66\) must be divisible by num_attention_heads \(4\)"):
        HEADED[family](66, 4, 4)
    for heads in (0, -2, True):
        with pytest.raises(ConfigError, match="num_attention_heads|n_head"):     # GPT-2 names its own field
            HEADED[family](64, heads, 4)


@pytest.mark.parametrize("family", HAS_KV_HEADS)
def test_kv_heads_must_divide_the_heads_everywhere(family):
    assert HEADED[family](64, 4, 2).num_key_value_heads == 2
    with pytest.raises(ConfigError, match=r"num_attention_heads \(4\) must be divisible by num_key_value_heads \(3\)"):
        HEADED[family](64, 4, 3)


@pytest.mark.parametrize("cls", [c for c in MODEL_CLASSES])
def test_every_model_rejects_a_config_of_another_family(cls):
    other = SSMConfig.tiny() if cls is not SSMForCausalLM else LLaMAConfig.tiny()
    with pytest.raises(ConfigError, match=f"{cls.__name__} needs a {cls.config_class.__name__}"):
        cls(other)


ROTARY = {
    "llama": lambda **kw: LLaMAConfig.tiny().replace(**kw),
    "mistral": lambda **kw: MistralConfig.tiny().replace(**kw),
    "phi": lambda **kw: PhiConfig.tiny().replace(**kw),
    "phi3": lambda **kw: Phi3Config.tiny().replace(**kw),
    "chimera": lambda **kw: ChimeraConfig.tiny().replace(**kw),
    "trident": lambda **kw: TridentConfig.tiny().replace(**kw),
}


@pytest.mark.parametrize("family", sorted(ROTARY))
def test_every_rope_theta_must_be_positive(family):
    assert isinstance(ROTARY[family](rope_theta=500).rope_theta, float)
    for theta in (0, -1.0):
        with pytest.raises(ConfigError, match="rope_theta"):
            ROTARY[family](rope_theta=theta)


@pytest.mark.parametrize("family", ["llama", "phi", "phi3"])
def test_every_partial_rotary_factor_is_checked_alike(family):
    for factor in (0.0, 1.5):
        with pytest.raises(ConfigError, match="partial_rotary_factor"):
            ROTARY[family](partial_rotary_factor=factor)
    with pytest.raises(ConfigError, match="rotary dimension"):
        ROTARY[family](partial_rotary_factor=0.01)                  # rotates 0 channels of a 64-wide head


@pytest.mark.parametrize("config, field", [
    (lambda v: SSMConfig.tiny().replace(layer_norm_epsilon=v), "layer_norm_epsilon"),
    (lambda v: HydraConfig.tiny().replace(rms_norm_eps=v), "rms_norm_eps"),
    (lambda v: ChimeraConfig.tiny().replace(rms_norm_eps=v), "rms_norm_eps"),
    (lambda v: TridentConfig.tiny().replace(rms_norm_eps=v), "rms_norm_eps"),
])
def test_every_norm_epsilon_must_be_positive(config, field):
    assert getattr(config(1e-6), field) == 1e-6
    for bad in (0.0, -1e-5, True, "1e-5"):
        with pytest.raises(ConfigError, match=field):
            config(bad)


def test_training_pads_with_the_models_declared_pad_id():
    assert TRAINABLE["bert"].default_pad_token_id == 0
    assert all(cls.default_pad_token_id is None for name, cls in TRAINABLE.items() if name != "bert")
