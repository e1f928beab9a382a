"""``axon-llm convert SRC OUT [--quant TYPE]``: a model into a GGUF file llama.cpp runs, or into an HF folder.

    convert("smollm2-135m-instruct", "smol-q8.gguf", quant="Q8_0")
    convert("runs/tiny", "tiny.gguf")                 # an ``axon-llm train`` checkpoint
    convert("model.gguf", "model-hf/")                # GGUF -> safetensors + config + tokenizer

SRC is a registry name, an HF-layout folder (``config.json`` + safetensors; a training
checkpoint is one) or a ``.gguf`` file. Every source is first read into one form: an HF config
dict, HF-named tensors (float arrays, or GGUF blocks kept as they are) and the tokenizer.

OUT ending in ``.gguf`` is written with gguf-py's ``GGUFWriter`` the way llama.cpp's
``convert_hf_to_gguf.py`` writes a llama: ``llama.*`` hyper-parameters, GGUF tensor names
(``blk.N.attn_q.weight`` ...), Q and K rows permuted to GGML's interleaved RoPE pairs
(:func:`~axon_llm.loaders.gguf.permute_qk_rows`), and the tokenizer as ``tokenizer.ggml.*``
(model, tokens, token types, merges, scores, special ids) plus ``tokenizer.chat_template``.

Tensor types. Without ``quant`` every tensor keeps its source type (GGUF blocks are copied byte
for byte; an HF checkpoint saved as float16/bfloat16 stays F16/BF16, else F32). With ``quant``
every 2-D weight is quantised to it (kernels/axon_kernels/quant_encode.py); 1-D tensors (norms,
biases) stay F32, as llama.cpp keeps them. A row length that is not a multiple of the type's
block falls back as llama.cpp's ``llama-quantize`` does: Q4_K -> Q5_0, Q5_K -> Q5_1,
Q6_K -> Q8_0, and to F16 when not even 32 divides it. (SmolLM2's 576-wide rows make most of
its Q4_K tensors Q5_0, exactly as in llama.cpp's own Q4_K files of it.)

Any other OUT is a folder: ``model.safetensors`` (float32, quantised tensors dequantised),
``config.json`` and the tokenizer files, loadable by ``axon_llm.from_pretrained``.

Nothing partial is ever left behind: the output is written to a temporary file (or folder)
beside OUT and moved into place with ``os.replace`` only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from axon_llm.errors import InputError, ModelFormatError, UnsupportedError

__all__ = ["convert", "QUANT_CHOICES"]

QUANT_CHOICES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")
_FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}     # llama-quantize, rows not a multiple of 256
_FILE_TYPE = {"F32": "ALL_F32", "F16": "MOSTLY_F16", "BF16": "MOSTLY_BF16", "Q8_0": "MOSTLY_Q8_0",
              "Q4_0": "MOSTLY_Q4_0", "Q4_1": "MOSTLY_Q4_1", "Q5_0": "MOSTLY_Q5_0", "Q5_1": "MOSTLY_Q5_1",
              "Q4_K": "MOSTLY_Q4_K_S", "Q5_K": "MOSTLY_Q5_K_S", "Q6_K": "MOSTLY_Q6_K"}
_TOKEN_NORMAL, _TOKEN_UNUSED, _TOKEN_CONTROL, _TOKEN_USER = 1, 5, 3, 4
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                    "tokenizer_byte.json", "generation_config.json")


@dataclass
class _Model:
    """A source model in one form: HF config, HF-named tensors, where its tokenizer lives."""

    config: dict
    tensors: dict[str, Any]                          # float ndarray or GGUFQuantTensor
    types: dict[str, str]                            # HF name -> the source's tensor type (F32, F16, Q4_1, ...)
    gguf_metadata: dict = field(default_factory=dict)   # a GGUF source's key/values (tokenizer.*, general.*)
    folder: Path | None = None                       # an HF source folder (tokenizer files)
    gguf_path: Path | None = None


# ------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------

def _read(src) -> _Model:
    path = Path(src)
    if path.is_file() and path.suffix == ".gguf":
        from axon_llm.loaders.gguf import load_gguf
        gm = load_gguf(path)
        types = {hf: gm.tensor_infos[g].type_name for hf, g in gm.gguf_names.items()}
        return _Model(dict(gm.config), dict(gm.tensors), types, dict(gm.metadata), gguf_path=path)
    if path.is_dir():
        if (path / "config.json").is_file():
            from axon_llm.loaders.safetensors import HFLoader
            loader = HFLoader(path)
            dtype = str(loader.config.get("torch_dtype") or loader.config.get("dtype") or "float32")
            float_type = {"float16": "F16", "bfloat16": "BF16"}.get(dtype, "F32")
            tensors = loader.tensors()
            return _Model(dict(loader.config), tensors, {k: float_type for k in tensors}, folder=path)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return _read(ggufs[0])
        raise ModelFormatError(f"{path} has no config.json (and not exactly one .gguf file)")
    if path.exists():
        raise ModelFormatError(f"{path} is neither a model folder nor a .gguf file")
    from axon_llm.hub import resolve_model_path
    return _read(resolve_model_path(str(src)))


def _llama_only(model: _Model) -> None:
    kind = model.config.get("model_type")
    if kind != "llama":
        raise UnsupportedError(f"convert supports the llama family only for now; this model is {kind!r}")
    scaling = model.config.get("rope_scaling") or {}
    rope_type = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else None
    if rope_type not in (None, "default", "linear"):
        raise UnsupportedError(f"convert: rope scaling {rope_type!r} is not supported yet (Llama 3 rope_freqs)")


def _dense(t) -> np.ndarray:
    """A tensor as float32 (GGUF blocks dequantised)."""
    return t.dequantize() if hasattr(t, "dequantize") else np.asarray(t, dtype=np.float32)


# ------------------------------------------------------------------------------------------------
# tokenizer -> tokenizer.ggml.*
# ------------------------------------------------------------------------------------------------

def _pre_tokenizer_name(pre: dict | None) -> str:
    """llama.cpp's name for a byte-level BPE pre-tokenizer (tokenizer.ggml.pre), read off tokenizer.json."""
    text = json.dumps(pre or {})
    if '"Digits"' in text and '"individual_digits": true' in text:
        return "smollm"                  # GPT-2's split preceded by single digits (SmolLM, StarCoder)
    if "\\\\p{N}{1,3}" in text:
        return "llama-bpe"               # Llama 3's regex
    return "gpt-2"


def _tokenizer_metadata(model: _Model, vocab_size: int) -> dict[str, Any]:
    """``tokenizer.*`` GGUF keys for the model's tokenizer."""
    if model.gguf_metadata:
        return {k: v for k, v in model.gguf_metadata.items() if k.startswith("tokenizer.")}
    folder = model.folder
    if folder is not None and (folder / "tokenizer_byte.json").is_file():
        return _byte_tokenizer_metadata(folder, vocab_size)
    from axon_llm.tokenizer import HFTokenizer
    tok = HFTokenizer.from_pretrained(folder)
    js = json.loads(tok.backend.to_str())
    m = js.get("model") or {}
    if m.get("type") != "BPE" or m.get("byte_fallback"):
        raise UnsupportedError(f"{folder}: only byte-level BPE tokenizers convert to GGUF so far "
                               f"(this one is {m.get('type')!r}{' with byte fallback' if m.get('byte_fallback') else ''})")
    tokens: list[str | None] = [None] * vocab_size
    types = [_TOKEN_UNUSED] * vocab_size
    for text, i in m.get("vocab", {}).items():
        if 0 <= i < vocab_size:
            tokens[i], types[i] = text, _TOKEN_NORMAL
    for added in js.get("added_tokens", []):
        i = added.get("id", -1)
        if 0 <= i < vocab_size:
            tokens[i] = added["content"]
            types[i] = _TOKEN_CONTROL if added.get("special") else _TOKEN_USER
    tokens = [t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)]
    merges = [" ".join(p) if isinstance(p, list) else p for p in m.get("merges", [])]
    md: dict[str, Any] = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": _pre_tokenizer_name(js.get("pre_tokenizer")),
                          "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
                          "tokenizer.ggml.merges": merges}
    st = tok.special_tokens
    for key, tid in (("bos_token_id", st.bos_token_id), ("eos_token_id", st.eos_token_id),
                     ("padding_token_id", st.pad_token_id), ("unknown_token_id", st.unk_token_id)):
        tid = tid if tid is not None else model.config.get(key.replace("padding", "pad"))
        if isinstance(tid, int) and 0 <= tid < vocab_size:
            md[f"tokenizer.ggml.{key}"] = tid
    md["tokenizer.ggml.add_bos_token"] = False            # HF's byte-level tokenizers add none (see tokenizer.py)
    if tok.chat_template:
        md["tokenizer.chat_template"] = tok.chat_template
    return md


def _byte_tokenizer_metadata(folder: Path, vocab_size: int) -> dict[str, Any]:
    """The byte tokenizer of ``axon-llm train`` as byte-level BPE without merges: token i is byte i
    spelled in GPT-2's byte alphabet, so both llama.cpp and axon tokenize text into its bytes."""
    from axon_llm.tokenizer import _bytes_to_unicode
    spell = _bytes_to_unicode()
    with_specials = bool(json.loads((folder / "tokenizer_byte.json").read_text(encoding="utf-8")).get("with_specials"))
    tokens = [spell[b] for b in range(256)] + (["[PAD]", "[MASK]"] if with_specials else [])
    types = [_TOKEN_NORMAL] * 256 + [_TOKEN_CONTROL] * (len(tokens) - 256)
    if vocab_size < len(tokens):
        raise ModelFormatError(f"{folder}: the model has {vocab_size} embeddings for a {len(tokens)}-token byte tokenizer")
    tokens += [f"[PAD{i}]" for i in range(len(tokens), vocab_size)]
    types += [_TOKEN_UNUSED] * (vocab_size - len(types))
    md = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "default", "tokenizer.ggml.tokens": tokens,
          "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": [], "tokenizer.ggml.add_bos_token": False}
    if with_specials:
        md["tokenizer.ggml.padding_token_id"] = 256
    return md


# ------------------------------------------------------------------------------------------------
# writing GGUF
# ------------------------------------------------------------------------------------------------

def _target_type(quant: str | None, source_type: str, shape: tuple[int, ...]) -> str:
    """The GGUF type a tensor is written as (see the module docstring)."""
    from axon_kernels.quant_formats import BLOCK
    if len(shape) < 2:
        return "F32"
    if quant is None:
        return source_type
    qtype = quant
    if qtype in BLOCK and shape[-1] % BLOCK[qtype][0]:
        qtype = _FALLBACK.get(qtype, "F16")
        if qtype in BLOCK and shape[-1] % BLOCK[qtype][0]:
            qtype = "F16"
    return qtype


def _add_value(writer, key: str, value) -> None:
    """One metadata key with gguf-py's type for its Python value (ids as uint32, as llama.cpp writes them)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (bool, np.bool_)):
        writer.add_bool(key, bool(value))
    elif isinstance(value, (int, np.integer)):
        writer.add_uint32(key, int(value)) if value >= 0 else writer.add_int32(key, int(value))
    elif isinstance(value, (float, np.floating)):
        writer.add_float32(key, float(value))
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, (list, tuple)):
        if value:
            writer.add_array(key, list(value))
        else:                                  # an empty list of strings (the byte tokenizer's merges)
            from gguf import GGUFValueType
            writer.add_key_value(key, [], GGUFValueType.ARRAY, sub_type=GGUFValueType.STRING)
    else:
        raise ModelFormatError(f"cannot write metadata {key!r} of type {type(value).__name__}")


def _writer_class():
    """gguf-py's GGUFWriter, able to write an empty array (the format allows count 0; gguf-py 0.19
    refuses it, but llama.cpp requires ``tokenizer.ggml.merges`` even when there are no merges)."""
    import gguf

    class Writer(gguf.GGUFWriter):
        def _pack_val(self, val, vtype, add_vtype, sub_type=None):
            if vtype == gguf.GGUFValueType.ARRAY and sub_type is not None and len(val) == 0:
                head = self._pack("I", vtype) if add_vtype else b""
                return head + self._pack("I", sub_type) + self._pack("Q", 0)
            return super()._pack_val(val, vtype, add_vtype, sub_type)

    return Writer


def _write_gguf(model: _Model, out: Path, quant: str | None) -> None:
    import gguf

    from axon_kernels.quant_encode import quantize
    from axon_llm.loaders.gguf import gguf_tensor_name, permute_qk_rows

    c = model.config
    hidden, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
    kv = int(c.get("num_key_value_heads") or heads)
    head_dim = int(c.get("head_dim") or hidden // heads)
    tensors = dict(model.tensors)
    if c.get("tie_word_embeddings", False):
        tensors.pop("lm_head.weight", None)
    vocab = int(tensors["model.embed_tokens.weight"].shape[0])

    w = _writer_class()(str(out), "llama")
    name = model.gguf_metadata.get("general.name") or (model.folder.name if model.folder else out.stem)
    w.add_name(str(name))
    w.add_context_length(int(c.get("max_position_embeddings") or 2048))
    w.add_embedding_length(hidden)
    w.add_block_count(int(c["num_hidden_layers"]))
    w.add_feed_forward_length(int(c["intermediate_size"]))
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(c.get("rope_theta") or 10000.0))
    w.add_layer_norm_rms_eps(float(c.get("rms_norm_eps") or 1e-5))
    w.add_vocab_size(vocab)
    if head_dim != hidden // heads:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    scaling = c.get("rope_scaling") or {}
    if isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(scaling["factor"]))

    written: list[str] = []
    for hf in sorted(tensors, key=_tensor_order):
        t = tensors[hf]
        qtype = _target_type(quant, model.types.get(hf, "F32"), tuple(t.shape))
        if hasattr(t, "type_name") and qtype == t.type_name:
            data = t.raw                                                     # blocks copied as they are
        elif qtype in ("F32", "F16"):
            data = _dense(t).astype(np.float32 if qtype == "F32" else np.float16)
        else:
            data = quantize(qtype, _dense(t))                                # uint8 [rows, row bytes]
        n_perm = heads if ".q_proj." in hf else kv if ".k_proj." in hf else 0
        if n_perm:
            data = permute_qk_rows(data, n_perm)                             # whole rows: any type
        gname = gguf_tensor_name(hf)
        if qtype in ("F32", "F16"):
            w.add_tensor(gname, data)
        else:
            w.add_tensor(gname, data, raw_shape=data.shape, raw_dtype=gguf.GGMLQuantizationType[qtype])
        written.append(qtype)
    kinds = [q for q in written if q != "F32"]
    main = quant or (max(set(kinds), key=kinds.count) if kinds else "F32")
    w.add_file_type(getattr(gguf.LlamaFileType, _FILE_TYPE.get(main, "GUESSED")))
    if any(q not in ("F32", "F16", "BF16") for q in written):
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, value in _tokenizer_metadata(model, vocab).items():
        _add_value(w, key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _tensor_order(hf: str):
    """llama.cpp's order: token_embd, then block by block, then output_norm and output."""
    parts = hf.split(".")
    if hf.startswith("model.layers."):
        return (1, int(parts[2]), hf)
    return (0 if "embed_tokens" in hf else 2, 0, hf)


# ------------------------------------------------------------------------------------------------
# writing an HF folder
# ------------------------------------------------------------------------------------------------

def _write_folder(model: _Model, out: Path) -> None:
    from axon_llm.loaders.safetensors import write_safetensors

    out.mkdir(parents=True)
    config = dict(model.config)
    config["torch_dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    write_safetensors(out / "model.safetensors", {k: _dense(v) for k, v in model.tensors.items()}, {"format": "pt"})
    if model.folder is not None:
        for name in _TOKENIZER_FILES:
            if (model.folder / name).is_file():
                shutil.copyfile(model.folder / name, out / name)
    elif model.gguf_path is not None:
        from axon_llm.data import load_training_tokenizer
        load_training_tokenizer(str(model.gguf_path)).save(out)     # tokenizer.json + tokenizer_config.json


# ------------------------------------------------------------------------------------------------

def _merge_adapter(model: _Model, src, adapter) -> None:
    """Replace each weight the LoRA ``adapter`` touches by the merged float32 ``W + s B A``
    (:func:`axon_llm.lora.merge_adapter`); every other tensor keeps its source form and type."""
    from axon_llm.auto import from_pretrained
    from axon_llm.lora import lora_modules

    source = model.gguf_path or model.folder or src
    adapted = from_pretrained(source, adapter=adapter)
    names = [f"{name}.weight" for name, _ in lora_modules(adapted)]
    state = adapted.merge_adapter().state_dict()
    for name in names:
        model.tensors[name] = np.asarray(state[name], dtype=np.float32)
        model.types[name] = "F32"


def convert(src, out, quant: str | None = None, adapter=None) -> Path:
    """Convert ``src`` (registry name, HF folder, ``.gguf``) into ``out`` (``.gguf`` file or a folder).

    ``quant``: one of :data:`QUANT_CHOICES` (GGUF output only); None keeps every tensor's source
    type. ``adapter``: a LoRA adapter folder merged into the weights first (the merged weights are
    float32, then ``quant`` applies). Returns the path written. Raises :class:`UnsupportedError` for
    a model family or type this cannot write, :class:`InputError` for a bad request; never leaves a
    partial ``out``.
    """
    out = Path(out)
    if quant is not None:
        quant = str(quant).upper()
        if quant not in QUANT_CHOICES:
            raise UnsupportedError(f"cannot quantise to {quant!r}; choose one of {', '.join(QUANT_CHOICES)}")
    to_gguf = out.suffix.lower() == ".gguf"
    if not to_gguf and quant not in (None, "F32"):
        raise InputError(f"--quant {quant} needs a .gguf output; {out} would be an HF folder (float32 safetensors)")
    if not to_gguf and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} already exists and is not an empty folder")
    if not out.parent.is_dir():
        raise InputError(f"the folder of {out} does not exist")
    model = _read(src)
    _llama_only(model)
    if adapter is not None:
        _merge_adapter(model, src, adapter)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        if to_gguf:
            _write_gguf(model, tmp, quant)
        else:
            if out.is_dir():
                out.rmdir()                            # empty (checked above): replaced below
            _write_folder(model, tmp)
        os.replace(tmp, out)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
    return out
