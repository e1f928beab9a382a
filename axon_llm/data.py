"""Training data: a text file as token ids, and deterministic batches drawn from it.

Every batch is a pure function of ``(seed, step)``, so resuming a run at step ``s`` sees
exactly the batches the uninterrupted run saw, and every MPI rank can draw the same
*global* batch and keep only its own rows (:meth:`TokenDataset.global_batch` then
:func:`shard_rows`). Nothing here needs a model.

Glossary: ``B`` global batch size, ``T`` sequence length, ``N`` number of tokens in the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from axon_llm.errors import InputError, TokenizerError

__all__ = ["ByteTokenizer", "load_training_tokenizer", "read_text", "TokenDataset", "Batch", "shard_rows",
           "mask_tokens", "is_chat_data", "read_chats", "chat_tokens", "ChatDataset"]


class ByteTokenizer:
    """Each UTF-8 byte is its own token (ids 0..255); for BERT also ``[PAD]`` 256 and ``[MASK]`` 257.

    The simplest tokenizer that can learn any text: no training, no unknown tokens, and
    ``decode(encode(s)) == s`` for every string.
    """

    kind = "byte"

    def __init__(self, with_specials: bool = False):
        self.with_specials = with_specials
        self.pad_token_id = 256 if with_specials else None
        self.mask_token_id = 257 if with_specials else None
        self.bos_token_id = self.eos_token_id = None

    @property
    def vocab_size(self) -> int:
        """256, or 258 with the BERT specials."""
        return 258 if self.with_specials else 256

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes of ``text``."""
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        """The text of byte ids (special ids are dropped, broken UTF-8 is replaced)."""
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def stream_decoder(self, skip_special_tokens: bool = True) -> "_ByteStreamDecoder":
        """Incremental decoder (``step(id) -> str``, ``finish() -> str``) that never splits a character."""
        return _ByteStreamDecoder()

    def save(self, directory: Path) -> None:
        """Record the choice in ``tokenizer_byte.json`` beside a checkpoint."""
        (Path(directory) / "tokenizer_byte.json").write_text(
            json.dumps({"kind": "byte", "with_specials": self.with_specials}) + "\n", encoding="utf-8")


class _ByteStreamDecoder:
    """UTF-8 bytes in, complete characters out (Python's incremental UTF-8 decoder)."""

    def __init__(self):
        import codecs

        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def step(self, token_id: int) -> str:
        return self._dec.decode(bytes([token_id])) if 0 <= token_id < 256 else ""

    def finish(self) -> str:
        return self._dec.decode(b"", final=True)


def is_byte_tokenizer_folder(path) -> bool:
    """True for a checkpoint folder trained with ``--tokenizer byte``."""
    return (Path(path) / "tokenizer_byte.json").is_file()


class _HFTrainingTokenizer:
    """A pretrained tokenizer (``HFTokenizer.from_pretrained``) seen through the few names training needs."""

    kind = "hf"

    def __init__(self, source: str):
        from axon_llm.tokenizer import HFTokenizer

        self.source = source
        self.tok = HFTokenizer.from_pretrained(source)
        self.vocab_size = int(getattr(self.tok, "vocab_size", 0) or len(self.tok))
        st = self.tok.special_tokens
        self.pad_token_id, self.bos_token_id, self.eos_token_id = st.pad_token_id, st.bos_token_id, st.eos_token_id
        self.mask_token_id = getattr(self.tok, "mask_token_id", None)
        if self.mask_token_id is None and hasattr(self.tok, "token_to_id"):
            for name in ("[MASK]", "<mask>"):
                tid = self.tok.token_to_id(name)
                if tid is not None:
                    self.mask_token_id = int(tid)
                    break

    def encode(self, text: str) -> list[int]:
        try:
            return list(self.tok.encode(text, add_special_tokens=False))
        except TypeError:
            return list(self.tok.encode(text))

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids])

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """The text of ``messages`` rendered by the tokenizer's chat template (chat data, below)."""
        return self.tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)

    def save(self, directory: Path) -> None:
        """``tokenizer.json`` + ``tokenizer_config.json`` (special tokens, chat template) beside a checkpoint,
        so ``HFTokenizer.from_pretrained(directory)`` gives the same tokenizer back."""
        directory = Path(directory)
        self.tok.backend.save(str(directory / "tokenizer.json"))
        st = self.tok.special_tokens
        cfg = {k: getattr(st, k) for k in ("bos_token", "eos_token", "pad_token", "unk_token") if getattr(st, k)}
        if getattr(self.tok, "chat_template", None):
            cfg["chat_template"] = self.tok.chat_template
        (directory / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1) + "\n", encoding="utf-8")


def load_training_tokenizer(spec: str, *, for_mlm: bool = False):
    """``"byte"`` -> :class:`ByteTokenizer`; anything else -> ``HFTokenizer.from_pretrained(spec)``."""
    if spec == "byte":
        return ByteTokenizer(with_specials=for_mlm)
    tok = _HFTrainingTokenizer(spec)
    if for_mlm and tok.mask_token_id is None:
        raise TokenizerError(f"tokenizer {spec!r} has no [MASK] token, which masked-LM training needs")
    return tok


def read_text(path) -> str:
    """The UTF-8 text of a training file (``InputError`` naming the file when it is missing or unreadable)."""
    from axon_llm.limits import check_memory

    p = Path(path)
    if not p.exists():
        raise InputError(f"training data file not found: {p}")
    if p.is_dir():
        raise InputError(f"training data must be a text file, {p} is a directory")
    if not p.is_file():
        raise InputError(f"training data must be a regular text file, {p} is not (a device, FIFO or socket)")
    size = p.stat().st_size
    # the text, its str and one int64 token per byte at most are held at once
    check_memory(size * 14, f"the training data {p} ({size} bytes)", "train on a smaller file", InputError)
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"training data {p} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise InputError(f"cannot read the training data {p}: {e.strerror or e}") from None


@dataclass
class Batch:
    """One batch: ``input_ids [B, T]`` and ``labels [B, T]`` (-100 = no loss at that position)."""

    input_ids: np.ndarray
    labels: np.ndarray

    @property
    def num_targets(self) -> int:
        """Positions that count in the loss."""
        return int((self.labels != -100).sum())


class TokenDataset:
    """Random windows of ``seq_len`` tokens from one token stream.

    Causal LMs get ``input_ids = w[:-1]``, ``labels = w[1:]`` from windows of ``T + 1`` tokens;
    masked LMs get ``T``-token windows masked by :func:`mask_tokens`. ``eval_fraction`` of the
    stream (its end) is held out for :meth:`eval_batches`.
    """

    def __init__(self, tokens, seq_len: int, *, seed: int = 0, mlm: bool = False, mask_token_id: int | None = None,
                 vocab_size: int | None = None, eval_fraction: float = 0.0, mlm_probability: float = 0.15):
        tokens = np.asarray(tokens, dtype=np.int64)
        self.seq_len, self.seed, self.mlm = int(seq_len), int(seed), mlm
        self.mask_token_id, self.vocab_size, self.mlm_probability = mask_token_id, vocab_size, mlm_probability
        need = self.seq_len + (0 if mlm else 1)
        if tokens.size < need:
            raise InputError(f"the training text has {tokens.size} tokens, fewer than one sequence of "
                             f"{need} (--seq-len {self.seq_len}); use more text or a shorter --seq-len")
        n_eval = int(tokens.size * eval_fraction) if eval_fraction > 0 else 0
        if n_eval and (tokens.size - n_eval < need or n_eval < need):
            n_eval = 0                                   # too little text to hold some out
        self.train_tokens = tokens[: tokens.size - n_eval]
        self.eval_tokens = tokens[tokens.size - n_eval:] if n_eval else None

    @property
    def window(self) -> int:
        """Tokens cut per example: ``seq_len + 1`` for causal LM (inputs and shifted labels), ``seq_len`` for MLM."""
        return self.seq_len + (0 if self.mlm else 1)

    def _make(self, windows: np.ndarray, rng: np.random.Generator) -> Batch:
        if self.mlm:
            ids, labels = mask_tokens(windows, rng, self.mask_token_id, self.vocab_size, self.mlm_probability)
            return Batch(ids, labels)
        return Batch(windows[:, :-1].copy(), windows[:, 1:].copy())           # [B, T+1] -> [B, T], [B, T]

    def global_batch(self, step: int, batch_size: int) -> Batch:
        """The batch of training step ``step`` (0-based): the same on every rank and every run."""
        rng = np.random.default_rng([self.seed, int(step)])
        n_starts = self.train_tokens.size - self.window + 1
        starts = rng.integers(0, n_starts, size=batch_size)                     # [B]
        windows = self.train_tokens[starts[:, None] + np.arange(self.window)]   # [B, T(+1)]
        return self._make(windows, rng)

    def eval_batches(self, batch_size: int, max_batches: int = 8):
        """Consecutive non-overlapping windows of the held-out tokens (fixed masking for MLM)."""
        if self.eval_tokens is None:
            return []
        n = (self.eval_tokens.size - (0 if self.mlm else 1)) // self.seq_len
        rows = [self.eval_tokens[i * self.seq_len: i * self.seq_len + self.window] for i in range(n)]
        rows = [r for r in rows if r.size == self.window]
        rng = np.random.default_rng([self.seed, 2**31 - 1])
        out = []
        for i in range(0, min(len(rows), batch_size * max_batches), batch_size):
            out.append(self._make(np.stack(rows[i:i + batch_size]), rng))
        return out


def shard_rows(batch: Batch, rank: int, world: int) -> Batch:
    """Rank ``rank``'s contiguous slice of a global batch (``B`` must divide by ``world``)."""
    b = batch.input_ids.shape[0]
    if b % world:
        raise InputError(f"--batch-size {b} must be a multiple of the number of processes ({world})")
    per = b // world
    sl = slice(rank * per, (rank + 1) * per)
    return Batch(batch.input_ids[sl], batch.labels[sl])


def mask_tokens(windows: np.ndarray, rng: np.random.Generator, mask_token_id: int, vocab_size: int,
                probability: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """BERT's masking (as transformers' DataCollatorForLanguageModeling): pick ``probability``
    of the positions; of those 80% become ``[MASK]``, 10% a random token, 10% stay. Labels are
    the original ids at picked positions and -100 elsewhere. At least one position per row is picked."""
    ids = windows.copy()
    picked = rng.random(ids.shape) < probability                           # [B, T]
    none = ~picked.any(axis=1)
    if none.any():                                                          # every row teaches something
        picked[np.nonzero(none)[0], rng.integers(0, ids.shape[1], size=int(none.sum()))] = True
    labels = np.where(picked, ids, -100)
    roll = rng.random(ids.shape)
    ids[picked & (roll < 0.8)] = mask_token_id
    rand = picked & (roll >= 0.8) & (roll < 0.9)
    ids[rand] = rng.integers(0, vocab_size, size=int(rand.sum()))
    return ids, labels


# ----------------------------------------------------------------------------------------
# chat data: JSONL of {"messages": [...]}, loss on the assistant's tokens only
# ----------------------------------------------------------------------------------------
def is_chat_data(path) -> bool:
    """True for a ``.jsonl`` training file (one chat per line); other files are plain text."""
    return Path(path).suffix.lower() == ".jsonl"


def read_chats(path) -> list[tuple[int, list[dict]]]:
    """``(line number, messages)`` for each chat of a JSONL file: one ``{"messages": [{"role", "content"},
    ...]}`` per line (blank lines skipped). ``InputError`` names the line that is not JSON, not a chat, or has no assistant turn."""
    p = Path(path)
    chats = []
    for n, line in enumerate(read_text(p).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{p} line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where} is not JSON ({e.msg} at column {e.colno})") from None
        messages = obj.get("messages") if isinstance(obj, dict) else None
        if not isinstance(messages, list) or not messages:
            raise InputError(f'{where} is not a chat: expected {{"messages": [{{"role": ..., "content": ...}}, ...]}}')
        for k, m in enumerate(messages):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise InputError(f"{where}, message {k}: expected {{\"role\": str, \"content\": str}}, got {m!r:.80}")
        if not any(m["role"] == "assistant" for m in messages):
            raise InputError(f"{where}: the chat has no assistant turn (nothing to learn from)")
        chats.append((n, [{"role": m["role"], "content": m["content"]} for m in messages]))
    if not chats:
        raise InputError(f"{p} holds no chats")
    return chats


def chat_tokens(tokenizer, messages: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """``(ids [L], assistant [L] bool)`` of one chat rendered by ``tokenizer``'s chat template.

    Each assistant turn's span is what its rendering adds after the prompt that asks for it:
    ``render(messages[:i+1])`` minus ``render(messages[:i], add_generation_prompt=True)`` -- the
    reply and its end-of-turn token (as TRL's assistant-only loss and mlx-lm's chat fine-tuning
    train on). The text is encoded piece by piece at those boundaries, so the mask is exact.
    """
    if not hasattr(tokenizer, "apply_chat_template"):
        raise TokenizerError("chat data (JSONL) needs a tokenizer with a chat template, not --tokenizer byte")
    full = tokenizer.apply_chat_template(messages, add_generation_prompt=False)
    pieces, pos = [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True) if i else ""
        upto = tokenizer.apply_chat_template(messages[:i + 1], add_generation_prompt=False)
        if not (upto.startswith(before) and full.startswith(upto) and len(before) >= pos):
            raise TokenizerError(f"the chat template does not render assistant turn {i} as an extension of the "
                                 "turns before it, so its tokens cannot be found")
        pieces += [(full[pos:len(before)], False), (full[len(before):len(upto)], True)]
        pos = len(upto)
    pieces.append((full[pos:], False))
    ids, mask = [], []
    for text, learn in pieces:
        if text:
            piece = tokenizer.encode(text)
            ids += piece
            mask += [learn] * len(piece)
    return np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=bool)


class ChatDataset:
    """Chats as training examples: each row is one chat, cut to ``seq_len + 1`` tokens, right-padded.

    Labels are the next token where that token belongs to an assistant turn and -100 elsewhere
    (prompts, system text, padding). Right padding needs no attention mask: causal attention never
    lets a real position see the pads after it. Batches are a pure function of ``(seed, step)``, as
    :class:`TokenDataset`'s; ``eval_fraction`` of the chats (the last ones) are held out.
    """

    mlm = False

    def __init__(self, examples: list[tuple[np.ndarray, np.ndarray]], seq_len: int, *, seed: int = 0,
                 pad_token_id: int | None = None, eval_fraction: float = 0.0, names: list[str] | None = None):
        self.seq_len, self.seed = int(seq_len), int(seed)
        self.pad_token_id = int(pad_token_id) if pad_token_id is not None else 0
        rows = []
        for k, (ids, mask) in enumerate(examples):
            ids, mask = ids[: self.seq_len + 1], mask[: self.seq_len + 1]
            if not mask[1:].any():
                what = names[k] if names else f"chat {k}"
                raise InputError(f"{what}: no assistant token within the first {self.seq_len + 1} tokens; "
                                 "raise --seq-len or shorten the chat")
            rows.append((ids, mask))
        n_eval = int(len(rows) * eval_fraction) if eval_fraction > 0 and len(rows) > 1 else 0
        self.train_rows = rows[: len(rows) - n_eval]
        self.eval_rows = rows[len(rows) - n_eval:]
        self.train_tokens = np.concatenate([r[0] for r in self.train_rows])   # [N] (for the log line)

    @classmethod
    def from_jsonl(cls, path, tokenizer, seq_len: int, **kwargs) -> "ChatDataset":
        """Read, render and mask the chats of a JSONL file."""
        chats = read_chats(path)
        return cls([chat_tokens(tokenizer, c) for _, c in chats], seq_len, names=[f"{path} line {n}" for n, _ in chats],
                   pad_token_id=getattr(tokenizer, "pad_token_id", None), **kwargs)

    def _make(self, rows) -> Batch:
        width = max(ids.size for ids, _ in rows) - 1                       # T: the longest row, shifted
        input_ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)   # [B, T]
        labels = np.full((len(rows), width), -100, dtype=np.int64)                   # [B, T]
        for b, (ids, mask) in enumerate(rows):
            t = ids.size - 1
            input_ids[b, :t] = ids[:-1]
            labels[b, :t] = np.where(mask[1:], ids[1:], -100)
        return Batch(input_ids, labels)

    def global_batch(self, step: int, batch_size: int) -> Batch:
        """The batch of training step ``step`` (0-based): ``batch_size`` chats drawn with replacement."""
        rng = np.random.default_rng([self.seed, int(step)])
        picks = rng.integers(0, len(self.train_rows), size=batch_size)     # [B]
        return self._make([self.train_rows[i] for i in picks])

    def eval_batches(self, batch_size: int, max_batches: int = 8):
        """The held-out chats, in order, ``batch_size`` at a time."""
        rows = self.eval_rows[: batch_size * max_batches]
        return [self._make(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]
