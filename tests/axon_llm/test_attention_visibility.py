"""One visibility rule on every attention path: the kernels, F.scaled_dot_product_attention's
three paths and every model attention class, over causal x window x left padding x cache
offsets, each equal to one reference (`naive_attention`, the rule spelled out key by key)."""

from __future__ import annotations

import numpy as np
import pytest

import axon
import axon.nn.functional as F
import axon_kernels as kernels
from axon_kernels._jit import jit_disabled
from axon_llm.attention import AttentionContext, MultiHeadAttention, attend
from axon_llm.cache import KVCache
from axon_llm.models import BertConfig, GPT2Config, Phi3Config, PhiConfig
from axon_llm.models.bert import BertSelfAttention
from axon_llm.models.chimera import ChimeraConfig, DifferentialAttention
from axon_llm.models.gpt2 import GPT2Attention
from axon_llm.models.hydra import HydraConfig, WindowAttention, WindowKVCache
from axon_llm.models.phi import Phi3Attention, PhiAttention
from axon_llm.models.trident import BitNetAttention, TridentConfig
from axon_llm.rope import RotaryEmbedding

from tests.kernels.test_attention import naive_attention

WINDOWS = (None, 1, 3)
PAD = 3             # row 1 is left-padded by PAD slots
N = 9               # slots in all
CHUNKS = {"no cache": ((0, N),), "cache": ((0, 5), (5, 6), (6, 7), (7, N))}  # prefill, decode steps, a chunk


def _inputs(tq, tk, seed):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, 4, tq, 6))
    k, v = rng.standard_normal((2, 2, tk, 6)), rng.standard_normal((2, 2, tk, 6))
    key_mask = np.ones((2, tk), bool)
    key_mask[1, :PAD] = False
    return q, k, v, key_mask


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("tq, tk", [(7, 7), (1, 7), (3, 7)])
def test_every_kernel_and_functional_path_equals_the_reference(causal, window, padded, tq, tk):
    q, k, v, key_mask = _inputs(tq, tk, tq * 10 + tk)
    key_mask = key_mask if padded else None
    want, _ = naive_attention(q, k, v, causal, window, 0.4, key_mask)
    got = {
        "blas kernel": kernels.blas_attention(q, k, v, causal, window, 0.4, key_mask, block_q=2),
        "blas reference": kernels.blas_attention_ref(q, k, v, causal, window, 0.4, key_mask),
        "composite": F._sdpa_reference(*map(axon.tensor, (q, k, v)), None, 0.0, causal, 0.4, window, key_mask).numpy(),
    }
    with axon.no_grad():
        got["sdpa under no_grad"] = F.scaled_dot_product_attention(
            *map(axon.tensor, (q, k, v)), is_causal=causal, scale=0.4, window=window, key_mask=key_mask).numpy()
    grad_in = [axon.tensor(x, requires_grad=True) for x in (q, k, v)]
    out = F.scaled_dot_product_attention(*grad_in, is_causal=causal, scale=0.4, window=window, key_mask=key_mask)
    assert out.requires_grad
    got["sdpa with a gradient"] = out.detach().numpy()
    if key_mask is None:  # the flash kernel takes no key mask; F routes padded calls elsewhere
        got["flash kernel"] = kernels.flash_attention(q, k, v, causal, window, 0.4, 2, 3)[0]
        if not jit_disabled():
            got["flash kernel (numba)"] = kernels.attention.flash_attention_nb(q, k, v, causal, window, 0.4, 2, 3)[0]
    for name, value in got.items():
        np.testing.assert_allclose(value, want, rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("window", [None, 80])
def test_sdpa_flash_path_equals_the_reference_with_a_cache_offset(window):
    """Big enough for F to pick the flash kernel (with a gradient), queries the last Tq of Tk."""
    from axon import kernel_ops

    tq, tk = 256, 512
    assert tq * tk >= kernel_ops.FLASH_MIN_SCORES
    rng = np.random.default_rng(1)
    q = rng.standard_normal((1, 2, tq, 4))
    k, v = rng.standard_normal((1, 1, tk, 4)), rng.standard_normal((1, 1, tk, 4))
    out = F.scaled_dot_product_attention(*(axon.tensor(x, requires_grad=True) for x in (q, k, v)),
                                         is_causal=True, window=window)
    assert out._ctx.fn is kernel_ops.FlashAttention
    want = kernels.blas_attention_ref(q, k, v, True, window)
    np.testing.assert_allclose(out.detach().numpy(), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(want[:, :, ::37], naive_attention(q, k, v, True, window, None)[0][:, :, ::37],
                               rtol=1e-10, atol=1e-12)


def test_a_window_without_causal_is_causal_on_a_padded_batch_too():
    """The issue's example: attend(causal=False, window=2) on a padded batch saw later keys."""
    q, k, v, key_mask = _inputs(5, 5, 3)
    ctx = AttentionContext(positions=None, key_mask=key_mask, cache=None, start=0, new_mask=None)
    plain = AttentionContext(positions=None, key_mask=None, cache=None, start=0, new_mask=None)
    with axon.no_grad():
        padded = attend(*map(axon.tensor, (q, k, v)), ctx, causal=False, window=2).numpy()
        unpadded = attend(*map(axon.tensor, (q, k, v)), plain, causal=False, window=2).numpy()
    np.testing.assert_allclose(padded, naive_attention(q, k, v, True, 2, None, key_mask)[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(padded[0], unpadded[0], rtol=1e-10, atol=1e-12)  # row 0 has no padding


# ------------------------------------------------------------------ every model attention class


def _modules():
    """(name, module, causal, window, how it is called) for every attention class of the models."""
    axon.manual_seed(0)
    phi = PhiConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                    max_position_embeddings=32, partial_rotary_factor=0.5)
    phi3 = Phi3Config(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=32)
    gpt2 = GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=1, n_head=2)
    bert = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
                      max_position_embeddings=32)
    trident = TridentConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                            num_attention_heads=4, num_key_value_heads=2)
    chimera = ChimeraConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            num_local_experts=3, num_experts_per_tok=2, intermediate_size=24)
    hydra = HydraConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, state_size=4,
                        intermediate_size=32, sliding_window=3)
    return [
        ("llama", MultiHeadAttention(16, 4, 2, 4, layer_idx=0, rotary=RotaryEmbedding(4, 32)), True, None, "ctx"),
        ("mistral (window 3)", MultiHeadAttention(16, 4, 2, 4, layer_idx=0, rotary=RotaryEmbedding(4, 32),
                                                  sliding_window=3), True, 3, "ctx"),
        ("phi", PhiAttention(phi, 0, RotaryEmbedding(4, 32)), True, None, "ctx"),
        ("phi3", Phi3Attention(phi3, 0, RotaryEmbedding(4, 32)), True, None, "ctx"),
        ("gpt2", GPT2Attention(gpt2, 0), True, None, "ctx"),
        ("bert", BertSelfAttention(bert), False, None, "encoder"),
        ("bitnet", BitNetAttention(trident, 0, RotaryEmbedding(trident.head_dim, 32)), True, None, "ctx"),
        ("differential", DifferentialAttention(chimera, 0, RotaryEmbedding(chimera.head_dim // 2, 32)), True, None, "ctx"),
        ("hydra window", WindowAttention(hydra), True, 3, "ring"),
    ]


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("chunks", list(CHUNKS), ids=list(CHUNKS))
@pytest.mark.parametrize("case", range(len(_modules())), ids=[m[0] for m in _modules()])
def test_every_attention_class_applies_the_rule(case, chunks, grad, monkeypatch):
    """Each attention call a module makes (through F.scaled_dot_product_attention) equals the
    reference on the same q, k, v with the rule the test knows: the module's causal/window,
    the batch's left padding, and the keys being the last Tk of the slots fed so far."""
    name, module, causal, window, kind = _modules()[case]
    if kind == "encoder" and chunks == "cache":
        pytest.skip("an encoder (BERT) takes no cache")
    module.eval()
    mask = np.ones((2, N), np.int64)
    mask[1, :PAD] = 0
    x = np.random.default_rng(case).standard_normal((2, N, 16)).astype(np.float32)
    real = F.scaled_dot_product_attention
    seen = {"end": 0, "calls": 0}

    def checked(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False, window=None,
                key_mask=None):
        out = real(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                   enable_gqa=enable_gqa, window=window, key_mask=key_mask)
        tk, end = k.shape[2], seen["end"]
        want, _ = naive_attention(*(np.asarray(t.data, np.float64) for t in (q, k, v)), causal, expected_window,
                                  scale, mask[:, end - tk:end].astype(bool))
        np.testing.assert_allclose(out.detach().numpy(), want, rtol=2e-4, atol=2e-5, err_msg=name)
        assert out.requires_grad == grad
        seen["calls"] += 1
        return out

    expected_window = window
    monkeypatch.setattr(F, "scaled_dot_product_attention", checked)
    if grad:
        for p in module.parameters():
            p.requires_grad = True
    cache = None
    if kind == "ctx" and chunks == "cache":
        cache = KVCache(1, 2, N, getattr(module, "num_kv_heads", module.num_heads), module.head_dim)
    ring = WindowKVCache(2, module.num_kv_heads, window, module.head_dim) if kind == "ring" and chunks == "cache" else None
    with axon.set_grad_enabled(grad):
        for start, end in CHUNKS[chunks]:
            seen["end"] = end
            xs = axon.tensor(x[:, start:end])
            if kind == "ring":
                module(xs, cache=ring, mask=mask[:, start:end].astype(np.float32))
            else:
                ctx = AttentionContext.build(2, end - start, mask[:, :end] if cache is not None else mask[:, start:end],
                                             cache)
                module(xs, ctx)
                ctx.finish()
    assert seen["calls"] >= len(CHUNKS[chunks])
