"""BERT: BertModel / BertForMaskedLM / BertForSequenceClassification parity, padding masks, training."""

from __future__ import annotations

import numpy as np
import pytest

import axon
import axon.nn.functional as F
from axon_llm import InputError
from axon_llm.models import BertConfig
from axon_llm.models import Bert, BertForMaskedLM, BertForSequenceClassification

from tests.axon_llm.model_checks import check_bert_parity, check_gradcheck, check_trains, load_case

CASES = ["bert", "bert_mlm", "bert_cls", "bert_rand0", "bert_rand1"]


def micro(**kw) -> BertConfig:
    base = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
                max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    base.update(kw)
    return BertConfig(**base)


@pytest.mark.parametrize("case", CASES)
def test_matches_transformers_with_and_without_padding(case):
    model, e = load_case(case)
    if "pooler_output" in e:
        assert model.pooler is not None
    check_bert_parity(model, case)


def test_heads_and_ties():
    mlm = BertForMaskedLM(micro())
    pred = mlm.cls.predictions
    assert pred.decoder.weight is mlm.bert.embeddings.word_embeddings.weight
    assert pred.decoder.bias is pred.bias
    names = dict(mlm.named_parameters())
    assert "cls.predictions.bias" in names and "cls.predictions.decoder.weight" not in names
    assert mlm.bert.pooler is None
    cls = BertForSequenceClassification(micro(num_labels=3))
    assert cls(np.array([[1, 2, 3]])).shape == (1, 3)


def test_regression_head_uses_mse():
    model = BertForSequenceClassification(micro(num_labels=1))
    logits, loss = model.forward_classification(np.array([[1, 2], [3, 4]]), labels=np.array([0.5, -1.0]))
    expected = ((logits.numpy().ravel() - np.array([0.5, -1.0])) ** 2).mean()
    assert abs(loss.item() - expected) < 1e-6


def test_padding_does_not_change_real_tokens():
    model = Bert(micro()).eval()
    ids = np.array([[5, 6, 7, 8, 0, 0]])
    mask = np.array([[1, 1, 1, 1, 0, 0]])
    with axon.no_grad():
        padded = model(ids, attention_mask=mask).numpy()
        alone = model(ids[:, :4]).numpy()
    np.testing.assert_allclose(padded[:, :4], alone, atol=1e-5)


@pytest.mark.parametrize("kind", ["model", "mlm", "cls"])
def test_every_parameter_trains(kind):
    if kind == "model":
        model = Bert(micro())
        loss = lambda m, ids: (m.forward_with_pooler(ids)[1] ** 2).mean() + (m(ids) ** 2).mean()
    elif kind == "mlm":
        model = BertForMaskedLM(micro())
        loss = lambda m, ids: m.forward_mlm(ids, labels=ids)[1]
    else:
        model = BertForSequenceClassification(micro(num_labels=3))
        loss = lambda m, ids: m.forward_classification(ids, labels=np.array([0, 2]))[1]
    check_trains(model, 40, loss_fn=loss)


def test_gradcheck_float64_with_padding():
    ids = np.array([[3, 4, 5, 0]])
    mask = np.array([[1, 1, 1, 0]])
    model = BertForSequenceClassification(micro(hidden_size=8, num_hidden_layers=1, intermediate_size=8,
                                                num_labels=2))
    check_gradcheck(model, lambda m: F.cross_entropy(m(ids, attention_mask=mask), np.array([1])))


def test_bad_inputs():
    model = Bert(micro())
    with pytest.raises(InputError, match="16 learned positions"):
        model(np.zeros((1, 17), dtype=np.int64))
    with pytest.raises(InputError, match="outside the vocabulary"):
        model(np.array([[40]]))
    with pytest.raises(InputError, match="token_type_ids"):
        model(np.array([[1, 2]]), token_type_ids=np.array([[0, 2]]))
    with pytest.raises(InputError, match="attention_mask"):
        model(np.array([[1, 2]]), attention_mask=np.array([[1, 1, 1]]))
    cls = BertForSequenceClassification(micro(num_labels=3))
    with pytest.raises(InputError, match=r"labels must lie in \[0, 3\)"):
        cls.forward_classification(np.array([[1, 2]]), labels=np.array([3]))
    mlm = BertForMaskedLM(micro())
    with pytest.raises(InputError, match="shape"):
        mlm.forward_mlm(np.array([[1, 2]]), labels=np.array([1, 2]))
    _, loss = mlm.forward_mlm(np.array([[1, 2]]), labels=np.array([[-100, 2]]))
    assert np.isfinite(loss.item())
