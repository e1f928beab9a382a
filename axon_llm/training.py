"""Training any of the nine architectures on a text file: ``axon-llm train``.

    axon-llm train --arch llama --preset tiny --data notes.txt --tokenizer byte \\
                   --steps 300 --batch-size 8 --seq-len 128 --lr 3e-3 --out runs/tiny
    mpiexec -n 2 axon-llm train ...            # the same run, data-parallel over two processes
    axon-llm train ... --resume runs/tiny --out runs/tiny   # continues bit-for-bit

One step: draw the global batch for this step (a pure function of seed and step,
axon_llm/data.py), keep this rank's rows, split them into ``--grad-accum`` micro-batches,
backward each micro-batch's share of the *global* loss (its summed token losses divided by
the global number of targets), sum gradients over ranks in one fused all-reduce
(axon_llm/distributed.py), clip, AdamW, advance the warmup + cosine schedule.

A checkpoint folder holds:

    config.json, model.safetensors    the model (``axon_llm.from_pretrained(DIR)`` loads it)
    optimizer.safetensors             AdamW moments, one tensor per parameter and moment
    trainer_state.json                step, arguments, optimizer scalars, schedule, RNG state, losses
    tokenizer files                   ``tokenizer_byte.json`` or the pretrained tokenizer's files
    loss_curve.png                    when matplotlib is installed

Everything that decides the next step is in it, so ``--resume`` reproduces the losses
of an uninterrupted run exactly. Checkpoints are written to a temporary folder and
swapped in, so a crash never leaves a half-written one; a NaN loss stops the run, names
the step and saves the last good state.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import axon
import axon.nn.functional as F

from axon_llm.data import (Batch, ChatDataset, TokenDataset, is_byte_tokenizer_folder, is_chat_data,
                           load_training_tokenizer, read_text, shard_rows)
from axon_llm.distributed import SingleProcess, World, get_world
from axon_llm.errors import CheckpointError, ConfigError, InputError, LLMError
from axon_llm.models import TRAINABLE

__all__ = ["ARCHITECTURES", "TrainArgs", "Trainer", "TrainingError", "build_model", "list_presets",
           "add_train_arguments", "run_from_args", "train"]


class TrainingError(LLMError, RuntimeError):
    """The run cannot go on (NaN loss, an existing output folder, a mismatched checkpoint)."""


#: --arch name -> model class: the architecture table's trainable classes (each declares its
#: ``train_name``), in the table's order
ARCHITECTURES: dict[str, type] = TRAINABLE
_CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_seq_len", "context_length")
_NOT_PRESETS = {"from_dict", "from_json", "from_pretrained", "from_hf", "from_gguf", "from_d_model"}


# ----------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------
def _arch_classes(arch: str):
    """``(config classes, model class)`` of a ``--arch`` name (the first config class is the default)."""
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    model_cls = ARCHITECTURES[arch]
    return list(model_cls.accepted_configs()), model_cls


def list_presets(arch: str) -> dict[str, object]:
    """``{preset name: zero-argument classmethod}`` of an architecture's config class(es)."""
    config_classes, _ = _arch_classes(arch)
    presets = {}
    for cls in config_classes:
        for name, attr in vars(cls).items():
            if not isinstance(attr, classmethod) or name.startswith("_") or name in _NOT_PRESETS:
                continue
            bound = getattr(cls, name)
            params = inspect.signature(bound).parameters.values()
            if all(p.default is not inspect.Parameter.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                   for p in params):
                presets.setdefault(name, bound)
    return presets


def _with_fields(config, **changes):
    """``config`` with the given fields replaced (only fields it has)."""
    names = {f.name for f in dataclasses.fields(config)}
    return dataclasses.replace(config, **{k: v for k, v in changes.items() if k in names})


def build_config(arch: str, preset: str, tokenizer, seq_len: int):
    """The preset's config with the tokenizer's vocabulary and special ids, and a context of
    at least ``seq_len``."""
    presets = list_presets(arch)
    if preset not in presets:
        raise ConfigError(f"unknown preset {preset!r} for --arch {arch}; known: {', '.join(sorted(presets))}")
    config = presets[preset]()
    changes = {"vocab_size": tokenizer.vocab_size}
    for name in _CONTEXT_FIELDS:
        current = getattr(config, name, None)
        if isinstance(current, int) and current < seq_len:
            changes[name] = seq_len
    # the preset's special ids mean nothing for this tokenizer: take the tokenizer's (None for bytes)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        changes[name] = getattr(tokenizer, name, None)
    if changes["pad_token_id"] is None:                               # e.g. BERT's embedding needs a padding row
        changes["pad_token_id"] = ARCHITECTURES[arch].default_pad_token_id
    return _with_fields(config, **changes)


def hf_init_(model, std: float) -> None:
    """transformers' ``_init_weights`` for the transformer family, from axon's RNG, in place."""
    rng = axon.random.get_rng()
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if p.data.ndim == 2:
            p.data[...] = (rng.standard_normal(p.shape) * std).astype(p.dtype)
        elif leaf == "bias":
            p.data[...] = 0


def build_model(arch: str, config):
    """A freshly initialised model (parameters materialised from axon's RNG)."""
    _, model_cls = _arch_classes(arch)
    model = model_cls(config)
    model.materialize()
    if model_cls.hf_init:          # transformers' _init_weights; the other families have their own recipes
        hf_init_(model, float(getattr(config, "initializer_range", 0.02)))
    return model


def context_length(config) -> int | None:
    """The config's maximum sequence length, if it has one."""
    for name in _CONTEXT_FIELDS:
        v = getattr(config, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


# ----------------------------------------------------------------------------------------
# arguments
# ----------------------------------------------------------------------------------------
@dataclass
class TrainArgs:
    """Everything ``axon-llm train`` takes (same names as the flags)."""

    arch: str
    data: str
    out: str
    preset: str | None = None
    tokenizer: str = "byte"
    steps: int = 100
    batch_size: int = 8
    seq_len: int = 128
    lr: float = 3e-3
    warmup: int = 0
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    grad_accum: int = 1
    eval_every: int = 0
    log_every: int = 10
    save_every: int = 0
    seed: int = 0
    resume: str | None = None
    init: str | None = None
    stop_at: int | None = None
    progress: bool = True
    # LoRA (--lora R): train adapters over the frozen --init model (see axon_llm/lora.py)
    lora: int | None = None
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    lora_targets: str = "all-linear"
    gradient_checkpointing: bool = False     # recompute each layer's activations in backward

    def validate(self) -> None:
        """``InputError`` for values no run can use (the parser checks types, this the relations)."""
        for name in ("steps", "batch_size", "seq_len", "grad_accum"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"--lr must be a positive number, got {self.lr}")
        if self.warmup < 0 or self.warmup > self.steps:
            raise InputError(f"--warmup must be between 0 and --steps ({self.steps}), got {self.warmup}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise InputError("--weight-decay and --grad-clip must be >= 0")
        if self.batch_size % self.grad_accum:
            raise InputError(f"--batch-size {self.batch_size} must be a multiple of --grad-accum {self.grad_accum}")
        if self.arch not in ARCHITECTURES:
            raise ConfigError(f"unknown --arch {self.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
        if self.preset is None and self.resume is None and self.init is None:
            raise InputError("--preset is required (or --resume DIR / --init MODEL)")
        if self.stop_at is not None and not 1 <= self.stop_at <= self.steps:
            raise InputError(f"--stop-at must be between 1 and --steps ({self.steps})")
        if self.lora is not None:
            self.lora_config()
            if self.init is None and self.resume is None:
                raise InputError("--lora trains adapters over a pretrained model: give --init MODEL")
        elif self.lora_alpha is not None or self.lora_dropout or self.lora_targets != "all-linear":
            raise InputError("--lora-alpha, --lora-dropout and --lora-targets need --lora R")

    def lora_config(self):
        """The :class:`~axon_llm.lora.LoraConfig` of the ``--lora*`` flags (``InputError`` naming the flag)."""
        from axon_llm.lora import LoraConfig

        targets = self.lora_targets.strip()
        targets = targets if targets == "all-linear" else tuple(t.strip() for t in targets.split(",") if t.strip())
        names = {"r": "--lora", "lora_alpha": "--lora-alpha", "lora_dropout": "--lora-dropout",
                 "target_modules": "--lora-targets"}
        try:
            return LoraConfig(r=self.lora, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                              target_modules=targets)
        except ConfigError as e:
            field_ = next((f for f in names if f"LoRA {f} " in str(e) or f"LoRA {f}:" in str(e)), "r")
            raise InputError(f"{names[field_]}: {e}") from None


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``axon-llm train``."""
    def pos_int(text):
        v = int(text)
        if v < 1:
            raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
        return v

    def nonneg_int(text):
        v = int(text)
        if v < 0:
            raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v}")
        return v

    def finite(text):
        v = float(text)
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
        return v

    p.add_argument("--arch", required=True, choices=list(ARCHITECTURES), help="model family")
    p.add_argument("--preset", default=None, help="config preset of the family (tiny, small, ...)")
    p.add_argument("--data", required=True, help="UTF-8 text file, or .jsonl chats ({\"messages\": [...]}, "
                                                  "loss on assistant tokens only)")
    p.add_argument("--tokenizer", default="byte", help="'byte' (ids 0..255) or a tokenizer folder / model name")
    p.add_argument("--steps", type=pos_int, default=100, help="total optimizer steps (default 100)")
    p.add_argument("--batch-size", type=pos_int, default=8, help="global batch, over all processes (default 8)")
    p.add_argument("--seq-len", type=pos_int, default=128, help="tokens per sequence (default 128)")
    p.add_argument("--lr", type=finite, default=3e-3, help="peak learning rate (default 3e-3)")
    p.add_argument("--warmup", type=nonneg_int, default=0, help="linear warmup steps, then cosine decay")
    p.add_argument("--weight-decay", type=finite, default=0.01, help="AdamW weight decay (default 0.01)")
    p.add_argument("--grad-clip", type=finite, default=1.0, help="clip the global gradient norm (0 = off)")
    p.add_argument("--grad-accum", type=pos_int, default=1, help="micro-batches per step (default 1)")
    p.add_argument("--eval-every", type=nonneg_int, default=0, help="held-out loss every N steps (0 = off)")
    p.add_argument("--log-every", type=pos_int, default=10, help="print loss every N steps (default 10)")
    p.add_argument("--save-every", type=nonneg_int, default=0, help="checkpoint every N steps (0 = at the end)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of initialisation and data order (>= 0)")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--resume", default=None, metavar="DIR", help="continue the run saved in DIR")
    p.add_argument("--init", default=None, metavar="MODEL", help="start from a pretrained model (fine-tuning)")
    p.add_argument("--stop-at", type=pos_int, default=None, metavar="STEP",
                   help="save and stop after STEP steps, as an interrupted run would (resume it later)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")

    lora = p.add_argument_group("LoRA", "train low-rank adapters over the frozen --init model (it stays quantised)")
    lora.add_argument("--lora", type=int, default=None, metavar="R", help="adapter rank (enables LoRA)")
    lora.add_argument("--lora-alpha", type=finite, default=None, metavar="A", help="scaling numerator (default 2R)")
    lora.add_argument("--lora-dropout", type=finite, default=0.0, metavar="P", help="dropout on the adapter input")
    lora.add_argument("--lora-targets", default="all-linear", metavar="NAMES",
                      help="comma-separated layer names (q_proj,k_proj,...) or all-linear (the default)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="keep only each layer's input and recompute its activations in backward (less memory, "
                        "about a third more compute)")


def run_from_args(ns: argparse.Namespace) -> int:
    """``axon-llm train``: build :class:`TrainArgs` from the parsed flags and run."""
    names = {f.name for f in dataclasses.fields(TrainArgs)}
    args = TrainArgs(**{k: v for k, v in vars(ns).items() if k in names})
    world = get_world()
    if world.size == 1:
        train(args, world)
        return 0
    try:                         # under MPI an error on any rank must stop all of them
        train(args, world)
    except (LLMError, OSError, ValueError) as exc:
        print(f"axon-llm: error (rank {world.rank}): {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        world.abort(1)
    except BaseException as exc:  # noqa: BLE001 - anything else must abort the other ranks too
        print(f"axon-llm: error (rank {world.rank}): {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        world.abort(1)
    return 0


# ----------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"


def _rng_state_to_json(rng: np.random.Generator) -> dict:
    state = rng.bit_generator.state
    return json.loads(json.dumps(state, default=int))


def _rng_from_json(state: dict) -> np.random.Generator:
    bitgen = getattr(np.random, state["bit_generator"])()
    bitgen.state = state
    return np.random.Generator(bitgen)


def read_checkpoint_state(directory) -> dict:
    """``trainer_state.json`` of a checkpoint folder (``CheckpointError`` if it is not one)."""
    d = Path(directory)
    f = d / STATE_FILE
    if not d.is_dir():
        raise CheckpointError(f"--resume folder not found: {d}")
    if not f.is_file():
        raise CheckpointError(f"{d} is not a training checkpoint (no {STATE_FILE})")
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f} is corrupt: {e}") from None


# ----------------------------------------------------------------------------------------
# the trainer
# ----------------------------------------------------------------------------------------
@dataclass
class Trainer:
    """One training run; :func:`train` builds it from :class:`TrainArgs`."""

    args: TrainArgs
    world: World = field(default_factory=SingleProcess)

    def __post_init__(self):
        self.losses: list[list[float]] = []        # [step, loss] for every step done
        self.evals: list[list[float]] = []         # [step, eval loss]
        self.step = 0

    # -- setup ------------------------------------------------------------------------------
    def setup(self) -> None:
        """Validate the arguments, read the text, build (or resume) the model, optimizer and schedule."""
        a = self.args
        a.validate()
        out = Path(a.out)
        resume = Path(a.resume) if a.resume else None
        self.state = read_checkpoint_state(resume) if resume else None
        if self.state is not None and self.state.get("arch") != a.arch:
            raise CheckpointError(f"the checkpoint in {resume} was trained with --arch {self.state.get('arch')}, "
                                  f"not --arch {a.arch}")
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            same = resume is not None and out.resolve() == resume.resolve()
            if not same:
                what = "a training checkpoint" if (out / STATE_FILE).exists() else "files"
                raise TrainingError(f"--out {out} already holds {what}; choose an empty folder "
                                    f"(or --resume {out} --out {out} to continue it)")
        if self.state is not None and self.state["step"] >= a.steps:
            raise TrainingError(f"the checkpoint in {resume} already has {self.state['step']} steps "
                                f"(--steps {a.steps}); raise --steps to train further")
        if a.batch_size % (self.world.size * a.grad_accum):
            raise InputError(f"--batch-size {a.batch_size} must be a multiple of processes x --grad-accum "
                             f"({self.world.size} x {a.grad_accum})")

        self.mlm = a.arch == "bert"
        if self.state is not None and a.lora is None and self.state["args"].get("lora"):
            for name in ("lora", "lora_alpha", "lora_dropout", "lora_targets"):   # a LoRA run resumes as one
                setattr(a, name, self.state["args"][name])
        if a.lora is not None:
            self._lora_defaults()
        tok_spec = a.tokenizer
        if self.state is not None:
            tok_spec = self.state["tokenizer"] if self.state["tokenizer"] == "byte" else str(resume)
        self.tokenizer = load_training_tokenizer(tok_spec, for_mlm=self.mlm)
        if is_chat_data(a.data):
            if self.mlm:
                raise InputError("chat data (.jsonl) trains causal LMs, not --arch bert")
            self.data = ChatDataset.from_jsonl(a.data, self.tokenizer, a.seq_len, seed=a.seed,
                                               eval_fraction=0.1 if a.eval_every else 0.0)
        else:
            text = read_text(a.data)
            tokens = np.asarray(self.tokenizer.encode(text), dtype=np.int64)
            self.data = TokenDataset(tokens, a.seq_len, seed=a.seed, mlm=self.mlm,
                                     mask_token_id=self.tokenizer.mask_token_id,
                                     vocab_size=min(self.tokenizer.vocab_size, 256) if self.tokenizer.kind == "byte"
                                     else self.tokenizer.vocab_size,
                                     eval_fraction=0.1 if a.eval_every else 0.0)

        axon.manual_seed(a.seed)
        if a.lora is not None:
            self.model = self._lora_model(resume)
        elif self.state is not None:
            self.model = self._load_model(resume)
        elif a.init:
            self.model = self._init_from_pretrained(a.init)
        else:
            config = build_config(a.arch, a.preset, self.tokenizer, a.seq_len)
            self.model = build_model(a.arch, config)
        ctx = context_length(self.model.config)
        if ctx is not None and ctx < a.seq_len:
            raise InputError(f"--seq-len {a.seq_len} exceeds the model's context of {ctx}")
        if self.model.config.vocab_size < self.tokenizer.vocab_size:
            raise InputError(f"the tokenizer has {self.tokenizer.vocab_size} ids but the model only "
                             f"{self.model.config.vocab_size}")
        self._check_budget()
        if a.gradient_checkpointing:
            from axon_llm.checkpointing import checkpoint_layers

            checkpoint_layers(self.model)
        self.model.train()
        self.params = list(self.model.parameters())
        if a.lora is not None:                     # only the adapter trains (and is all-reduced, saved)
            self.params = [p for p in self.params if p.requires_grad]
        self.world.broadcast_arrays([p.data for p in self.params])

        self.optimizer = axon.optim.AdamW(self.params, lr=a.lr, weight_decay=a.weight_decay)
        self.scheduler = axon.optim.WarmupCosineLR(self.optimizer, a.warmup, a.steps, min_lr_ratio=0.1)
        if self.state is not None:
            self._load_training_state(resume)

    def _check_budget(self) -> None:
        """Before the optimizer and the first batch: optimizer state plus one micro-batch's
        activations must fit in the memory left (``InputError`` naming --batch-size)."""
        from axon_llm.limits import check_memory

        a, cfg = self.args, self.model.config
        rows = a.batch_size // (self.world.size * a.grad_accum)
        n_params = sum(int(np.prod(p.shape)) for p in self.model.parameters())
        hidden = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "n_embd", 0) or 0)
        layers = int(getattr(cfg, "num_hidden_layers", 0) or getattr(cfg, "n_layer", 0) or 0)
        heads = int(getattr(cfg, "num_attention_heads", 0) or getattr(cfg, "n_head", 0) or 0)
        tokens = rows * a.seq_len
        # logits with their softmax and gradient, ~16 saved [T, d] tensors and two [h, T, T] score
        # tensors per layer, AdamW's two moments and the gradients
        need = (tokens * (3 * cfg.vocab_size + 16 * layers * hidden) + 2 * layers * rows * heads * a.seq_len ** 2
                + 3 * n_params) * 4
        check_memory(need, f"training with --batch-size {a.batch_size} and --seq-len {a.seq_len}",
                     "lower --batch-size (or raise --grad-accum) or --seq-len", InputError)

    def _load_model(self, directory: Path):
        from axon_llm.auto import from_pretrained

        _, model_cls = _arch_classes(self.args.arch)
        model = from_pretrained(directory)
        if not isinstance(model, model_cls):
            raise CheckpointError(f"{directory} holds a {type(model).__name__}, not a {model_cls.__name__}")
        return model

    def _init_from_pretrained(self, src: str):
        from axon_llm.auto import from_pretrained

        _, model_cls = _arch_classes(self.args.arch)
        path = Path(src)
        if not path.exists():                     # a registry name: find its files (no network if installed)
            from axon_llm.hub import resolve_model_path

            path = resolve_model_path(src)
        if path.is_dir() and not (path / "config.json").exists() and len(list(path.glob("*.gguf"))) == 1:
            path = next(path.glob("*.gguf"))
        model = dequantized_gguf(path) if path.suffix == ".gguf" else from_pretrained(path)
        if not isinstance(model, model_cls):
            raise ConfigError(f"--init {src} is a {type(model).__name__}, not a --arch {self.args.arch} model "
                              f"({model_cls.__name__})")
        for p in model.parameters():
            if p.dtype != np.float32:
                p.data = p.data.astype(np.float32)
        return model

    # -- LoRA ------------------------------------------------------------------------------------
    def _lora_defaults(self) -> None:
        """LoRA runs take the base model from the checkpoint on resume, and its tokenizer by default."""
        a = self.args
        if a.init is None and self.state is not None:
            a.init = self.state["args"].get("init")
        if a.init and Path(a.init).exists():
            a.init = str(Path(a.init).resolve())              # the checkpoint must find it from anywhere
        folder = Path(a.init) if a.init else None
        has_tokenizer = folder is not None and not (folder.is_dir() and (is_byte_tokenizer_folder(folder) or not (
            (folder / "tokenizer.json").is_file() or any(folder.glob("*.gguf")))))
        if a.tokenizer == "byte" and has_tokenizer:
            a.tokenizer = a.init

    def _lora_model(self, resume: Path | None):
        """The --init model as loaded for inference (a GGUF stays quantised), frozen, with a fresh
        adapter -- or, on --resume, the checkpoint's adapter."""
        from axon_llm.auto import from_pretrained
        from axon_llm.lora import apply_lora, load_adapter, read_adapter_config

        a = self.args
        _, model_cls = _arch_classes(a.arch)
        model = from_pretrained(a.init)
        if not isinstance(model, model_cls):
            raise ConfigError(f"--init {a.init} is a {type(model).__name__}, not a --arch {a.arch} model "
                              f"({model_cls.__name__})")
        config = a.lora_config()
        if resume is None:
            try:
                apply_lora(model, config)
            except ConfigError as e:
                raise InputError(f"--lora-targets: {e}") from None
            return model
        saved = read_adapter_config(resume)
        if (saved.r, saved.lora_alpha) != (config.r, config.lora_alpha):
            raise CheckpointError(f"the adapter in {resume} has r={saved.r}, alpha={saved.lora_alpha:g}, "
                                  f"not --lora {config.r} --lora-alpha {config.lora_alpha:g}")
        return load_adapter(model, resume)

    def _load_training_state(self, directory: Path) -> None:
        s = self.state
        self.step = int(s["step"])
        self.losses = [list(x) for x in s.get("losses", [])]
        self.evals = [list(x) for x in s.get("evals", [])]
        arrays = axon.load(directory / OPTIMIZER_FILE) if (directory / OPTIMIZER_FILE).exists() else {}
        opt = s["optimizer"]
        state = {}
        for idx, scalars in opt["state"].items():
            entry = dict(scalars)
            prefix = f"state.{idx}."
            for key, arr in arrays.items():
                if key.startswith(prefix):
                    entry[key[len(prefix):]] = np.asarray(arr.numpy() if hasattr(arr, "numpy") else arr)
            state[int(idx)] = entry
        groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in opt["param_groups"]]
        try:
            self.optimizer.load_state_dict({"state": state, "param_groups": groups})
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"the optimizer state in {directory} does not fit this model: {e}") from None
        self.scheduler.load_state_dict(s["scheduler"])
        axon.random._state["rng"] = _rng_from_json(s["rng"])

    # -- one step ------------------------------------------------------------------------------
    def _loss(self, batch: Batch, global_targets: int):
        """This micro-batch's share of the global mean loss (summed token losses / global targets)."""
        model = self.model
        ids, labels = batch.input_ids, batch.labels
        logits, aux = model.forward_with_aux_loss(ids)                      # aux: e.g. Chimera's load balancing
        V = logits.shape[-1]
        ce = F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), ignore_index=-100, reduction="sum")
        loss = ce * (1.0 / global_targets)                                   # scalar
        if aux is not None:   # weighted by the share of rows this micro-batch has
            loss = loss + aux * (ids.shape[0] / self.args.batch_size)
        return loss

    def train_step(self, step: int) -> float:
        """Run optimizer step ``step`` (0-based); returns the global loss (NaN/inf stop the run)."""
        a = self.args
        glob = self.data.global_batch(step, a.batch_size)
        mine = shard_rows(glob, self.world.rank, self.world.size)
        n_targets = glob.num_targets
        self.optimizer.zero_grad()
        total = 0.0
        micro = mine.input_ids.shape[0] // a.grad_accum
        for i in range(a.grad_accum):
            sl = slice(i * micro, (i + 1) * micro)
            loss = self._loss(Batch(mine.input_ids[sl], mine.labels[sl]), n_targets)
            loss.backward()
            total += float(loss.item())
        grads = []
        for p in self.params:
            if p.grad is None:
                p.grad = axon.zeros_like(p)
            grads.append(p.grad.data)
        self.world.allreduce_sum_(grads)
        total = self.world.allreduce_scalar(total)
        if not math.isfinite(total):
            return total
        if a.grad_clip > 0:
            axon.optim.clip_grad_norm_(self.params, a.grad_clip)
        self.last_lr = self.optimizer.param_groups[0]["lr"]                # the rate this step used
        self.optimizer.step()
        self.scheduler.step()
        return total

    def evaluate(self) -> float | None:
        """Mean loss over the held-out batches (every rank computes it; it is cheap)."""
        batches = self.data.eval_batches(self.args.batch_size)
        if not batches:
            return None
        self.model.eval()
        try:
            with axon.no_grad():
                num = den = 0.0
                for b in batches:
                    logits = self.model(b.input_ids)                          # [B, T, V]
                    V = logits.shape[-1]
                    num += float(F.cross_entropy(logits.reshape(-1, V), b.labels.reshape(-1), ignore_index=-100,
                                                 reduction="sum").item())
                    den += b.num_targets
        finally:
            self.model.train()
        return num / max(den, 1)

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> list[list[float]]:
        """Train from ``self.step`` to ``--steps`` (or ``--stop-at``); returns the loss history."""
        a = self.args
        end = a.steps if a.stop_at is None else a.stop_at
        if self.step >= end:
            raise TrainingError(f"the checkpoint is already at step {self.step}; nothing to do before step {end}")
        tokens_per_step = a.batch_size * a.seq_len
        bar = None
        if a.progress and self.world.is_main:
            from tqdm import tqdm

            bar = tqdm(total=end, initial=self.step, file=sys.stderr, desc="train", unit="step",
                       dynamic_ncols=True, mininterval=0.5)
        self._log(f"training {type(self.model).__name__} ({sum(p.data.size for p in self.params):,} parameters) "
                  f"on {self.data.train_tokens.size:,} tokens, {self.world.size} process(es), "
                  f"steps {self.step + 1}..{end}", stream=sys.stderr)
        t_last, steps_since = time.perf_counter(), 0
        try:
            while self.step < end:
                loss = self.train_step(self.step)
                if not math.isfinite(loss):
                    good = self.step
                    if good > 0 or self.args.resume:
                        self.save(Path(a.out))
                        where = f"the last good checkpoint (step {good}) is in {a.out}"
                    else:
                        where = "no checkpoint was written (it failed on the first step)"
                    raise TrainingError(f"the loss became {loss} at step {self.step + 1}; {where}. "
                                        "Try a lower --lr or a --grad-clip")
                self.step += 1
                steps_since += 1
                self.losses.append([self.step, loss])
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                if self.step % a.log_every == 0 or self.step == end:
                    dt = time.perf_counter() - t_last
                    tps = tokens_per_step * steps_since / max(dt, 1e-9)
                    lr = self.last_lr
                    self._log(f"step {self.step}/{a.steps} loss={loss:.6f} lr={lr:.3e} tokens/s={tps:.0f}", bar=bar)
                    t_last, steps_since = time.perf_counter(), 0
                if a.eval_every and self.step % a.eval_every == 0:
                    ev = self.evaluate()
                    if ev is not None:
                        self.evals.append([self.step, ev])
                        self._log(f"step {self.step} eval_loss={ev:.6f}", bar=bar)
                if a.save_every and self.step % a.save_every == 0 and self.step != end:
                    self.save(Path(a.out))
            self.save(Path(a.out))
        finally:
            if bar is not None:
                bar.close()
        self._log(f"saved {a.out} (step {self.step})", stream=sys.stderr)
        return self.losses

    def _log(self, line: str, bar=None, stream=None) -> None:
        if not self.world.is_main:
            return
        if bar is not None:
            bar.write(line, file=stream or sys.stdout)
        else:
            print(line, file=stream or sys.stdout, flush=True)

    # -- saving ------------------------------------------------------------------------------
    def save(self, out: Path) -> None:
        """Write the whole training state to ``out`` (rank 0; others wait), atomically."""
        if self.world.is_main:
            tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            try:
                self._write(tmp)
                old = out.parent / f".{out.name}.old-{os.getpid()}"
                if out.exists():
                    os.replace(out, old)
                os.replace(tmp, out)
                if old.exists():
                    shutil.rmtree(old)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        self.world.barrier()

    def _write(self, d: Path) -> None:
        if self.args.lora is not None:
            from axon_llm.lora import save_adapter

            save_adapter(self.model, d, base_model=self.args.init)     # the adapter only, PEFT's format
        else:
            self.model.save_pretrained(d)
        sd = self.optimizer.state_dict()
        arrays, scalars = {}, {}
        for idx, entry in sd["state"].items():
            scalars[str(idx)] = {}
            for k, v in entry.items():
                if isinstance(v, np.ndarray):
                    arrays[f"state.{idx}.{k}"] = v
                else:
                    scalars[str(idx)][k] = v.item() if isinstance(v, np.generic) else v
        if arrays:
            axon.save(arrays, d / OPTIMIZER_FILE)
        groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
        self.tokenizer.save(d)
        state = {
            "format": 1,
            "arch": self.args.arch,
            "preset": self.args.preset,
            "step": self.step,
            "tokenizer": "byte" if self.tokenizer.kind == "byte" else self.args.tokenizer,
            "args": dataclasses.asdict(self.args),
            "world_size": self.world.size,
            "optimizer": {"state": scalars, "param_groups": groups},
            "scheduler": self.scheduler.state_dict(),
            "rng": _rng_state_to_json(axon.random.get_rng()),
            "losses": self.losses,
            "evals": self.evals,
        }
        (d / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
        plot_losses(self.losses, self.evals, d / "loss_curve.png")


def dequantized_gguf(path):
    """A float32 ``LLaMAForCausalLM`` from a GGUF file: every quantised tensor dequantised once
    (``GGUFQuantTensor.dequantize``), so the model can be fine-tuned."""
    from axon_llm.loaders.gguf import GGUFQuantTensor, load_gguf
    from axon_llm.loaders.safetensors import load_state
    from axon_llm.models.llama import LLaMAConfig, LLaMAForCausalLM

    gm = load_gguf(path)
    model = LLaMAForCausalLM(LLaMAConfig.from_dict(gm.config))
    state = {k: (t.dequantize() if isinstance(t, GGUFQuantTensor) else t) for k, t in gm.tensors.items()}
    load_state(model, state)
    return model


def plot_losses(losses, evals, path: Path) -> bool:
    """Save a loss-curve PNG when matplotlib is installed; returns whether it did."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    if not losses:
        return False
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    steps, values = zip(*losses)
    ax.plot(steps, values, label="train loss", lw=1)
    if evals:
        es, ev = zip(*evals)
        ax.plot(es, ev, "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def train(args: TrainArgs, world: World | None = None) -> Trainer:
    """Set up and run a training run; returns the finished :class:`Trainer`."""
    trainer = Trainer(args, world or get_world())
    trainer.setup()
    trainer.run()
    return trainer
