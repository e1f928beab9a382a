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

import numpy as np

import axon
import axon.nn as nn
import axon.nn.functional as F

from axon_llm.attention import AttentionContext, attend, merge_heads, split_heads
from axon_llm.blocks import activation
from axon_llm.config import BertConfig
from axon_llm.embeddings import BertEmbedding, as_token_ids
from axon_llm.errors import ConfigError, InputError

__all__ = ["BertConfig", "BertSelfAttention", "BertAttention", "BertLayer", "BertEncoder", "BertPooler", "Bert",
           "BertForMaskedLM", "BertForSequenceClassification"]


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


class Bert(nn.Module):
    """HF ``BertModel``: ``embeddings``, ``encoder``, and (``add_pooling_layer``) ``pooler``.

    ``m(input_ids, attention_mask=None, token_type_ids=None)`` -> last hidden state ``[B, T, d]``.
    """

    config_class = BertConfig
    hf_architecture = "BertModel"

    def __init__(self, config: BertConfig | None = None, add_pooling_layer: bool = True):
        super().__init__()
        config = BertConfig() if config is None else config
        if not isinstance(config, BertConfig):
            raise ConfigError(f"Bert needs a BertConfig, got {type(config).__name__}")
        self.config = config
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

    def tied_weights(self) -> tuple[str, ...]:
        """No tied parameters."""
        return ()

    def save_pretrained(self, directory):
        """Write ``config.json`` + ``model.safetensors`` that transformers loads back."""
        from axon_llm.loaders.safetensors import save_pretrained

        return save_pretrained(self, directory)


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


class BertForMaskedLM(nn.Module):
    """HF ``BertForMaskedLM``: ``bert`` (no pooler) + ``cls.predictions`` (decoder tied to the embeddings)."""

    config_class = BertConfig
    hf_architecture = "BertForMaskedLM"
    tied_keys = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")

    def __init__(self, config: BertConfig | None = None):
        super().__init__()
        self.bert = Bert(config, add_pooling_layer=False)
        self.config = self.bert.config
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

    def tied_weights(self) -> tuple[str, ...]:
        """The decoder weight and bias alias the embeddings and ``cls.predictions.bias``."""
        return self.tied_keys

    save_pretrained = Bert.save_pretrained


class BertForSequenceClassification(nn.Module):
    """HF ``BertForSequenceClassification``: ``bert`` (with pooler) + ``dropout`` + ``classifier``."""

    config_class = BertConfig
    hf_architecture = "BertForSequenceClassification"

    def __init__(self, config: BertConfig | None = None, num_labels: int | None = None):
        """``num_labels`` (as the crate's ``BertForSequenceClassification::new(config, num_labels)``)
        overrides ``config.num_labels`` and resets its default label names."""
        super().__init__()
        if num_labels is not None:
            config = dataclasses.replace(config or BertConfig(), num_labels=num_labels, id2label=None)
        self.bert = Bert(config, add_pooling_layer=True)
        self.config = self.bert.config
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

    def tied_weights(self) -> tuple[str, ...]:
        """No tied parameters."""
        return ()

    save_pretrained = Bert.save_pretrained
