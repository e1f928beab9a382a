"""``axon-llm convert SRC OUT [--quant TYPE]``: a model into a GGUF file llama.cpp runs, or into an HF folder.

    convert("smollm2-135m-instruct", "smol-q8.gguf", quant="Q8_0")
    convert("runs/tiny", "tiny.gguf")                 # an ``axon-llm train`` checkpoint
    convert("model.gguf", "model-hf/")                # GGUF -> safetensors + config + tokenizer

SRC is a registry name, an HF-layout folder (``config.json`` + safetensors; a training
checkpoint is one) or a ``.gguf`` file. Every source is first read into one form: an HF config
dict, HF-named tensors (float arrays, or GGUF blocks kept as they are) and the tokenizer.

OUT ending in ``.gguf`` is written with gguf-py's ``GGUFWriter`` the way llama.cpp's
``convert_hf_to_gguf.py`` writes it, for every family the GGUF loader maps
(:data:`axon_llm.loaders.gguf.GGUF_ARCHITECTURES`; any other raises :class:`UnsupportedError`
naming it). Everything comes from that one table, run backwards:

- the architecture is the table entry whose ``hf_architecture`` is the model's;
- tensor names are :func:`~axon_llm.loaders.gguf.gguf_tensor_name` (``blk.N.attn_q.weight`` ...);
- the loader's tensor transforms are undone: Q and K rows permuted to GGML's interleaved RoPE pairs
  where ``permute_qk`` (llama; :func:`~axon_llm.loaders.gguf.permute_qk_rows`), norms stored as
  ``w - norm_offset`` (Gemma's ``1 + w``); biases (Qwen2's q/k/v) travel like any tensor;
- hyper-parameters go to ``<arch>.*`` keys (the table's ``fields`` where the family has them,
  else :data:`HPARAM_KEYS`, the llama family's; linear RoPE scaling as
  ``rope.scaling.*``, Llama 3's as a ``rope_freqs`` tensor), and the result is **read back** with
  the loader's :func:`~axon_llm.loaders.gguf.config_from_metadata`: a model whose config does not
  survive that round trip (a Qwen2 with sliding-window layers: GGUF qwen2 has none) raises
  :class:`UnsupportedError` naming the fields, instead of writing a file that computes something
  else. One difference is folded into the weights instead: Gemma 3's ``query_pre_attn_scalar``,
  which GGUF cannot carry (llama.cpp fixes the score scale), scales the ``q_norm`` weights;
- the tokenizer goes to ``tokenizer.ggml.*`` (model, tokens, token types, merges, scores, special
  ids) plus ``tokenizer.chat_template``.

A table entry with a transform this file does not know how to undo (a new
:class:`~axon_llm.loaders.gguf.GGUFArchitecture` field) raises :class:`UnsupportedError` rather
than writing a wrong file.

Tensor types. Without ``quant`` every tensor keeps its source type (GGUF blocks are copied byte
for byte; an HF checkpoint saved as float16/bfloat16 stays F16/BF16, else F32). With ``quant``
every 2-D weight is quantised to it (kernels/axon_kernels/quant_encode.py); 1-D tensors (norms,
biases) stay F32, as llama.cpp keeps them. A row length that is not a multiple of the type's
block falls back as llama.cpp's ``llama-quantize`` does: Q4_K -> Q5_0, Q5_K -> Q5_1,
Q6_K -> Q8_0, and to F16 when not even 32 divides it. (SmolLM2's 576-wide rows make most of
its Q4_K tensors Q5_0, exactly as in llama.cpp's own Q4_K files of it.)

Any other OUT is a folder: ``model.safetensors`` (float32, quantised tensors dequantised, HF
tensor names), ``config.json`` (an HF source's own; a GGUF source's in transformers' keys, with
its ``model_type``) and the tokenizer files, loadable by ``axon_llm.from_pretrained`` and
transformers.

Nothing partial is ever left behind: the output is written to a temporary file (or folder)
beside OUT and moved into place with ``os.replace`` only when complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from axon_llm.errors import InputError, ModelFormatError, UnsupportedError

__all__ = ["convert", "QUANT_CHOICES", "HPARAM_KEYS"]

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
        tensors = dict(gm.tensors)
        for hf in getattr(gm, "transposed", ()):             # blocks still in GGUF's [out, in] rows (GPT-2)
            tensors[hf] = np.ascontiguousarray(_dense(tensors[hf]).T)
            types[hf] = "F32"
        return _Model(dict(gm.config), tensors, types, dict(gm.metadata), gguf_path=path)
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


def _model_config(config: dict):
    """The model's config object (``LLaMAConfig``, ``Gemma3Config`` ...) and its HF architecture name."""
    from axon_llm.auto import config_class_for, model_class_for
    model_class, hf_arch = model_class_for(config)
    return config_class_for(model_class, config).from_dict(config), hf_arch


def _gguf_architecture(config: dict):
    """``(name, GGUFArchitecture, config object)``: the loader's table entry for this model's family.
    A family the table does not map raises :class:`UnsupportedError` naming it."""
    from axon_llm.loaders.gguf import GGUF_ARCHITECTURES
    cfg, hf_arch = _model_config(config)
    matches = [(n, a) for n, a in GGUF_ARCHITECTURES.items() if a.hf_architecture == hf_arch]
    if len(matches) > 1:                          # several GGUF names for one class: the model_type decides
        matches = [(n, a) for n, a in matches if a.model_type == config.get("model_type")] or matches[:1]
    if not matches:
        raise UnsupportedError(f"convert: architecture {hf_arch} (model_type {config.get('model_type')!r}) has no GGUF "
                               f"mapping; GGUF output supports {', '.join(sorted(GGUF_ARCHITECTURES))}")
    name, spec = matches[0]
    for f in dataclasses.fields(spec):           # a transform added to the table that nothing here undoes
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if f.name not in _UNDONE_FIELDS and getattr(spec, f.name) != default:
            raise UnsupportedError(f"convert cannot write GGUF {name} yet: it does not undo the loader's "
                                   f"GGUFArchitecture.{f.name}={getattr(spec, f.name)!r}")
    return name, spec, cfg


#: the GGUFArchitecture fields whose effect _write_gguf reverses, or that transform nothing
#: (``fixed_config``, ``finish`` and ``model_kwargs`` only derive the config: the round trip checks it)
_UNDONE_FIELDS = {"hf_architecture", "model_type", "block_names", "permute_qk", "norm_offset", "block_prefix",
                  "global_names", "transposed", "transforms", "tied_only", "fields", "fixed_config", "finish",
                  "model_kwargs"}


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


#: The llama family's metadata (llama, qwen2, gemma3: families whose table entry has no ``fields``):
#: ``<arch>.<key>`` <- the model config attribute it carries, and its GGUF value type. Each key is
#: written when the config has a non-None value for it; :func:`axon_llm.loaders.gguf.config_from_metadata`
#: reads them back, and :func:`_round_trip` checks that it does.
HPARAM_KEYS: tuple[tuple[str, str, str], ...] = (
    ("context_length", "max_position_embeddings", "u32"),
    ("embedding_length", "hidden_size", "u32"),
    ("block_count", "num_hidden_layers", "u32"),
    ("feed_forward_length", "intermediate_size", "u32"),
    ("attention.head_count", "num_attention_heads", "u32"),
    ("attention.head_count_kv", "num_key_value_heads", "u32"),
    ("attention.key_length", "head_dim", "u32"),
    ("attention.value_length", "head_dim", "u32"),
    ("rope.freq_base", "rope_theta", "f32"),
    ("rope.freq_base_swa", "rope_local_base_freq", "f32"),
    ("attention.layer_norm_rms_epsilon", "rms_norm_eps", "f32"),
    ("attention.sliding_window", "sliding_window", "u32"),                 # only when a layer uses it
    ("attention.sliding_window_pattern", "sliding_window_pattern", "u32"),
    ("final_logit_softcapping", "final_logit_softcapping", "f32"),
    ("attn_logit_softcapping", "attn_logit_softcapping", "f32"),
    ("vocab_size", "vocab_size", "u32"),
)
_WINDOW_KEYS = ("attention.sliding_window", "attention.sliding_window_pattern")

#: config fields that do not change what the model computes (or that ``windows`` below replaces)
_NOT_COMPARED = {"extra", "initializer_range", "bos_token_id", "eos_token_id", "pad_token_id", "attention_dropout",
                 "resid_pdrop", "embd_pdrop", "attn_pdrop", "hidden_dropout_prob", "attention_probs_dropout_prob",
                 "classifier_dropout", "num_labels", "id2label", "problem_type", "use_sliding_window",
                 "max_window_layers", "sliding_window", "sliding_window_pattern", "rope_scaling"}


def _uses_window(cfg) -> bool:
    if hasattr(cfg, "window_of"):
        return any(cfg.window_of(i) is not None for i in range(cfg.num_hidden_layers))
    return getattr(cfg, "sliding_window", None) is not None


def _hparams(arch: str, spec, cfg) -> dict[str, tuple[Any, str]]:
    """``full GGUF key -> (value, GGUF type)`` for the model config: the table's own ``fields``
    (:func:`~axon_llm.loaders.gguf.metadata_from_config`) where the family has them, else
    :data:`HPARAM_KEYS` (the llama family)."""
    if getattr(spec, "fields", ()):
        from axon_llm.loaders.gguf import metadata_from_config
        kinds = {"int": "u32", "float": "f32", "bool": "bool"}
        return {k: ((float(np.float32(v)) if kind == "float" else v), kinds[kind])
                for k, (kind, v) in metadata_from_config(arch, cfg.to_dict()).items()}
    out: dict[str, tuple[Any, str]] = {}
    for key, attr, kind in HPARAM_KEYS:
        value = getattr(cfg, attr, None)
        if value is None or isinstance(value, bool) or (key in _WINDOW_KEYS and not _uses_window(cfg)):
            continue
        out[f"{arch}.{key}"] = (int(value), kind) if kind == "u32" else (float(np.float32(value)), kind)
    head_dim = getattr(cfg, "head_dim", None)
    if head_dim:
        out[f"{arch}.rope.dimension_count"] = (int(round(head_dim * (getattr(cfg, "partial_rotary_factor", None)
                                                                     or 1.0))), "u32")
    return out


def _rope_scaling(cfg) -> tuple[dict[str, tuple[Any, str]], np.ndarray | None]:
    """GGUF's form of the config's RoPE scaling: ``rope.scaling.*`` keys for linear, a ``rope_freqs``
    tensor (each frequency's divisor, as llama.cpp's converter writes it) for Llama 3's."""
    scaling = getattr(cfg, "rope_scaling", None) or {}
    kind = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else None
    if kind in (None, "default"):
        return {}, None
    if kind == "linear":
        return {"rope.scaling.type": ("linear", "str"), "rope.scaling.factor": (float(scaling["factor"]), "f32")}, None
    if kind == "llama3":
        from axon_llm.rope import compute_inv_freq
        dim = int(round(cfg.head_dim * (getattr(cfg, "partial_rotary_factor", None) or 1.0)))
        plain = np.asarray(compute_inv_freq(dim, cfg.rope_theta), np.float64)
        scaled = np.asarray(compute_inv_freq(dim, cfg.rope_theta, scaling), np.float64)
        return {}, (plain / scaled).astype(np.float32)                      # [dim / 2]
    raise UnsupportedError(f"convert: RoPE scaling {kind!r} has no GGUF form (linear and llama3 do)")


def _behaviour(cfg) -> dict[str, Any]:
    """The config fields that decide what the model computes, windows per layer and RoPE frequencies
    in place of the fields that encode them."""
    out = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in _NOT_COMPARED}
    if getattr(cfg, "num_hidden_layers", None) and (hasattr(cfg, "window_of") or hasattr(cfg, "sliding_window")):
        out["windows"] = [cfg.window_of(i) if hasattr(cfg, "window_of") else cfg.sliding_window
                          for i in range(cfg.num_hidden_layers)]
    if getattr(cfg, "head_dim", None) and getattr(cfg, "rope_theta", None):
        from axon_llm.rope import compute_inv_freq
        dim = int(round(cfg.head_dim * (getattr(cfg, "partial_rotary_factor", None) or 1.0)))
        out["rope_scaling"] = compute_inv_freq(dim, cfg.rope_theta, cfg.rope_scaling or None,
                                               max_position_embeddings=cfg.max_position_embeddings).tolist()
    return out


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and bool(np.isclose(a, b, rtol=1e-6, atol=0))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _round_trip(arch: str, cfg, keys: dict, shapes: dict[str, tuple], rope_freqs) -> tuple[Any, list[str]]:
    """The config the loader reads back from these keys and tensors, and the fields where it
    differs from ``cfg``."""
    from types import SimpleNamespace

    from axon_llm.loaders.gguf import config_from_metadata
    md = {"general.architecture": arch, **{k: v for k, (v, _) in keys.items()}}
    infos = {name: SimpleNamespace(shape=shape) for name, shape in shapes.items()}
    try:
        back, _ = _model_config(config_from_metadata(md, infos, f"<GGUF {arch}>", rope_freqs=rope_freqs))
    except (ModelFormatError, UnsupportedError) as e:
        raise UnsupportedError(f"convert cannot express this model as GGUF {arch}: {e}") from None
    want, got = _behaviour(cfg), _behaviour(back)
    return back, [k for k in want if not _same(want[k], got.get(k))]


def _fold_score_scale(tensors: dict, cfg, file_scalar: float, norm_offset: float):
    """Gemma's scores are scaled by ``query_pre_attn_scalar ** -0.5``; a GGUF file implies
    ``file_scalar`` instead. q_norm's output feeds only the scores (RoPE is linear), so its weights
    (as multipliers, ``w - norm_offset``) take the factor ``sqrt(file_scalar / query_pre_attn_scalar)``.
    Returns ``cfg`` with the file's scalar."""
    names = [n for n in tensors if n.endswith(".self_attn.q_norm.weight")]
    if len(names) != cfg.num_hidden_layers:
        raise UnsupportedError(f"convert: query_pre_attn_scalar={cfg.query_pre_attn_scalar} differs from the "
                               f"{file_scalar} a GGUF file implies, and there are no q_norm weights to fold it into")
    factor = np.float32(np.sqrt(file_scalar / cfg.query_pre_attn_scalar))
    for n in names:
        multiplier = _dense(tensors[n]) - np.float32(norm_offset)
        tensors[n] = multiplier * factor + np.float32(norm_offset)
    return cfg.replace(query_pre_attn_scalar=file_scalar)


def _write_gguf(model: _Model, out: Path, quant: str | None) -> None:
    import gguf

    from axon_kernels.quant_encode import quantize
    from axon_llm.loaders.gguf import gguf_tensor_name, permute_qk_rows

    arch, spec, cfg = _gguf_architecture(model.config)
    tensors = dict(model.tensors)
    if getattr(cfg, "tie_word_embeddings", False) or getattr(spec, "tied_only", False):
        tensors.pop("lm_head.weight", None)
    for hf in _not_carried(spec, cfg, tensors):
        del tensors[hf]
    names = {hf: gguf_tensor_name(hf, arch) for hf in tensors}          # UnsupportedError names a stray tensor
    keys = _hparams(arch, spec, cfg)
    scaling_keys, rope_freqs = _rope_scaling(cfg)
    keys.update({f"{arch}.{k}": v for k, v in scaling_keys.items()})
    shapes = {g: tuple(tensors[hf].shape) for hf, g in names.items()}
    if rope_freqs is not None:
        shapes["rope_freqs.weight"] = rope_freqs.shape
    back, differ = _round_trip(arch, cfg, keys, shapes, rope_freqs)
    if "query_pre_attn_scalar" in differ:
        cfg = _fold_score_scale(tensors, cfg, back.query_pre_attn_scalar, spec.norm_offset)
        back, differ = _round_trip(arch, cfg, keys, shapes, rope_freqs)
    if differ:
        want, got = _behaviour(cfg), _behaviour(back)
        detail = "; ".join(f"{k}: {str(want[k])[:60]} would read back as {str(got.get(k))[:60]}" for k in differ)
        raise UnsupportedError(f"convert: GGUF {arch} cannot carry this model's config ({detail})")
    w = _writer_class()(str(out), arch)
    name = model.gguf_metadata.get("general.name") or (model.folder.name if model.folder else out.stem)
    w.add_name(str(name))
    for key, (value, kind) in keys.items():
        {"u32": w.add_uint32, "f32": w.add_float32, "str": w.add_string, "bool": w.add_bool}[kind](key, value)
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs)

    heads = getattr(cfg, "num_attention_heads", None)
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    written: list[str] = []
    for hf in sorted(tensors, key=lambda h: _tensor_order(names[h])):
        gname, t = names[hf], tensors[hf]
        t = _to_gguf_layout(spec, gname, t)
        qtype = _target_type(quant, model.types.get(hf, "F32"), tuple(t.shape))
        if hasattr(t, "type_name") and qtype == t.type_name:
            data = t.raw                                                     # blocks copied as they are
        elif qtype in ("F32", "F16"):
            data = _dense(t).astype(np.float32 if qtype == "F32" else np.float16)
        else:
            data = quantize(qtype, _dense(t))                                # uint8 [rows, row bytes]
        n_perm = 0
        if spec.permute_qk:
            n_perm = heads if ".attn_q." in gname else kv if ".attn_k." in gname else 0
        if n_perm:
            data = permute_qk_rows(data, n_perm)                             # whole rows: any type
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
    for key, value in _tokenizer_metadata(model, int(cfg.vocab_size)).items():
        _add_value(w, key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _not_carried(spec, cfg, tensors: dict) -> list[str]:
    """Source tensors the family's GGUF form has no place for, by the table's ``model_kwargs``
    (BERT files carry no pooler: llama.cpp's converter drops it too, and the loader builds the model
    without one)."""
    kwargs = getattr(spec, "model_kwargs", None)
    if not kwargs:
        return []
    from axon_llm.models import ARCHITECTURES
    model = ARCHITECTURES[spec.hf_architecture](cfg, **kwargs)           # lazy parameters: nothing allocated
    keep = set(model.state_dict())
    return [n for n in tensors if n not in keep]


def _to_gguf_layout(spec, gguf_name: str, t):
    """One HF tensor in the layout the file stores (the inverse of load_gguf's steps, in reverse
    order; Q/K rows are permuted by the caller): a family's ``transforms[kind].to_gguf``, the
    transpose of a ``transposed`` kind (GPT-2's Conv1D ``[in, out]`` -> ``[out, in]`` rows), and
    ``w - norm_offset`` for norms. A quantised tensor any of them touches is dequantised first."""
    from axon_llm.loaders import gguf as loader
    kind = loader.tensor_kind(gguf_name) if hasattr(loader, "tensor_kind") else gguf_name
    transform = getattr(spec, "transforms", {}).get(kind)
    if kind in getattr(spec, "transposed", ()):
        t = np.ascontiguousarray(_dense(t).T)
    if transform is not None:
        t = np.asarray(transform.to_gguf(_dense(t)), dtype=np.float32)
    if spec.norm_offset and gguf_name.endswith("norm.weight"):
        t = _dense(t) - np.float32(spec.norm_offset)                        # Gemma: the loader's w = stored - 1
    return t


def _tensor_order(gguf_name: str):
    """llama.cpp's order: token_embd (and other inputs), then block by block, then output_norm and output."""
    m = re.match(r"blk\.(\d+)\.", gguf_name)
    if m:
        return (1, int(m.group(1)), gguf_name)
    return (0 if gguf_name.startswith(("token_", "position_", "rope_")) else 2, 0, gguf_name)


# ------------------------------------------------------------------------------------------------
# writing an HF folder
# ------------------------------------------------------------------------------------------------

def _write_folder(model: _Model, out: Path) -> None:
    from axon_llm.loaders.safetensors import write_safetensors

    out.mkdir(parents=True)
    # an HF source keeps its own config.json; a GGUF source's is written in transformers' keys
    config = dict(model.config) if model.folder is not None else _model_config(model.config)[0].to_dict()
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
    if to_gguf:
        _gguf_architecture(model.config)           # an unsupported family fails before any work
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
