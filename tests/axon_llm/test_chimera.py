"""Chimera (differential attention + sparse MoE): the attention against a NumPy transcription of
the paper's formula, the load-balancing loss by hand and by central differences, gradients to
every expert / router / lambda vector, causality, cached decoding, learning, configs."""

from __future__ import annotations

import math

import numpy as np
import pytest

import axon
from axon_llm import ConfigError, InputError
from axon_llm.attention import AttentionContext
from axon_llm.models.chimera import ChimeraConfig, ChimeraModel, DifferentialAttention, lambda_init_fn
from axon_llm.moe import load_balancing_loss
from axon_llm.rope import RotaryEmbedding

from tests.axon_llm.model_checks import (
    check_cache_matches_full, check_causal, check_every_parameter_gets_gradient, check_gradients_by_central_differences, check_learns, logits_np,
)


@pytest.fixture(scope="module")
def tiny():
    axon.manual_seed(0)
    return ChimeraModel(ChimeraConfig.tiny())


# ------------------------------------------------------------------ differential attention
def test_lambda_init_schedule():
    assert lambda_init_fn(0) == pytest.approx(0.2)
    assert lambda_init_fn(1) == pytest.approx(0.8 - 0.6 * math.exp(-0.3))
    assert lambda_init_fn(40) == pytest.approx(0.8, abs=1e-5)


def _rope_np(x, cos, sin):
    h = x.shape[-1] // 2
    return x * cos + np.concatenate([-x[..., h:], x[..., :h]], axis=-1) * sin


def test_differential_attention_matches_the_formula():
    """RMSNorm((softmax(Q1 K1^T / sqrt(d/2)) - lambda softmax(Q2 K2^T / sqrt(d/2))) V) (1 - lambda_init),
    causal, RoPE on each half, written out in NumPy (float64) for layer index 2 with GQA."""
    cfg = ChimeraConfig.tiny().replace(num_key_value_heads=2)
    rotary = RotaryEmbedding(cfg.head_dim // 2, cfg.max_position_embeddings, cfg.rope_theta)
    axon.manual_seed(3)
    attn = DifferentialAttention(cfg, layer_idx=2, rotary=rotary)
    rng = np.random.default_rng(0)
    B, T, d, H, Hkv, Dh = 2, 7, cfg.hidden_size, cfg.num_attention_heads, 2, cfg.head_dim
    for p in attn.parameters():                              # non-trivial norm weight and lambdas
        p.data = (p.data + 0.1 * rng.standard_normal(p.shape)).astype(np.float32)
    x = rng.standard_normal((B, T, d)).astype(np.float32)
    ctx = AttentionContext.build(B, T)
    got = logits_np(attn, axon.tensor(x), ctx=ctx)

    W = {n: p.numpy().astype(np.float64) for n, p in attn.named_parameters()}
    half = Dh // 2
    q = (x @ W["q_proj.weight"].T).reshape(B, T, H, Dh).transpose(0, 2, 1, 3)
    k = (x @ W["k_proj.weight"].T).reshape(B, T, Hkv, Dh).transpose(0, 2, 1, 3)
    v = (x @ W["v_proj.weight"].T).reshape(B, T, Hkv, Dh).transpose(0, 2, 1, 3)
    k, v = np.repeat(k, H // Hkv, axis=1), np.repeat(v, H // Hkv, axis=1)
    cos, sin = rotary.cos_sin(np.broadcast_to(np.arange(T), (B, T)))
    causal = np.tril(np.ones((T, T), bool))

    def softmax_attn(qh, kh):
        s = qh @ kh.transpose(0, 1, 3, 2) / math.sqrt(half)
        s = np.where(causal, s, -np.inf)
        e = np.exp(s - s.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    a1 = softmax_attn(_rope_np(q[..., :half], cos, sin), _rope_np(k[..., :half], cos, sin))
    a2 = softmax_attn(_rope_np(q[..., half:], cos, sin), _rope_np(k[..., half:], cos, sin))
    lam_init = 0.8 - 0.6 * math.exp(-0.3 * 2)
    lam = (math.exp(W["lambda_q1"] @ W["lambda_k1"]) - math.exp(W["lambda_q2"] @ W["lambda_k2"]) + lam_init)
    o = (a1 - lam * a2) @ v                                   # [B, H, T, Dh]
    o = o / np.sqrt((o ** 2).mean(-1, keepdims=True) + 1e-5) * W["subln.weight"] * (1 - lam_init)
    want = o.transpose(0, 2, 1, 3).reshape(B, T, H * Dh) @ W["o_proj.weight"].T
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ load-balancing loss
def test_load_balancing_loss_by_hand():
    # 4 tokens, 3 experts, top-1. softmax rows chosen as exact probabilities via log().
    p = np.array([[0.7, 0.2, 0.1],
                  [0.6, 0.3, 0.1],
                  [0.1, 0.8, 0.1],
                  [0.2, 0.2, 0.6]])
    logits = axon.tensor(np.log(p))
    # top-1 experts: 0, 0, 1, 2 -> f = [2/4, 1/4, 1/4]; P = column means = [0.4, 0.375, 0.225]
    want = 3 * (0.5 * 0.4 + 0.25 * 0.375 + 0.25 * 0.225)
    assert load_balancing_loss(logits, top_k=1).item() == pytest.approx(want, rel=1e-6)
    # top-2: slots 0,1 | 0,1 | 1,(0 or 2: tie -> lower index 0) | 2,(0/1 tie -> 0)
    # counts [4, 3, 1] over 8 slots
    want2 = 3 * (4 / 8 * 0.4 + 3 / 8 * 0.375 + 1 / 8 * 0.225)
    assert load_balancing_loss(logits, top_k=2).item() == pytest.approx(want2, rel=1e-6)


def test_load_balancing_loss_gradient_matches_central_differences():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((6, 4))                          # float64, no ties in the top-2
    x = axon.tensor(z, requires_grad=True)
    load_balancing_loss(x, top_k=2).backward()
    analytic = x.grad.numpy()
    eps = 1e-6
    numeric = np.zeros_like(z)
    for i in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[i] += eps
        zm[i] -= eps
        numeric[i] = (load_balancing_loss(axon.tensor(zp), 2).item()
                      - load_balancing_loss(axon.tensor(zm), 2).item()) / (2 * eps)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)
    assert np.abs(analytic).max() > 1e-3                     # a real, non-constant loss


def test_forward_with_loss_averages_the_layers(tiny):
    ids = np.random.default_rng(0).integers(0, tiny.config.vocab_size, (2, 9))
    with axon.no_grad():
        logits, lb = tiny.forward_with_loss(ids, ids)
        _, router_logits = tiny.forward_with_router_logits(ids)
        per_layer = [load_balancing_loss(r, tiny.config.num_experts_per_tok).item() for r in router_logits]
        np.testing.assert_allclose(logits.numpy(), tiny(ids).numpy(), rtol=0, atol=1e-6)
    assert len(per_layer) == tiny.config.num_hidden_layers
    assert lb.item() == pytest.approx(np.mean(per_layer), rel=1e-6)
    assert 0.0 < lb.item() <= tiny.config.num_local_experts   # E * sum_i f_i P_i with sum f = sum P = 1
    with pytest.raises(InputError, match="labels"):
        tiny.forward_with_loss(ids, ids[:, :3])


# ------------------------------------------------------------------ family checks
def test_causal(tiny):
    check_causal(tiny, tiny.config.vocab_size)


def test_every_parameter_gets_a_gradient(tiny):
    # lambda vectors, the router of every layer and every expert included
    ids = np.random.default_rng(0).integers(0, tiny.config.vocab_size, (2, 16))
    names = [n for n, _ in tiny.named_parameters()]
    assert any("lambda_q1" in n for n in names) and any("block_sparse_moe.gate" in n for n in names)
    assert sum("experts.3.w2" in n for n in names) == tiny.config.num_hidden_layers
    check_every_parameter_gets_gradient(tiny, tiny.loss(ids, np.roll(ids, -1, axis=1)))


def test_gradients_match_central_differences():
    axon.manual_seed(0)
    model = ChimeraModel(ChimeraConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       num_local_experts=3, num_experts_per_tok=2, intermediate_size=24))
    check_gradients_by_central_differences(model, model.config.vocab_size)


def test_cached_decoding_equals_full_forward(tiny):
    check_cache_matches_full(tiny, tiny.config.vocab_size)


def test_left_padded_batch_generates_like_the_unpadded_prompt(tiny):
    rng = np.random.default_rng(3)
    prompt = rng.integers(1, tiny.config.vocab_size, (1, 6))
    batch = np.concatenate([np.concatenate([np.zeros((1, 3), np.int64), prompt], axis=1),
                            rng.integers(1, tiny.config.vocab_size, (1, 9))], axis=0)
    mask = np.ones_like(batch)
    mask[0, :3] = 0
    solo = tiny.generate(prompt, max_new_tokens=6, eos_token_id=None)   # both rows run all 6 steps
    both = tiny.generate(batch, attention_mask=mask, max_new_tokens=6, eos_token_id=None)
    np.testing.assert_array_equal(both[0, 3:], solo[0])


def test_tiny_learns():
    axon.manual_seed(0)
    model = ChimeraModel(ChimeraConfig.tiny())
    # the full training loss: next-token CE + 0.01 * load-balancing loss
    check_learns(model, model.config.vocab_size, steps=20, lr=1e-2,
                 loss_fn=lambda m, ids: m.loss(ids[:, :-1], ids[:, 1:]))


def test_save_pretrained_round_trip(tiny, tmp_path):
    from axon_llm.auto import from_pretrained

    tiny.save_pretrained(tmp_path)
    again = from_pretrained(tmp_path)
    assert isinstance(again, ChimeraModel)
    ids = np.random.default_rng(0).integers(0, tiny.config.vocab_size, (2, 9))
    np.testing.assert_array_equal(logits_np(again, ids), logits_np(tiny, ids))


# ------------------------------------------------------------------ configs
def test_presets():
    rows = [  # vocab / d / layers / heads / experts / top-k / ffn / ctx
        (ChimeraConfig.default_2b(), (32000, 512, 16, 8, 8, 2, 2048, 2048)),
        (ChimeraConfig.small(), (32000, 256, 6, 4, 8, 2, 1024, 512)),
        (ChimeraConfig.tiny(), (1000, 64, 2, 4, 4, 2, 256, 128)),
    ]
    for c, want in rows:
        assert (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_local_experts,
                c.num_experts_per_tok, c.intermediate_size, c.max_position_embeddings) == want


@pytest.mark.parametrize("preset", [ChimeraConfig.default_2b, ChimeraConfig.small, ChimeraConfig.tiny])
def test_parameter_count_is_arithmetic_and_build_is_lazy(preset):
    c = preset()
    params = list(ChimeraModel(c).parameters())
    assert sum(p.numel() for p in params) == c.num_parameters()
    assert not any(p.is_materialized for p in params)
    assert c.num_active_parameters() < c.num_parameters()


def test_bad_configs_are_rejected():
    with pytest.raises(ConfigError, match="head_dim"):
        ChimeraConfig.tiny().replace(hidden_size=60, num_attention_heads=4)     # head_dim 15, odd
    with pytest.raises(ConfigError, match="top_k"):
        ChimeraConfig.tiny().replace(num_experts_per_tok=5)
    with pytest.raises(ConfigError, match="num_key_value_heads"):
        ChimeraConfig.tiny().replace(num_key_value_heads=3)
