"""The ``axon-llm`` command (also ``python -m axon_llm``).

    axon-llm generate --model smollm2-135m-instruct --prompt "Once upon a time"
    axon-llm chat                                   # interactive, multi-turn, KV cache kept between turns
    axon-llm embed "a sentence" "another one" --similarity
    axon-llm info smollm2-135m-instruct
    axon-llm bench --model smollm2-135m-instruct
    axon-llm train --arch llama --preset tiny --data notes.txt --tokenizer byte --steps 200 --out run/
    axon-llm convert smollm2-135m-instruct smol-q8.gguf --quant Q8_0   (or a train checkpoint, or OUT/ folder)
    axon-llm list | download NAME | cache ls | cache rm NAME      (from axon_llm.hub.cli)

Only the generated text goes to stdout; logs, progress and timings go to stderr. Every
failure a user can cause (a bad flag, an unknown model, a malformed file) ends with one
line ``axon-llm: error: ...`` on stderr and a non-zero exit code, never a traceback
(set ``AXON_LLM_DEBUG=1`` to see the traceback of an unexpected error).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time

import numpy as np

from axon_llm.chat import ChatSession, TextStreamer, check_room, eos_token_ids, max_context, render_chat
from axon_llm.errors import GenerationError, InputError, LLMError
from axon_llm.first_run import FirstRun
from axon_llm.pooling import embed_texts

DEFAULT_CHAT_MODEL = "smollm2-135m-instruct"
DEFAULT_EMBED_MODEL = "all-minilm-l6-v2"
PROG = "axon-llm"


class CLIError(LLMError):
    """A command-line usage problem found after parsing (reported like every other error)."""


# ----------------------------------------------------------------------------------------
# argument parsing: every usage error is one line
# ----------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (no usage block) and exit code 2."""

    def error(self, message):
        self.exit(2, f"{PROG}: error: {message} (see `{self.prog} --help`)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**63), got {text!r}") from None
    if not 0 <= value < 1 << 63:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**63), got {value}")
    return value


def _int_at_most(hi: int, lo: int = 0):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer in [{lo}, {hi}], got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected an integer in [{lo}, {hi}], got {value}")
        return value

    return parse


def _float_in(lo: float, hi: float, lo_open: bool = False, name: str = "value"):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        ok = math.isfinite(value) and (value > lo if lo_open else value >= lo) and value <= hi
        if not ok:
            left = "(" if lo_open else "["
            raise argparse.ArgumentTypeError(f"{name} must be in {left}{lo}, {hi}], got {text}")
        return value

    return parse


def _add_sampling_arguments(p: argparse.ArgumentParser, default_max_new: int) -> None:
    p.add_argument("--max-new-tokens", type=_nonneg_int, default=default_max_new, metavar="N",
                   help=f"generate at most N tokens (default {default_max_new})")
    p.add_argument("--temperature", type=_float_in(0.0, 100.0, name="--temperature"), default=0.0, metavar="T",
                   help="softmax temperature; 0 (the default) is greedy and deterministic")
    p.add_argument("--top-k", type=_positive_int, default=None, metavar="K", help="sample among the K most likely")
    p.add_argument("--top-p", type=_float_in(0.0, 1.0, lo_open=True, name="--top-p"), default=None, metavar="P",
                   help="nucleus sampling with mass P")
    p.add_argument("--min-p", type=_float_in(0.0, 1.0, name="--min-p"), default=None, metavar="P",
                   help="drop tokens less likely than P times the most likely one")
    p.add_argument("--repeat-penalty", type=_float_in(0.0, 100.0, lo_open=True, name="--repeat-penalty"),
                   default=1.0, metavar="R", help="transformers' repetition penalty (1 = off)")
    p.add_argument("--frequency-penalty", type=_float_in(-2.0, 2.0, name="--frequency-penalty"), default=0.0,
                   metavar="F", help="OpenAI's frequency penalty: minus F times each token's count so far (0 = off)")
    p.add_argument("--presence-penalty", type=_float_in(-2.0, 2.0, name="--presence-penalty"), default=0.0,
                   metavar="P", help="OpenAI's presence penalty: minus P for every token already generated (0 = off)")
    p.add_argument("--seed", type=_seed, default=None, metavar="S", help="seed of the sampler (0 <= S < 2**63)")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                   help="print tokens as they are generated (default: on)")


def _add_threads_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="threads for the kernels and BLAS (default: one per core)")


def _add_adapter_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapter", default=None, metavar="DIR",
                   help="a LoRA adapter folder (PEFT format, or `axon-llm train --lora` output) to apply")


def build_parser() -> argparse.ArgumentParser:
    """The whole ``axon-llm`` argument parser (hub commands included)."""
    parser = _Parser(prog=PROG, description="Run, inspect, benchmark and train LLMs on axon (NumPy + Numba).")
    from axon_llm import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("generate", help="continue a prompt and print the new text",
                       description="Continue a prompt; only the generated text is printed on stdout.")
    p.add_argument("--model", default=DEFAULT_CHAT_MODEL, help=f"registry name, HF folder or .gguf (default {DEFAULT_CHAT_MODEL})")
    p.add_argument("--prompt", required=True, help="the text to continue ('-' reads it from stdin)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template as a user turn")
    p.add_argument("--system", default=None, help="system message (with --chat)")
    _add_adapter_argument(p)
    _add_sampling_arguments(p, 128)
    _add_threads_argument(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="interactive multi-turn chat",
                       description="Chat with a model: type a message, empty lines are ignored; "
                                   "/exit or end of input (Ctrl-D) quits, /reset starts over.")
    p.add_argument("--model", default=DEFAULT_CHAT_MODEL, help=f"default {DEFAULT_CHAT_MODEL}")
    p.add_argument("--system", default=None, help="system message")
    _add_adapter_argument(p)
    _add_sampling_arguments(p, 256)
    _add_threads_argument(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("embed", help="sentence embeddings (mean-pooled, L2-normalised)")
    p.add_argument("--model", default=DEFAULT_EMBED_MODEL, help=f"default {DEFAULT_EMBED_MODEL}")
    p.add_argument("texts", nargs="+", metavar="TEXT")
    p.add_argument("--similarity", action="store_true", help="print the cosine similarity matrix instead")
    p.add_argument("--precision", type=_int_at_most(17), default=6, help="decimals printed (0..17, default 6)")
    _add_threads_argument(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("info", help="a model's configuration, parameter count and memory")
    p.add_argument("model", help="registry name, HF folder or .gguf")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("bench", help="prefill and decode speed in tokens/s")
    p.add_argument("--model", default=DEFAULT_CHAT_MODEL, help=f"default {DEFAULT_CHAT_MODEL}")
    p.add_argument("--prompt-tokens", type=_positive_int, default=128, help="prefill length (default 128)")
    p.add_argument("--new-tokens", type=_positive_int, default=64, help="decode steps (default 64)")
    p.add_argument("--repeats", type=_int_at_most(1000, lo=1), default=1, help="best of this many runs (1..1000, default 1)")
    _add_threads_argument(p)
    p.set_defaults(func=cmd_bench)

    _add_serve_command(sub)

    from axon_llm.training import add_train_arguments

    p = sub.add_parser("train", help="train or fine-tune a model on a text file",
                       description="Train one of the nine architectures on a text file; "
                                   "run under `mpiexec -n K` for data parallelism.")
    add_train_arguments(p)
    _add_threads_argument(p)
    p.set_defaults(func=cmd_train)

    _add_convert_parser(sub)

    try:
        from axon_llm.hub.cli import add_subcommands
    except ImportError:  # the hub is optional for every other command
        add_subcommands = None
    if add_subcommands is not None:
        add_subcommands(sub)
    return parser


# ----------------------------------------------------------------------------------------
# shared helpers
# ----------------------------------------------------------------------------------------
def log(msg: str) -> None:
    """A log line on stderr (stdout is reserved for the output)."""
    print(msg, file=sys.stderr, flush=True)


def load_model(src: str, adapter: str | None = None):
    """``axon_llm.from_pretrained(src, adapter=adapter)`` with a line on stderr."""
    from axon_llm.auto import from_pretrained

    t0 = time.perf_counter()
    model = from_pretrained(src, adapter=adapter)
    with_adapter = f" with the adapter {adapter}" if adapter else ""
    log(f"loaded {src} ({type(model).__name__}){with_adapter} in {time.perf_counter() - t0:.1f}s")
    return model


def model_kind(model) -> str:
    """``"causal LM"`` for a model that generates (it has a cache), ``"encoder"`` for one that returns
    hidden states per token (BERT), else ``"classifier"`` / ``"masked LM"`` (BERT with a head)."""
    if callable(getattr(model, "new_cache", None)) and callable(getattr(model, "generate", None)):
        return "causal LM"
    name = type(model).__name__
    if name.endswith("ForSequenceClassification"):
        return "classifier"
    if name.endswith("ForMaskedLM"):
        return "masked LM"
    return "encoder"


def require_kind(model, src: str, command: str, kinds: tuple[str, ...]) -> None:
    """A :class:`CLIError` naming the model's kind when ``command`` needs another kind of model."""
    kind = model_kind(model)
    if kind not in kinds:
        def a(k):
            return f"{'an' if k[0] in 'aeiou' else 'a'} {k}"
        raise CLIError(f"`{command}` needs {' or '.join(a(k) + ' model' for k in kinds)}, but {src} is "
                       f"{a(kind)} model ({type(model).__name__})")


def read_text_input(text: str, flag: str) -> str:
    """Text given on the command line (``-`` reads stdin), checked to be valid UTF-8 (an
    :class:`InputError` naming ``flag`` otherwise)."""
    if text == "-":
        data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8", "surrogateescape")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{flag} - : standard input is not valid UTF-8 (byte {e.start}: {e.reason})") from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"{flag} is not valid UTF-8 text (undecodable byte at character {e.start})") from None
    return text


def load_tokenizer(src: str):
    """``axon_llm.HFTokenizer.from_pretrained(src)``."""
    from axon_llm.data import ByteTokenizer, is_byte_tokenizer_folder
    from axon_llm.tokenizer import HFTokenizer

    if is_byte_tokenizer_folder(src):            # a checkpoint of `axon-llm train --tokenizer byte`
        return ByteTokenizer()
    return HFTokenizer.from_pretrained(src)


def generation_config(args, tokenizer, model):
    """A :class:`GenerationConfig` from the sampling flags, EOS ids from the tokenizer and model."""
    from axon_llm.sampling import GenerationConfig

    if args.temperature == 0.0:
        cfg = GenerationConfig.greedy()
    else:
        cfg = GenerationConfig.sampling(args.temperature).with_top_k(args.top_k).with_top_p(args.top_p).with_min_p(args.min_p)
    cfg = cfg.with_max_tokens(args.max_new_tokens).with_repetition_penalty(args.repeat_penalty).with_seed(args.seed)
    cfg = dataclasses.replace(cfg, frequency_penalty=getattr(args, "frequency_penalty", 0.0),
                              presence_penalty=getattr(args, "presence_penalty", 0.0))
    return cfg.with_eos_tokens(eos_token_ids(tokenizer, model))


# ----------------------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------------------
def cmd_generate(args) -> int:
    """``axon-llm generate``: the continuation (only) on stdout."""
    prompt = read_text_input(args.prompt, "--prompt")
    if args.system is not None:
        read_text_input(args.system, "--system")
    from axon_kernels import first_run as first_run_parts

    with FirstRun(log) as first:
        first.start(first_run_parts.MODEL_INDEPENDENT)   # starts before the model loads
        return _generate(args, prompt, first)


def _generate(args, prompt: str, first: FirstRun) -> int:
    from axon_llm.quantized import inference_kernels

    model = load_model(args.model, args.adapter)
    require_kind(model, args.model, "generate", ("causal LM",))
    first.start(inference_kernels(model))   # its quantised kernels, in a second process
    tok = load_tokenizer(args.model)
    if args.chat:
        messages = ([{"role": "system", "content": args.system}] if args.system else [])
        ids = render_chat(tok, messages + [{"role": "user", "content": prompt}])
    else:
        ids = list(tok.encode(prompt))
    if not ids:
        raise InputError("the prompt encodes to no tokens; give some text")
    cfg = generation_config(args, tok, model)
    room = check_room(model, len(ids), cfg.max_new_tokens)
    if room < cfg.max_new_tokens:
        log(f"note: only {room} new tokens fit in the context of {max_context(model)}")
    cfg = cfg.with_max_tokens(room)
    streamer = TextStreamer(tok, enabled=args.stream)
    stamps: list[float] = []
    first.answer_on_references()
    t0 = time.perf_counter()
    out = model.generate(np.asarray([ids], dtype=np.int64), generation_config=cfg,
                         streamer=_Timed(streamer, stamps, first.poll))
    dt = time.perf_counter() - t0
    new = [int(t) for t in np.asarray(out)[0, len(ids):]]
    new_no_eos = new[:-1] if new and new[-1] in cfg.eos_token_ids else new
    if args.stream:
        streamer.finish()
        sys.stdout.write("\n")
    else:
        sys.stdout.write(tok.decode(new_no_eos) + "\n")
    sys.stdout.flush()
    rate = f", {(len(stamps) - 1) / (stamps[-1] - stamps[0]):.1f} tokens/s" if len(stamps) > 2 else ""
    first_token = f"first token after {stamps[0] - t0:.2f}s" if stamps else "no token"
    log(f"{len(new)} tokens in {dt:.2f}s ({first_token}{rate} from the first to the last)")
    return 0


class _Timed:
    """A streamer that records when each step's tokens arrived, then hands them on (and calls
    ``after``: the first run's switch back to the compiled kernels)."""

    def __init__(self, inner, stamps: list, after=None):
        self.inner, self.stamps, self.after = inner, stamps, after

    def __call__(self, ids) -> None:
        """Record the time, pass ``ids`` to the wrapped streamer."""
        self.stamps.append(time.perf_counter())
        self.inner(ids)
        if self.after is not None:
            self.after()


def cmd_chat(args) -> int:
    """``axon-llm chat``: read a message per line from stdin, answer on stdout."""
    if args.system is not None:
        read_text_input(args.system, "--system")
    model = load_model(args.model, args.adapter)
    require_kind(model, args.model, "chat", ("causal LM",))
    tok = load_tokenizer(args.model)
    session = ChatSession(model, tok, generation_config(args, tok, model), system=args.system)
    interactive = sys.stdin.isatty()
    if interactive:
        log("chat with the model; /exit or Ctrl-D quits, /reset starts over")
    while True:
        if interactive:
            sys.stderr.write("> ")
            sys.stderr.flush()
        raw = sys.stdin.buffer.readline() if hasattr(sys.stdin, "buffer") else sys.stdin.readline().encode()
        if not raw:
            break
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            log(f"{PROG}: that line is not valid UTF-8 (byte {e.start}: {e.reason}); type it again")
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            session.reset()
            log("(conversation reset)")
            continue
        t0 = time.perf_counter()
        session.reply(text, out=sys.stdout, stream=args.stream)
        if not args.stream:
            sys.stdout.write(session.messages[-1]["content"])
        sys.stdout.write("\n")
        sys.stdout.flush()
        log(f"({time.perf_counter() - t0:.1f}s, {session.reused_tokens} prompt tokens reused from the cache)")
    return 0


def cmd_embed(args) -> int:
    """``axon-llm embed``: one vector per line (or the cosine matrix)."""
    texts = [read_text_input(t, f"TEXT #{i + 1}") for i, t in enumerate(args.texts)]
    model = load_model(args.model)
    require_kind(model, args.model, "embed", ("encoder",))
    tok = load_tokenizer(args.model)
    vecs = embed_texts(model, tok, texts)
    fmt = f"{{:.{args.precision}f}}"
    rows = vecs @ vecs.T if args.similarity else vecs
    for row in rows:
        print(" ".join(fmt.format(x) for x in row))
    return 0


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def model_memory(model) -> tuple[int, int]:
    """(parameter count, bytes held by weights as stored — quantised weights count their packed size)."""
    count, nbytes, seen = 0, 0, set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        count += int(np.prod(p.shape))
        data = getattr(p, "_data", None)
        if data is None and not getattr(p, "is_lazy", False):
            data = getattr(p, "data", None)
        nbytes += int(data.nbytes) if isinstance(data, np.ndarray) else int(np.prod(p.shape)) * np.dtype(p.dtype).itemsize
    for mod in model.modules():                               # quantised layers keep packed blocks
        q = getattr(mod, "qweight", None)
        if q is not None and hasattr(q, "nbytes") and id(q) not in seen:
            seen.add(id(q))
            count += int(np.prod(q.shape))
            nbytes += int(q.nbytes)
    return count, nbytes


def cmd_info(args) -> int:
    """``axon-llm info``: configuration, parameters and memory of a model."""
    model = load_model(args.model)
    cfg = getattr(model, "config", None)
    print(f"model: {args.model}")
    print(f"class: {type(model).__name__}")
    if cfg is not None:
        fields = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(vars(cfg))
        print("config:")
        for k, v in fields.items():
            if not k.startswith("_"):
                print(f"  {k}: {v}")
    count, nbytes = model_memory(model)
    print(f"parameters: {count:,} ({count / 1e6:.1f}M)")
    print(f"weights in memory: {_human_bytes(nbytes)}")
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(f"peak process memory: {_human_bytes(rss)}")
    except (ImportError, OSError):
        pass
    return 0


def cmd_bench(args) -> int:
    """``axon-llm bench``: prefill and decode tokens/s of greedy generation."""
    import axon

    model = load_model(args.model)
    require_kind(model, args.model, "bench", ("causal LM",))
    vocab = model.config.vocab_size
    ctx = max_context(model)
    if ctx is not None and args.prompt_tokens + args.new_tokens > ctx:
        raise InputError(f"--prompt-tokens + --new-tokens = {args.prompt_tokens + args.new_tokens} exceeds the context {ctx}")
    from axon_llm.generation import check_generation_budget
    from axon_llm.generation_config import GenerationConfig
    from axon_llm.quantized import inference_kernels

    try:
        check_generation_budget(model, 1, args.prompt_tokens, GenerationConfig(max_new_tokens=args.new_tokens))
    except GenerationError as e:
        raise InputError(f"--prompt-tokens / --new-tokens: {e}") from None
    rng = np.random.default_rng(0)
    ids = rng.integers(min(100, vocab - 1), vocab, size=(1, args.prompt_tokens))
    from axon_kernels import first_run as first_run_parts

    with FirstRun(log) as first:                                         # a cold cache: compile first
        first.start(first_run_parts.MODEL_INDEPENDENT)
        first.start(inference_kernels(model))
    with axon.no_grad():                                                 # warm-up: JIT compilation
        model.generate(ids[:, :8], max_new_tokens=3, eos_token_id=None)  # prefill and decode paths
    best_prefill, best_decode = 0.0, 0.0
    for _ in range(args.repeats):
        with axon.no_grad():
            t0 = time.perf_counter()
            model(ids, cache=model.new_cache(1, args.prompt_tokens), logits_to_keep=1)   # [1, 1, V]
            t1 = time.perf_counter()
            stamps: list[float] = []                                     # decode: first new token to last
            model.generate(ids, max_new_tokens=args.new_tokens + 1, eos_token_id=None,
                           streamer=lambda new: stamps.append(time.perf_counter()))
        best_prefill = max(best_prefill, args.prompt_tokens / (t1 - t0))
        best_decode = max(best_decode, args.new_tokens / (stamps[-1] - stamps[0]))
    print(f"prefill: {best_prefill:.1f} tokens/s ({args.prompt_tokens} tokens)")
    print(f"decode:  {best_decode:.1f} tokens/s ({args.new_tokens} tokens)")
    return 0


# ----------------------------------------------------------------------------------------
# axon-llm serve (axon_llm/server.py, axon_llm/batching.py, axon_llm/constrained.py)
# ----------------------------------------------------------------------------------------
def _add_serve_command(sub) -> None:
    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (chat, completions, embeddings)",
                       description="Serve /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models "
                                   "and /health with continuous batching; see docs/serve.md.")
    p.add_argument("--model", default=DEFAULT_CHAT_MODEL, help=f"registry name, HF folder or .gguf (default {DEFAULT_CHAT_MODEL})")
    _add_adapter_argument(p)
    p.add_argument("--embedding-model", default=DEFAULT_EMBED_MODEL,
                   help=f"sentence-embedding model for /v1/embeddings (default {DEFAULT_EMBED_MODEL}; 'none' to skip)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_nonneg_int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (default: no key)")
    p.add_argument("--max-batch", type=_positive_int, default=8, help="sequences decoded together (default 8)")
    p.add_argument("--threads", type=_positive_int, default=None, help="compute threads (default: all cores)")
    p.add_argument("--timeout", type=_float_in(0.0, 1e6, lo_open=True, name="--timeout"), default=300.0,
                   help="server-side deadline of one generation in seconds (default 300)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    """``axon-llm serve``: load the models and serve until Ctrl-C."""
    from axon_llm.server import ServerApp, serve

    if args.port > 65535:
        raise CLIError(f"--port must be at most 65535, got {args.port}")
    model, tok = load_model(args.model, args.adapter), load_tokenizer(args.model)   # --threads: set in main()
    embed = embed_tok = None
    if args.embedding_model.lower() != "none":
        embed, embed_tok = load_model(args.embedding_model), load_tokenizer(args.embedding_model)
    app = ServerApp(model, tok, args.model, embed, embed_tok, None if embed is None else args.embedding_model,
                    api_key=args.api_key, max_batch=args.max_batch, timeout_s=args.timeout)
    t0 = time.perf_counter()
    try:
        app.scheduler.warm_up()          # kernels compiled (on a first run) before the first client
    except BaseException:
        app.close()
        raise
    log(f"warm-up: 1 and {args.max_batch} sequences in {time.perf_counter() - t0:.1f}s")
    serve(app, args.host, args.port)
    return 0


def cmd_train(args) -> int:
    """``axon-llm train``: see axon_llm/training.py."""
    from axon_llm.training import run_from_args

    return run_from_args(args)


# ----------------------------------------------------------------------------------------
# convert (axon_llm/convert.py)
# ----------------------------------------------------------------------------------------
def _add_convert_parser(sub) -> None:
    from axon_llm.convert import QUANT_CHOICES

    p = sub.add_parser("convert", help="write a model as a GGUF file (llama.cpp, Ollama) or an HF folder",
                       description="Convert SRC (registry name, HF folder, train checkpoint or .gguf) into OUT: "
                                   "a .gguf file, or a folder of safetensors + config + tokenizer. Without "
                                   "--quant every tensor keeps its source type.")
    p.add_argument("src", metavar="SRC", help="registry name, HF folder or .gguf file")
    p.add_argument("out", metavar="OUT", help="a .gguf file, or a folder (HF layout)")
    p.add_argument("--quant", type=str.upper, choices=QUANT_CHOICES, default=None, metavar="TYPE",
                   help=f"quantise the 2-D weights to TYPE ({', '.join(QUANT_CHOICES)}); .gguf output only")
    _add_adapter_argument(p)
    p.set_defaults(func=cmd_convert)


def cmd_convert(args) -> int:
    """``axon-llm convert SRC OUT [--quant TYPE] [--adapter DIR]``: see axon_llm/convert.py."""
    from axon_llm.convert import convert

    t0 = time.perf_counter()
    out = convert(args.src, args.out, quant=args.quant, adapter=args.adapter)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) if out.is_dir() else out.stat().st_size
    log(f"wrote {out} ({_human_bytes(size)}) in {time.perf_counter() - t0:.1f} s")
    return 0


# ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Entry point of ``axon-llm``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "threads", None):
            from axon_kernels._jit import set_threads

            used = set_threads(args.threads)
            if used < args.threads:
                log(f"note: {used} threads (Numba started with {used}; set NUMBA_NUM_THREADS to allow more)")
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:                    # `axon-llm generate ... | head`: stop quietly
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except (LLMError, OSError, ValueError, KeyError) as exc:
        if os.environ.get("AXON_LLM_DEBUG"):
            raise
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # an unexpected failure still ends in one line (traceback with AXON_LLM_DEBUG=1)
        if os.environ.get("AXON_LLM_DEBUG"):
            raise
        print(f"{PROG}: internal error: {type(exc).__name__}: {_one_line(exc)} "
              "(set AXON_LLM_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line (KeyError without its quotes, OSError with its file)."""
    if isinstance(exc, FileNotFoundError) and exc.filename and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}"
    elif isinstance(exc, KeyError) and not isinstance(exc, LLMError) and exc.args:
        text = str(exc.args[0])
    else:
        text = str(exc)
    return " ".join(text.split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
