"""LoRA and QLoRA: trainable low-rank adapters over frozen (even quantised) linear layers.

::

    y = W x (+ b)  +  s * B (A (dropout(x)))        s = alpha / r   (rsLoRA: alpha / sqrt(r))
        \\______/       \\__________________/
        frozen base     the adapter: A [r, in] Kaiming-uniform(a=sqrt(5)), B [out, r] zeros

Glossary: ``in``/``out`` the wrapped layer's features, ``r`` the rank, ``s`` the scaling.

The base ``W`` is an ``nn.Linear`` (float, frozen) or a :class:`~axon_llm.quantized.QuantizedLinear`
(QLoRA: the blocks stay packed; its backward hands the gradient to ``x`` by dequantising row
chunks, never the whole matrix). Only ``A`` and ``B`` get gradients. As B starts at zero, a fresh
adapter leaves the model's output unchanged (as PEFT's).

:func:`apply_lora` swaps each target module for a :class:`LoraLinear` *under the same name*; the
wrapper holds the base layer's own tensors under their own names (``weight``, ``bias``, or the
packed ``qweight``), so module names and checkpoint keys stay those of the model, and PEFT's
adapter keys map by name::

    base_model.model.<module name>.lora_A.weight    [r, in]
    base_model.model.<module name>.lora_B.weight    [out, r]

:func:`save_adapter` / :func:`load_adapter` read and write PEFT's ``adapter_config.json`` +
``adapter_model.safetensors``; :func:`merge_adapter` folds ``W + s B A`` into float ``nn.Linear``
layers (a quantised base is dequantised for that).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import axon
import axon.nn as nn
from axon.nn import init

from axon_llm.errors import CheckpointError, ConfigError, UnsupportedError
from axon_llm.quantized import QuantizedLinear

__all__ = ["LoraConfig", "LoraLinear", "lora_delta", "apply_lora", "lora_modules", "lora_state_dict",
           "merge_adapter", "save_adapter", "load_adapter", "read_adapter_config", "ADAPTER_CONFIG", "ADAPTER_WEIGHTS"]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: PEFT's prefix of every saved key: ``PeftModel.base_model`` (LoraModel) ``.model`` (the HF model)
PEFT_PREFIX = "base_model.model."
ALL_LINEAR = "all-linear"
#: PEFT's ``all-linear`` leaves the output layer alone
_OUTPUT_LAYERS = ("lm_head",)


@dataclass
class LoraConfig:
    """The adapter's settings, with PEFT's ``LoraConfig`` names.

    ``target_modules`` is a list of module names (a module matches when its dotted name equals
    the target or ends with ``"." + target``, as in PEFT) or ``"all-linear"`` (every linear layer
    but the output head). ``lora_alpha=None`` means ``2 * r``.
    """

    r: int = 8
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] | str = ALL_LINEAR
    use_rslora: bool = False

    def __post_init__(self):
        if isinstance(self.target_modules, (list, tuple)):
            self.target_modules = tuple(str(t) for t in self.target_modules)
        if self.lora_alpha is None and isinstance(self.r, int) and not isinstance(self.r, bool):
            self.lora_alpha = 2 * self.r
        self.validate()

    def validate(self) -> None:
        """``ConfigError`` naming the field for a rank < 1, a negative alpha, a dropout outside [0, 1)
        or an empty target list."""
        if isinstance(self.r, bool) or not isinstance(self.r, (int, np.integer)) or self.r < 1:
            raise ConfigError(f"LoRA r (the rank) must be an integer >= 1, got {self.r!r}")
        if isinstance(self.lora_alpha, bool) or not isinstance(self.lora_alpha, (int, float)) \
                or not math.isfinite(self.lora_alpha) or self.lora_alpha <= 0:
            raise ConfigError(f"LoRA lora_alpha must be a positive number, got {self.lora_alpha!r}")
        if isinstance(self.lora_dropout, bool) or not isinstance(self.lora_dropout, (int, float)) \
                or not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"LoRA lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        t = self.target_modules
        if isinstance(t, str):
            if t != ALL_LINEAR:
                raise ConfigError(f"LoRA target_modules must be a list of module names or {ALL_LINEAR!r}, got {t!r}")
        elif not t or not all(isinstance(x, str) and x for x in t):
            raise ConfigError(f"LoRA target_modules must be a non-empty list of module names, got {list(t)!r}")

    @property
    def scaling(self) -> float:
        """``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA."""
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def to_peft(self, target_names: list[str], base_model: str | None = None) -> dict:
        """PEFT's ``adapter_config.json`` for an adapter over ``target_names`` (the short names
        actually wrapped; PEFT also writes the expanded list after ``all-linear``)."""
        return {
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
            "r": int(self.r), "lora_alpha": self.lora_alpha, "lora_dropout": float(self.lora_dropout),
            "target_modules": sorted(target_names), "use_rslora": bool(self.use_rslora),
            "bias": "none", "fan_in_fan_out": False, "modules_to_save": None, "init_lora_weights": True,
            "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
            "use_dora": False, "inference_mode": True, "revision": None,
        }

    @classmethod
    def from_peft(cls, data: dict, source: str = ADAPTER_CONFIG) -> "LoraConfig":
        """From PEFT's ``adapter_config.json`` dict; options this implementation does not have
        (DoRA, per-module ranks, trained biases, extra saved modules) are refused by name."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        kind = data.get("peft_type", "LORA")
        if kind != "LORA":
            raise UnsupportedError(f"{source}: peft_type {kind!r} is not supported (only LORA)")
        refused = {"use_dora": False, "bias": "none", "modules_to_save": None, "rank_pattern": {},
                   "alpha_pattern": {}, "layers_to_transform": None, "lora_bias": False, "exclude_modules": None,
                   "target_parameters": None, "trainable_token_indices": None, "layer_replication": None,
                   "use_qalora": False}
        for key, plain in refused.items():
            value = data.get(key, plain)
            if value not in (plain, [], {}, None, False, "none"):
                raise UnsupportedError(f"{source}: {key}={value!r} is not supported by axon_llm's LoRA")
        for key in ("r", "lora_alpha", "target_modules"):
            if key not in data:
                raise ConfigError(f"{source}: the field {key!r} is missing")
        targets = data["target_modules"]
        if isinstance(targets, list):
            targets = tuple(targets)
        elif isinstance(targets, str) and targets != ALL_LINEAR:
            raise UnsupportedError(f"{source}: target_modules as a regular expression ({targets!r}) is not supported; "
                                   "give a list of module names")
        return cls(r=data["r"], lora_alpha=data["lora_alpha"], lora_dropout=data.get("lora_dropout", 0.0) or 0.0,
                   target_modules=targets, use_rslora=bool(data.get("use_rslora", False)))


def lora_delta(x, lora_A, lora_B, scaling: float):
    """``s * B (A x)``: ``x [..., in]``, ``lora_A [r, in]``, ``lora_B [out, r]`` -> ``[..., out]``."""
    h = x @ lora_A.transpose(0, 1)                                        # [..., in] -> [..., r]
    return (h @ lora_B.transpose(0, 1)) * scaling                         # [..., r] -> [..., out]


class LoraLinear(nn.Module):
    """A frozen linear layer (``nn.Linear`` or ``QuantizedLinear``) plus a trainable LoRA branch.

    The base layer's tensors are registered here under their own names (``weight``/``bias`` of
    a Linear, the packed ``qweight`` and ``bias`` of a QuantizedLinear), so the wrapper's state
    dict keys are the base layer's plus ``lora_A.weight`` and ``lora_B.weight``.
    """

    def __init__(self, base, r: int, lora_alpha: float, lora_dropout: float = 0.0, use_rslora: bool = False):
        super().__init__()
        if not isinstance(base, (nn.Linear, QuantizedLinear)):
            raise UnsupportedError(f"LoRA wraps Linear or QuantizedLinear layers, not {type(base).__name__}")
        object.__setattr__(self, "base_layer", base)      # not a sub-module: its names are ours
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.lora_alpha, self.use_rslora = int(r), float(lora_alpha), bool(use_rslora)
        self.scaling = LoraConfig(r=self.r, lora_alpha=self.lora_alpha, use_rslora=self.use_rslora).scaling
        if isinstance(base, QuantizedLinear):
            self.qweight = base.qweight
            dtype = np.float32
        else:
            base.weight.requires_grad = False
            self.weight = base.weight
            dtype = base.weight.dtype
        if base.bias is not None:
            base.bias.requires_grad = False
            self.bias = base.bias
        self.lora_dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(self.in_features, self.r, bias=False, dtype=dtype)     # weight [r, in]
        self.lora_B = nn.Linear(self.r, self.out_features, bias=False, dtype=dtype)    # weight [out, r]
        init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))         # PEFT's init_lora_weights=True
        init.zeros_(self.lora_B.weight)
        self.lora_A.weight.materialize()
        self.lora_B.weight.materialize()

    @property
    def quantized(self) -> bool:
        """True when the frozen base keeps its weight quantised (QLoRA)."""
        return isinstance(self.base_layer, QuantizedLinear)

    def forward(self, x):
        """``[..., in] -> [..., out]``: the base output plus the scaled low-rank update."""
        y = self.base_layer(x)                                            # [..., out]
        return y + lora_delta(self.lora_dropout(x), self.lora_A.weight, self.lora_B.weight, self.scaling)

    def merged(self) -> nn.Linear:
        """A float ``nn.Linear`` with ``W + s B A`` (a quantised ``W`` is dequantised first)."""
        base = self.base_layer.dequantize() if self.quantized else self.base_layer
        w = np.asarray(base.weight.data)
        delta = (self.lora_B.weight.data.astype(np.float64) @ self.lora_A.weight.data.astype(np.float64))  # [out, in]
        lin = nn.Linear(self.in_features, self.out_features, bias=base.bias is not None, dtype=w.dtype)
        lin.weight = nn.Parameter((w + self.scaling * delta).astype(w.dtype))
        if base.bias is not None:
            lin.bias = nn.Parameter(np.array(base.bias.data))
        return lin

    def extra_repr(self) -> str:
        """Sizes, rank, scaling and the base's kind, shown by ``repr(module)``."""
        kind = f"QuantizedLinear({self.base_layer.qtype})" if self.quantized else "Linear"
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"scaling={self.scaling:g}, base={kind}")


def _is_linear(module) -> bool:
    return isinstance(module, (nn.Linear, QuantizedLinear))


def _matches(name: str, target: str) -> bool:
    """PEFT's rule for a list of targets: the full name, or its ending after a dot."""
    return name == target or name.endswith("." + target)


def lora_modules(model: nn.Module) -> list[tuple[str, LoraLinear]]:
    """``(name, LoraLinear)`` for every adapted layer of ``model``, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLinear)]


def _select_targets(model: nn.Module, config: LoraConfig) -> list[str]:
    """Names of the layers ``config`` adapts (``ConfigError`` naming an unknown or unsuitable target)."""
    names = [(n, m) for n, m in model.named_modules() if n]
    if config.target_modules == ALL_LINEAR:
        chosen = [n for n, m in names if _is_linear(m) and n.rsplit(".", 1)[-1] not in _OUTPUT_LAYERS]
        if not chosen:
            raise ConfigError(f"LoRA target_modules 'all-linear': {type(model).__name__} has no linear layers")
        return chosen
    chosen = []
    for target in config.target_modules:
        hits = [(n, m) for n, m in names if _matches(n, target)]
        if not hits:
            known = sorted({n.rsplit(".", 1)[-1] for n, m in names if _is_linear(m)})
            raise ConfigError(f"LoRA target module {target!r} matches no layer of {type(model).__name__}; "
                              f"its linear layers are named {', '.join(known)}")
        for n, m in hits:
            if not _is_linear(m):
                raise ConfigError(f"LoRA target module {target!r} matches {n}, a {type(m).__name__}, "
                                  "not a linear layer")
            if n not in chosen:
                chosen.append(n)
    order = {n: i for i, (n, _) in enumerate(names)}
    return sorted(chosen, key=order.__getitem__)                         # module order


def _shared_weights(model: nn.Module) -> set[int]:
    """ids of weights (Parameters or packed matrices) that more than one layer holds."""
    count: dict[int, int] = {}
    for _, m in model.named_modules():
        for w in (m._parameters.get("weight"), getattr(m, "qweight", None)):
            if w is not None:
                count[id(w)] = count.get(id(w), 0) + 1
    return {k for k, c in count.items() if c > 1}


def apply_lora(model: nn.Module, config: LoraConfig) -> list[str]:
    """Freeze ``model`` and wrap each target layer in a :class:`LoraLinear`, in place.

    Returns the names of the wrapped layers. A, B are drawn from axon's generator
    (``axon.manual_seed``). The adapter's parameters are the only ones that require a gradient.
    """
    config.validate()
    if lora_modules(model):
        raise ConfigError(f"{type(model).__name__} already has a LoRA adapter; merge it (merge_adapter) first")
    targets = _select_targets(model, config)
    shared = _shared_weights(model)
    for name in targets:
        base = model.get_submodule(name)
        if id(base.qweight if isinstance(base, QuantizedLinear) else base.weight) in shared:
            raise UnsupportedError(f"LoRA target {name} shares its weight with another layer (tied embeddings); "
                                   "leave it out of target_modules")
    for p in model.parameters():
        p.requires_grad = False
    for name in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, attr)
        layer = LoraLinear(base, config.r, config.lora_alpha, config.lora_dropout, config.use_rslora)
        setattr(parent, attr, layer.train(model.training))               # dropout follows the model's mode
    model.lora_config = config
    return targets


def lora_state_dict(model: nn.Module) -> dict[str, np.ndarray]:
    """The adapter's tensors under PEFT's keys (``base_model.model.<name>.lora_A.weight`` ...)."""
    out = {}
    for name, m in lora_modules(model):
        out[f"{PEFT_PREFIX}{name}.lora_A.weight"] = m.lora_A.weight.data
        out[f"{PEFT_PREFIX}{name}.lora_B.weight"] = m.lora_B.weight.data
    return out


def merge_adapter(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base layer, in place: each :class:`LoraLinear` becomes a float
    ``nn.Linear`` holding ``W + s B A``. Returns ``model`` (then an ordinary model: ``save_pretrained`` works)."""
    modules = lora_modules(model)
    if not modules:
        raise ConfigError(f"{type(model).__name__} has no LoRA adapter to merge")
    for name, m in modules:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, m.merged())
    model.__dict__.pop("lora_config", None)
    return model


def save_adapter(model: nn.Module, directory, base_model: str | None = None) -> Path:
    """Write PEFT's ``adapter_config.json`` + ``adapter_model.safetensors`` into ``directory``."""
    modules = lora_modules(model)
    config = getattr(model, "lora_config", None)
    if not modules or config is None:
        raise ConfigError(f"{type(model).__name__} has no LoRA adapter to save")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    short = sorted({n.rsplit(".", 1)[-1] for n, _ in modules})
    axon.save(lora_state_dict(model), d / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    (d / ADAPTER_CONFIG).write_text(json.dumps(config.to_peft(short, base_model), indent=2) + "\n", encoding="utf-8")
    return d


def read_adapter_config(directory) -> LoraConfig:
    """The :class:`LoraConfig` of an adapter folder (``CheckpointError`` if it is not one)."""
    d = Path(directory)
    f = d / ADAPTER_CONFIG
    if not d.is_dir():
        raise CheckpointError(f"adapter folder not found: {d}")
    if not f.is_file() or not (d / ADAPTER_WEIGHTS).is_file():
        raise CheckpointError(f"{d} is not a LoRA adapter (it needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{f} is not valid JSON: {e}") from None
    return LoraConfig.from_peft(data, source=str(f))


def load_adapter(model: nn.Module, directory) -> nn.Module:
    """Apply the PEFT adapter saved in ``directory`` to ``model``, in place; returns ``model``.

    Every tensor must name a wrapped layer with the right shape, and every wrapped layer must
    have both tensors; otherwise (an adapter for another base) ``CheckpointError`` names the key
    and nothing is changed.
    """
    d = Path(directory)
    config = read_adapter_config(d)
    try:
        arrays = axon.load(d / ADAPTER_WEIGHTS)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{d / ADAPTER_WEIGHTS} cannot be read: {e}") from None
    arrays = {(k[len(PEFT_PREFIX):] if k.startswith(PEFT_PREFIX) else k): v for k, v in arrays.items()}
    arrays = {k.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B."): v
              for k, v in arrays.items()}
    try:
        targets = _select_targets(model, config)
    except ConfigError as e:
        raise CheckpointError(f"the adapter in {d} does not fit this {type(model).__name__}: {e}") from None
    expected = {}
    for name in targets:
        layer = model.get_submodule(name)
        expected[f"{name}.lora_A.weight"] = (config.r, layer.in_features)
        expected[f"{name}.lora_B.weight"] = (layer.out_features, config.r)
    for key, arr in arrays.items():
        if key not in expected:
            raise CheckpointError(f"the adapter in {d} does not fit this {type(model).__name__}: it has "
                                  f"{PEFT_PREFIX}{key}, a layer this model does not adapt")
        if tuple(arr.shape) != expected[key]:
            raise CheckpointError(f"the adapter in {d} does not fit this {type(model).__name__}: "
                                  f"{PEFT_PREFIX}{key} has shape {list(arr.shape)}, the model needs "
                                  f"{list(expected[key])} (r={config.r})")
    missing = [k for k in expected if k not in arrays]
    if missing:
        raise CheckpointError(f"the adapter in {d} does not fit this {type(model).__name__}: "
                              f"{PEFT_PREFIX}{missing[0]} is missing ({len(missing)} tensor(s) in all)")
    apply_lora(model, config)
    for name, m in lora_modules(model):
        m.lora_A.weight.data = np.asarray(arrays[f"{name}.lora_A.weight"], dtype=m.lora_A.weight.dtype)
        m.lora_B.weight.data = np.asarray(arrays[f"{name}.lora_B.weight"], dtype=m.lora_B.weight.dtype)
    return model
