"""BERT (HF ``BertModel``, ``BertForMaskedLM``, ``BertForSequenceClassification``): post-norm encoder.

::

    x = LayerNorm(word(ids) + token_type(tt) + position(0..T-1))        # [B, T, d]
    for each layer:
        x = LayerNorm(x + dense(attn(query x, key x, value x; padding mask)))   # attention.output
        x = LayerNorm(x + dense(gelu(dense(x))))                            # intermediate / output
    pooled = tanh(pooler.dense(x[:, 0]))                                 # [B, d]

Heads: masked LM ``cls.predictions`` = ``decoder(LayerNorm(gelu(dense x)))`` whose decoder
weight is tied to ``word_embeddings`` and whose bias is ``cls.predictions.bias``; sequence
classification ``classifier(dropout(pooled))``.

Attention is bidirectional; ``attention_mask`` (1 = token, 0 = padding) hides padded keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

import axon
import axon.nn as nn
import axon.nn.functional as F

from axon_llm.attention import AttentionContext, attend, merge_heads, split_heads
from axon_llm.blocks import PretrainedModel, activation
from axon_llm.config import ModelConfig, check_activation, check_heads, check_positive
from axon_llm.embeddings import BertEmbedding, as_token_ids
from axon_llm.errors import ConfigError, InputError, UnsupportedError

__all__ = ["BertConfig", "BertSelfAttention", "BertAttention", "BertLayer", "BertEncoder", "BertPooler", "BertModel",
           "Bert", "BertForMaskedLM", "BertForSequenceClassification"]


@dataclass
class BertConfig(ModelConfig):
    """BERT (HF ``BertConfig`` field names). ``num_labels`` sizes the classification head."""

    model_type: ClassVar[str] = "bert"
    architecture: ClassVar[str] = "BertModel"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    position_embedding_type: str = "absolute"
    classifier_dropout: float | None = None
    num_labels: int = 2
    id2label: dict | None = None
    problem_type: str | None = None

    @classmethod
    def _prepare(cls, d):
        d = dict(d)
        if "id2label" in d and isinstance(d["id2label"], dict):
            d["id2label"] = {int(k): v for k, v in d["id2label"].items()}
            d.setdefault("num_labels", len(d["id2label"]))
        d.pop("label2id", None)
        return d

    def __post_init__(self) -> None:
        check_positive(self, "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                       "intermediate_size", "max_position_embeddings", "type_vocab_size", "num_labels")
        check_heads(self)
        check_activation(self, "hidden_act")
        if self.id2label is None:
            self.id2label = {i: f"LABEL_{i}" for i in range(self.num_labels)}
        elif len(self.id2label) != self.num_labels:
            raise ConfigError(f"num_labels ({self.num_labels}) differs from the {len(self.id2label)} entries of id2label")
        if self.position_embedding_type != "absolute":
            raise UnsupportedError(f"position_embedding_type {self.position_embedding_type!r} is not supported; "
                                   "supported: absolute")

    def to_dict(self) -> dict[str, Any]:
        """The config.json dict, with id2label / label2id written out as transformers does."""
        out = super().to_dict()
        labels = self.id2label
        out["id2label"] = {str(k): v for k, v in labels.items()}
        out["label2id"] = {v: int(k) for k, v in labels.items()}
        out.pop("num_labels")
        return out

    def num_parameters(self) -> int:
        """Parameter count of BertModel with its pooler (the published 110M / 335M)."""
        d, f = self.hidden_size, self.intermediate_size
        emb = (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * d + 2 * d
        per_layer = 4 * (d * d + d) + 2 * 2 * d + (d * f + f) + (f * d + d)
        return emb + self.num_hidden_layers * per_layer + d * d + d

    @classmethod
    def tiny(cls) -> "BertConfig":
        """vocab 1000, d 128, 2 layers, 2 heads, ffn 256, 128 positions."""
        return cls(vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=256, max_position_embeddings=128)

    @classmethod
    def base(cls) -> "BertConfig":
        """bert-base-uncased, 110M."""
        return cls()

    @classmethod
    def large(cls) -> "BertConfig":
        """bert-large-uncased, 335M."""
        return cls(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)


class BertSelfAttention(nn.Module):
    """``query``, ``key``, ``value`` projections and bidirectional attention."""

    def __init__(self, config: BertConfig):
        super().__init__()
        d = config.hidden_size
        self.num_heads, self.head_dim = config.num_attention_heads, d // config.num_attention_heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, x, ctx: AttentionContext):
        """``[B, T, d] -> [B, T, d]`` (bidirectional; padded keys hidden)."""
        q = split_heads(self.query(x), self.num_heads, self.head_dim)       # [B, H, T, Dh]
        k = split_heads(self.key(x), self.num_heads, self.head_dim)
        v = split_heads(self.value(x), self.num_heads, self.head_dim)
        out = attend(q, k, v, ctx, causal=False, dropout_p=self.dropout_p if self.training else 0.0)
        return merge_heads(out)                                             # [B, T, d]


class _DenseNormResidual(nn.Module):
    """``LayerNorm(dropout(dense(h)) + residual)`` — HF's BertSelfOutput and BertOutput."""

    def __init__(self, in_features: int, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, h, residual):
        """``[B, T, in], [B, T, d] -> [B, T, d]``."""
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class BertAttention(nn.Module):
    """``self`` (attention) + ``output`` (dense, residual, LayerNorm)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        setattr(self, "self", BertSelfAttention(config))                   # HF's attribute is literally `self`
        self.output = _DenseNormResidual(config.hidden_size, config)

    def forward(self, x, ctx: AttentionContext):
        """``[B, T, d] -> [B, T, d]``."""
        return self.output(getattr(self, "self")(x, ctx), x)


class _Intermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)

    def forward(self, x):
        """``[B, T, d] -> [B, T, I]``."""
        return self.act(self.dense(x))


class BertLayer(nn.Module):
    """One post-norm encoder layer: ``attention``, ``intermediate``, ``output``."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = _Intermediate(config)
        self.output = _DenseNormResidual(config.intermediate_size, config)

    def forward(self, x, ctx: AttentionContext):
        """``[B, T, d] -> [B, T, d]``."""
        x = self.attention(x, ctx)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    """``layer``: the stack of BertLayers."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, x, ctx: AttentionContext):
        """``[B, T, d] -> [B, T, d]``."""
        for layer in self.layer:
            x = layer(x, ctx)
        return x


class BertPooler(nn.Module):
    """``tanh(dense(x[:, 0]))``: the first token's state, for classification."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x):
        """``[B, T, d] -> [B, d]``."""
        return self.dense(x[:, 0]).tanh()                                   # [B, T, d] -> [B, d]


def _labels(labels, shape, num_classes: int, allow_ignore: bool) -> np.ndarray:
    """Integer labels of ``shape`` inside ``[0, num_classes)`` (or -100 = ignored, for MLM)."""
    arr = np.asarray(labels.numpy() if isinstance(labels, axon.Tensor) else labels)
    if arr.dtype.kind not in "iu" or arr.shape != tuple(shape):
        raise InputError(f"labels must be integers of shape {list(shape)}, got {arr.dtype} {list(arr.shape)}")
    ok = (arr >= 0) & (arr < num_classes)
    if allow_ignore:
        ok |= arr == -100
    if not ok.all():
        raise InputError(f"labels must lie in [0, {num_classes})" + (" or be -100" if allow_ignore else "")
                         + f", got {int(arr[~ok][0])}")
    return arr.astype(np.int64)


def _mask_context(ids: np.ndarray, attention_mask) -> AttentionContext:
    if attention_mask is not None:
        m = np.asarray(attention_mask.numpy() if isinstance(attention_mask, axon.Tensor) else attention_mask)
        if m.shape != ids.shape:
            raise InputError(f"attention_mask shape {list(m.shape)} differs from input_ids {list(ids.shape)}")
    return AttentionContext.build(ids.shape[0], ids.shape[1], attention_mask)


class BertModel(PretrainedModel):
    """HF ``BertModel``: ``embeddings``, ``encoder``, and (``add_pooling_layer``) ``pooler``.

    ``m(input_ids, attention_mask=None, token_type_ids=None)`` -> last hidden state ``[B, T, d]``.
    (The encoder side of the skeleton: the same config protocol as :class:`~axon_llm.blocks.CausalLM`,
    no LM head; ``Bert`` is the same class.)
    """

    config_class = BertConfig
    architectures = {"BertModel": "bert"}
    hf_init = True

    def __init__(self, config: BertConfig | None = None, add_pooling_layer: bool = True):
        super().__init__()
        self.config = config = self.checked_config(config)
        self.embeddings = BertEmbedding(config.vocab_size, config.hidden_size, config.max_position_embeddings,
                                        config.type_vocab_size, config.layer_norm_eps, config.hidden_dropout_prob,
                                        config.pad_token_id)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None

    def forward_with_pooler(self, input_ids, attention_mask=None, token_type_ids=None):
        """``(last_hidden_state [B, T, d], pooler_output [B, d] or None)``."""
        ids = as_token_ids(input_ids, self.config.vocab_size)
        ctx = _mask_context(ids, attention_mask)
        x = self.encoder(self.embeddings(ids, token_type_ids), ctx)        # [B, T, d]
        return x, (self.pooler(x) if self.pooler is not None else None)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        """Last hidden state ``[B, T, d]``."""
        return self.forward_with_pooler(input_ids, attention_mask, token_type_ids)[0]


#: the contract's name of HF's BertModel: the same class
Bert = BertModel


class _PredictionTransform(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = activation(config.hidden_act)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x):
        """``[B, T, d] -> [B, T, d]``."""
        return self.LayerNorm(self.transform_act_fn(self.dense(x)))


class _LMPrediction(nn.Module):
    """``cls.predictions``: ``bias`` first (so it is the stored name), ``transform``, tied ``decoder``."""

    def __init__(self, config: BertConfig, word_embeddings):
        super().__init__()
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        self.bias = self.decoder.bias                                       # tied: decoder.bias is bias
        self.transform = _PredictionTransform(config)
        self.decoder.weight = word_embeddings.weight                        # tied to the input table

    def forward(self, x):
        """``[B, T, d] -> [B, T, V]``."""
        return self.decoder(self.transform(x))                              # [B, T, V]


class _MLMHead(nn.Module):
    def __init__(self, config: BertConfig, word_embeddings):
        super().__init__()
        self.predictions = _LMPrediction(config, word_embeddings)

    def forward(self, x):
        """``[B, T, d] -> [B, T, V]``."""
        return self.predictions(x)


class BertForMaskedLM(PretrainedModel):
    """HF ``BertForMaskedLM``: ``bert`` (no pooler) + ``cls.predictions`` (decoder tied to the embeddings)."""

    config_class = BertConfig
    architectures = {"BertForMaskedLM": "bert"}
    train_name = "bert"
    default_pad_token_id = 0                               # the embedding's padding row
    hf_init = True
    tied_keys = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")

    def __init__(self, config: BertConfig | None = None):
        super().__init__()
        self.config = config = self.checked_config(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.cls = _MLMHead(self.config, self.bert.embeddings.word_embeddings)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        """Token logits ``[B, T, V]``."""
        return self.cls(self.bert(input_ids, attention_mask, token_type_ids))

    def forward_mlm(self, input_ids, attention_mask=None, token_type_ids=None, labels=None):
        """Logits ``[B, T, V]``; with ``labels [B, T]`` (-100 = not masked) returns ``(logits, loss)``."""
        logits = self.forward(input_ids, attention_mask, token_type_ids)
        if labels is None:
            return logits
        labels = _labels(labels, logits.shape[:-1], logits.shape[-1], allow_ignore=True)
        v = logits.shape[-1]
        loss = F.cross_entropy(logits.reshape(-1, v), labels.reshape(-1), ignore_index=-100)
        return logits, loss



class BertForSequenceClassification(PretrainedModel):
    """HF ``BertForSequenceClassification``: ``bert`` (with pooler) + ``dropout`` + ``classifier``."""

    config_class = BertConfig
    architectures = {"BertForSequenceClassification": "bert"}
    hf_init = True

    def __init__(self, config: BertConfig | None = None, num_labels: int | None = None):
        """``num_labels`` (as the crate's ``BertForSequenceClassification::new(config, num_labels)``)
        overrides ``config.num_labels`` and resets its default label names."""
        super().__init__()
        config = self.checked_config(config)
        if num_labels is not None:
            config = dataclasses.replace(config, num_labels=num_labels, id2label=None)
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=True)
        p = self.config.classifier_dropout
        self.dropout = nn.Dropout(self.config.hidden_dropout_prob if p is None else p)
        self.classifier = nn.Linear(self.config.hidden_size, self.config.num_labels)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        """Class logits ``[B, num_labels]``."""
        _, pooled = self.bert.forward_with_pooler(input_ids, attention_mask, token_type_ids)
        return self.classifier(self.dropout(pooled))

    def forward_classification(self, input_ids, attention_mask=None, token_type_ids=None, labels=None):
        """Class logits ``[B, num_labels]``; with ``labels [B]`` returns ``(logits, loss)``.

        Cross-entropy over int labels; with ``num_labels == 1`` (regression, as transformers) the
        mean squared error against float labels.
        """
        logits = self.forward(input_ids, attention_mask, token_type_ids)
        if labels is None:
            return logits
        if self.config.num_labels == 1:
            target = np.asarray(labels.numpy() if isinstance(labels, axon.Tensor) else labels, dtype=logits.dtype)
            if target.shape != (logits.shape[0],):
                raise InputError(f"labels must have shape [{logits.shape[0]}], got {list(target.shape)}")
            return logits, F.mse_loss(logits.reshape(-1), axon.tensor(target))
        labels = _labels(labels, logits.shape[:1], logits.shape[-1], allow_ignore=False)
        return logits, F.cross_entropy(logits, labels.reshape(-1))
