"""axon.nn: lazy parameters, Module bookkeeping, state dicts, and the functional ops checked
against plain-NumPy definitions (values) and float64 central differences (gradients)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import axon
import axon.nn as nn
import axon.nn.functional as F
from axon.testing import assert_close, gradcheck
from axon_kernels.testing import arrays

FAST = settings(max_examples=20, deadline=None)
rng = np.random.default_rng(0)


def randn(*shape):
    return rng.standard_normal(shape)


# --------------------------------------------------------------------------- lazy parameters


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = nn.RMSNorm(d)
        self.proj = nn.Linear(d, 2 * d, bias=False)
        self.out = nn.Linear(2 * d, d)

    def forward(self, x):
        return x + self.out(F.silu(self.proj(self.norm(x))))


class Tiny(nn.Module):
    def __init__(self, vocab=11, d=8, n=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList([Block(d) for _ in range(n)])
        self.ln_f = nn.LayerNorm(d)
        self.register_buffer("scale", axon.ones(1))

    def forward(self, ids):
        h = self.embed(ids)
        for layer in self.layers:
            h = layer(h)
        return self.ln_f(h) @ self.embed.weight.T * self.scale


def test_huge_model_allocates_nothing_until_used():
    big = nn.Linear(100_000, 100_000)  # 10^10 parameters: 40 GB if allocated
    assert big.weight.shape == (100_000, 100_000) and big.weight.numel() == 10**10
    assert not big.weight.is_materialized
    assert big.num_parameters() == 10**10 + 10**5
    assert "lazy" in repr(big.weight)


def test_first_use_materializes_with_torch_default_init():
    axon.manual_seed(0)
    lin = nn.Linear(16, 4)
    y = lin(axon.ones(2, 16))
    assert lin.weight.is_materialized and y.shape == (2, 4)
    bound = 1 / math.sqrt(16)
    assert np.abs(lin.weight.data).max() <= bound and lin.weight.data.std() > bound / 4
    ln = nn.LayerNorm(5).materialize()
    assert np.array_equal(ln.weight.data, np.ones(5, np.float32)) and np.array_equal(ln.bias.data, np.zeros(5))


def test_init_functions_work_on_lazy_and_materialized_params():
    lin = nn.Linear(50, 40)
    nn.init.normal_(lin.weight, std=0.02)
    nn.init.zeros_(lin.bias)
    assert not lin.weight.is_materialized
    lin.materialize()
    assert abs(lin.weight.data.std() - 0.02) < 0.005 and not lin.bias.data.any()
    nn.init.ones_(lin.bias)
    assert np.all(lin.bias.data == 1)
    nn.init.xavier_uniform_(lin.weight)
    assert np.abs(lin.weight.data).max() <= math.sqrt(6 / 90)
    nn.init.kaiming_normal_(lin.weight)
    assert lin.weight.dtype == np.float32


def test_load_state_dict_assigns_without_materializing_random_arrays():
    src = Tiny().materialize()
    sd = src.state_dict()
    dst = Tiny()
    calls = []
    for p in dst.parameters():
        p.set_init(lambda arr, rng: calls.append(1))
    result = dst.load_state_dict(sd)
    assert result == nn.LoadResult([], [], [])
    assert calls == []  # no initialiser ran
    for k, v in dst.state_dict().items():
        assert np.array_equal(v, sd[k])
    ids = np.array([[1, 2, 3]])
    assert_close(dst(ids), src(ids))


def test_strict_load_lists_missing_unexpected_and_mismatched():
    sd = Tiny().materialize().state_dict()
    sd.pop("layers.1.out.bias")
    sd["extra.weight"] = np.zeros(2)
    sd["ln_f.weight"] = np.zeros(9, np.float32)
    dst = Tiny()
    with pytest.raises(ValueError) as err:
        dst.load_state_dict(sd)
    msg = str(err.value)
    assert "layers.1.out.bias" in msg and "extra.weight" in msg
    assert "ln_f.weight" in msg and "(8,)" in msg and "(9,)" in msg
    assert not dst.embed.weight.is_materialized  # nothing was loaded
    res = dst.load_state_dict(sd, strict=False)
    assert res.missing_keys == ["layers.1.out.bias"] and res.unexpected_keys == ["extra.weight"]
    assert res.mismatched == [("ln_f.weight", (8,), (9,))]


def test_load_casts_dtype_and_copies_read_only_arrays():
    lin = nn.Linear(2, 2)
    w = np.ones((2, 2))  # float64 -> cast
    b = np.ones(2, np.float32)
    b.setflags(write=False)
    lin.load_state_dict({"weight": w, "bias": axon.tensor(b)})
    assert lin.weight.dtype == np.float32 and lin.bias.data.flags.writeable
    same = np.full((2, 2), 3.0, np.float32)
    lin.load_state_dict({"weight": same, "bias": np.zeros(2, np.float32)})
    assert lin.weight.data is not same and np.array_equal(lin.weight.data, same)  # copied, like torch
    lin.load_state_dict({"weight": same, "bias": np.zeros(2, np.float32)}, assign=True)
    assert lin.weight.data is same  # adopted: no second copy of a checkpoint


def test_module_traversal_train_eval_zero_grad_apply():
    m = Tiny()
    names = [n for n, _ in m.named_parameters()]
    assert names[:3] == ["embed.weight", "layers.0.norm.weight", "layers.0.proj.weight"]
    assert "scale" in m.state_dict() and "scale" not in names
    assert [n for n, _ in m.named_modules()][:3] == ["", "embed", "layers"]
    assert len(list(m.children())) == 3
    m.eval()
    assert not any(mod.training for mod in m.modules())
    m.train()
    out = m(np.array([[1, 2]]))
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())
    seen = []
    m.apply(lambda mod: seen.append(type(mod).__name__))
    assert seen[-1] == "Tiny" and seen.count("Linear") == 4


def test_tied_weights_are_one_parameter_but_two_state_keys():
    m = nn.Module()
    m.a = nn.Linear(3, 3, bias=False)
    m.b = nn.Linear(3, 3, bias=False)
    m.b.weight = m.a.weight
    assert len(list(m.parameters())) == 1
    assert list(m.state_dict()) == ["a.weight", "b.weight"]


def test_repr_is_a_tree():
    text = repr(Tiny(n=1))
    assert text.splitlines()[0] == "Tiny("
    assert "(layers): ModuleList(" in text and "(proj): Linear(in_features=8, out_features=16, bias=False)" in text
    assert "(embed): Embedding(11, 8)" in text


def test_module_to_dtype_lazy_and_materialized():
    m = Tiny()
    m.to(axon.float64)
    assert all(p.dtype == np.float64 for p in m.parameters()) and not m.embed.weight.is_materialized
    out = m(np.array([[0, 1]]))
    assert out.dtype == np.float64
    m.float()
    assert m.embed.weight.data.dtype == np.float32 and m.scale.dtype == np.float32


def test_sequential_module_dict_and_list():
    seq = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
    assert seq(axon.ones(3, 2)).shape == (3, 1) and len(seq) == 3
    md = nn.ModuleDict({"a": nn.Linear(2, 2)})
    md["b"] = nn.Identity()
    assert list(md.keys()) == ["a", "b"] and "a" in md
    ml = nn.ModuleList([nn.Identity()])
    ml.append(nn.Linear(1, 1))
    assert len(ml) == 2 and isinstance(ml[-1], nn.Linear) and len(ml[:1]) == 1


def test_deepcopy_keeps_lazy_parameters_lazy_and_copies_data():
    import copy

    m = Tiny()
    m.embed.weight.materialize()
    c = copy.deepcopy(m)
    assert not c.layers[0].proj.weight.is_materialized
    assert c.embed.weight is not m.embed.weight and np.array_equal(c.embed.weight.data, m.embed.weight.data)
    c.embed.weight.data[0, 0] += 1
    assert c.embed.weight.data[0, 0] != m.embed.weight.data[0, 0]
    c.materialize()
    assert c.layers[0].proj.weight.shape == (16, 8)


def test_assigning_a_non_parameter_to_a_parameter_slot_is_an_error():
    lin = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="weight"):
        lin.weight = np.zeros((2, 2))


# --------------------------------------------------------------------------- functional: values


def ref_layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def test_linear_layer_norm_rms_norm_match_numpy():
    x, w, b = randn(2, 3, 4), randn(5, 4), randn(5)
    assert_close(F.linear(axon.Tensor(x), axon.Tensor(w), axon.Tensor(b)), x @ w.T + b, rtol=1e-12, atol=1e-12)
    g, beta = randn(4), randn(4)
    assert_close(F.layer_norm(axon.Tensor(x), (4,), axon.Tensor(g), axon.Tensor(beta)), ref_layer_norm(x, g, beta), rtol=1e-10, atol=1e-10)
    ref_rms = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * g
    assert_close(F.rms_norm(axon.Tensor(x), (4,), axon.Tensor(g)), ref_rms, rtol=1e-10, atol=1e-10)
    x2 = randn(2, 3, 4)
    assert_close(F.layer_norm(axon.Tensor(x2), (3, 4)), (x2 - x2.mean((1, 2), keepdims=True)) / np.sqrt(x2.var((1, 2), keepdims=True) + 1e-5), rtol=1e-10, atol=1e-10)


@FAST
@given(data=st.data())
def test_fused_ops_gradcheck_on_any_layout(data):
    x = data.draw(arrays((2, 3, 4), np.float64, lo=-3.0, hi=3.0, values="hypothesis"))
    w = data.draw(arrays((5, 4), np.float64, lo=-3.0, hi=3.0, values="hypothesis"))
    b = data.draw(arrays((5,), np.float64, lo=-3.0, hi=3.0, values="hypothesis"))
    gradcheck(lambda x, w, b: F.linear(x, w, b), [axon.Tensor(x), axon.Tensor(w), axon.Tensor(b)])
    g = data.draw(arrays((4,), np.float64, lo=-3.0, hi=3.0, values="hypothesis"))
    gradcheck(lambda x, g, b: F.layer_norm(x, (4,), g, b), [axon.Tensor(x), axon.Tensor(g), axon.Tensor(b[:4])])
    gradcheck(lambda x, g: F.rms_norm(x, (4,), g), [axon.Tensor(x), axon.Tensor(g)])
    gradcheck(lambda x: F.layer_norm(x, (3, 4)), [axon.Tensor(x)])


def test_fused_layer_norm_equals_the_composite():
    x = axon.tensor(randn(3, 6), requires_grad=True)
    w = axon.tensor(randn(6), requires_grad=True)
    F.layer_norm(x, 6, w).pow(2).sum().backward()
    g_fused = x.grad.numpy().copy(), w.grad.numpy().copy()
    x.grad = w.grad = None
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    (((x - mu) / (var + 1e-5).sqrt() * w) ** 2).sum().backward()
    assert_close(x.grad, g_fused[0], rtol=1e-9, atol=1e-9)
    assert_close(w.grad, g_fused[1], rtol=1e-9, atol=1e-9)


def test_embedding_values_grads_and_padding_idx():
    w = randn(7, 3)
    ids = np.array([[1, 2, 1], [6, 0, 1]])
    assert_close(F.embedding(ids, axon.Tensor(w)), w[ids])
    gradcheck(lambda w: F.embedding(ids, w), [axon.Tensor(w)])
    wt = axon.tensor(w, requires_grad=True)
    F.embedding(axon.tensor(ids), wt, padding_idx=1).sum().backward()
    assert np.all(wt.grad.data[1] == 0) and np.all(wt.grad.data[2] == 1) and np.all(wt.grad.data[3] == 0)
    with pytest.raises(IndexError, match=r"\[0, 7\)"):
        F.embedding(np.array([7]), axon.Tensor(w))
    with pytest.raises(TypeError):
        F.embedding(np.array([1.0]), axon.Tensor(w))
    with pytest.raises(ValueError, match=r"2-d.*\(7,\)"):
        F.embedding(np.array([1]), axon.Tensor(w[:, 0]))
    emb = nn.Embedding(5, 2, padding_idx=0).materialize()
    assert not emb.weight.data[0].any()


def ref_cross_entropy(x, t, ignore_index=-100, eps=0.0):
    logp = x - np.log(np.exp(x).sum(1, keepdims=True))
    valid = t != ignore_index
    tt = np.where(valid, t, 0)
    nll = -logp[np.arange(len(t)), tt]
    loss = (1 - eps) * nll - eps * logp.mean(1)
    return (loss * valid).sum() / valid.sum()


@FAST
@given(n=st.integers(1, 5), c=st.integers(2, 5), eps=st.sampled_from([0.0, 0.1]), seed=st.integers(0, 1000))
def test_cross_entropy_matches_definition(n, c, eps, seed):
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, c)) * 3
    t = r.integers(0, c, n)
    t[0] = -100 if n > 1 else t[0]
    assert_close(F.cross_entropy(axon.Tensor(x), t, label_smoothing=eps), ref_cross_entropy(x, t, eps=eps), rtol=1e-10, atol=1e-12)
    gradcheck(lambda x: F.cross_entropy(x, t, label_smoothing=eps), [axon.Tensor(x)])
    gradcheck(lambda x: F.cross_entropy(x, t, reduction="sum"), [axon.Tensor(x)])
    gradcheck(lambda x: F.cross_entropy(x, t, reduction="none"), [axon.Tensor(x)])


def test_cross_entropy_extra_dims_equals_flattened_and_nll():
    x = randn(2, 5, 3)  # [N, C, d]
    t = np.array([[0, 4, 1], [2, 2, 3]])
    flat = F.cross_entropy(axon.Tensor(x.transpose(0, 2, 1).reshape(-1, 5)), t.reshape(-1))
    assert_close(F.cross_entropy(axon.Tensor(x), t), flat)
    x2 = axon.Tensor(randn(4, 3))
    t2 = np.array([0, 2, 1, -100])
    assert_close(F.nll_loss(F.log_softmax(x2, -1), t2), F.cross_entropy(x2, t2), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="target shape"):
        F.cross_entropy(x2, np.array([0, 1]))
    with pytest.raises(TypeError, match="integer"):
        F.cross_entropy(x2, np.zeros(4))


def test_mse_loss_and_dropout():
    a, b = randn(3, 2), randn(3, 2)
    assert_close(F.mse_loss(axon.Tensor(a), axon.Tensor(b)), ((a - b) ** 2).mean())
    gradcheck(lambda a, b: F.mse_loss(a, b, reduction="sum"), [axon.Tensor(a), axon.Tensor(b)])
    axon.manual_seed(0)
    x = axon.ones(1000, requires_grad=True)
    y = F.dropout(x, 0.25)
    kept = y.data != 0
    assert 0.65 < kept.mean() < 0.85 and np.allclose(y.data[kept], 1 / 0.75)
    y.sum().backward()
    assert np.array_equal(x.grad.data != 0, kept)
    assert F.dropout(x, 0.5, training=False) is x
    d = nn.Dropout(0.5).eval()
    assert d(x) is x


def ref_conv1d(x, w, b, stride, padding, dilation, groups):
    x = np.pad(x, [(0, 0), (0, 0), (padding, padding)])
    bsz, cin, length = x.shape
    cout, cin_g, k = w.shape
    lout = (length - dilation * (k - 1) - 1) // stride + 1
    out = np.zeros((bsz, cout, lout))
    per = cout // groups
    for o in range(cout):
        gi = o // per
        for t in range(lout):
            for i in range(cin_g):
                for j in range(k):
                    out[:, o, t] += w[o, i, j] * x[:, gi * cin_g + i, t * stride + j * dilation]
    return out + (b[None, :, None] if b is not None else 0)


@FAST
@given(groups=st.sampled_from([1, 2, 4]), stride=st.integers(1, 2), padding=st.integers(0, 2), dilation=st.integers(1, 2),
       k=st.integers(1, 3), seed=st.integers(0, 100))
def test_conv1d_matches_definition(groups, stride, padding, dilation, k, seed):
    r = np.random.default_rng(seed)
    cout = 4 if groups == 4 else 6  # groups == 4 with 4 channels is depthwise
    x, w, b = r.standard_normal((2, 4, 7)), r.standard_normal((cout, 4 // groups, k)), r.standard_normal(cout)
    args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    assert_close(F.conv1d(axon.Tensor(x), axon.Tensor(w), axon.Tensor(b), **args), ref_conv1d(x, w, b, **args), rtol=1e-10, atol=1e-10)
    gradcheck(lambda x, w, b: F.conv1d(x, w, b, **args), [axon.Tensor(x), axon.Tensor(w), axon.Tensor(b)])


def test_depthwise_causal_conv_as_in_mamba():
    c, k, length = 3, 4, 6
    conv = nn.Conv1d(c, c, k, groups=c, padding=k - 1)
    x = axon.randn(2, c, length)
    y = conv(x)[..., :length]  # [B, C, L]: position t sees t-3..t only
    x2 = x.numpy().copy()
    x2[..., 4:] += 100.0
    y2 = conv(axon.tensor(x2))[..., :length]
    assert_close(y2[..., :4], y[..., :4])
    assert "groups=3" in repr(conv) and F.conv1d(x, conv.weight, None, padding="same", groups=c).shape == (2, c, length)


# --------------------------------------------------------------------------- attention


def ref_attention(q, k, v, mask=None, causal=False, window=None, scale=None):
    """Plain NumPy definition: repeat K/V heads, bottom-right causal, sliding window."""
    b, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    k = np.repeat(k, h // hkv, axis=1)
    v = np.repeat(v, h // hkv, axis=1)
    s = q @ k.transpose(0, 1, 3, 2) * (d**-0.5 if scale is None else scale)
    allowed = np.ones((tq, tk), bool)
    pos = np.arange(tk - tq, tk)[:, None]
    if causal or window is not None:  # a window W: p - W < j <= p
        allowed &= np.arange(tk)[None] <= pos
    if window is not None:
        allowed &= np.arange(tk)[None] > pos - window
    if mask is not None and mask.dtype == bool:
        allowed = allowed & mask
    elif mask is not None:
        s = s + mask
    s = np.where(allowed, s, -np.inf)
    m = s.max(-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    e = np.exp(s - m)
    z = e.sum(-1, keepdims=True)
    p = e / np.where(z == 0, 1, z)
    return p @ v


@FAST
@given(h_kv=st.sampled_from([(2, 2), (4, 2), (4, 1)]), tq=st.integers(1, 4), extra=st.integers(0, 3),
       causal=st.booleans(), window=st.sampled_from([None, 1, 2]), seed=st.integers(0, 1000))
def test_sdpa_matches_definition_with_gqa_causal_window(h_kv, tq, extra, causal, window, seed):
    h, hkv = h_kv
    tk = tq + extra
    r = np.random.default_rng(seed)
    q, k, v = r.standard_normal((2, h, tq, 3)), r.standard_normal((2, hkv, tk, 3)), r.standard_normal((2, hkv, tk, 3))
    expected = ref_attention(q, k, v, causal=causal, window=window)
    # the composite reference: values and float64 central differences
    scale = 3**-0.5
    ref = F._sdpa_reference(axon.Tensor(q), axon.Tensor(k), axon.Tensor(v), None, 0.0, causal, scale, window)
    assert_close(ref, expected, rtol=1e-10, atol=1e-10)
    gradcheck(lambda q, k, v: F._sdpa_reference(q, k, v, None, 0.0, causal, scale, window),
              [axon.Tensor(q), axon.Tensor(k), axon.Tensor(v)])
    # the public function (which may dispatch to the flash kernel): same values and gradients
    ts = [axon.tensor(a, requires_grad=True) for a in (q, k, v)]
    out = F.scaled_dot_product_attention(*ts, is_causal=causal, window=window, enable_gqa=h != hkv)
    assert_close(out, expected, rtol=1e-10, atol=1e-10)
    w = np.random.default_rng(seed + 1).standard_normal(out.shape)
    (out * axon.Tensor(w)).sum().backward()
    rs = [axon.tensor(a, requires_grad=True) for a in (q, k, v)]
    (F._sdpa_reference(*rs, None, 0.0, causal, scale, window) * axon.Tensor(w)).sum().backward()
    for t, r in zip(ts, rs):
        assert_close(t.grad, r.grad, rtol=1e-9, atol=1e-10)


def test_sdpa_masks_and_scale_follow_torch():
    q, k, v = randn(1, 2, 3, 4), randn(1, 2, 5, 4), randn(1, 2, 5, 4)
    bool_mask = rng.random((1, 1, 3, 5)) > 0.3
    bool_mask[..., 0] = True
    out = F.scaled_dot_product_attention(axon.Tensor(q), axon.Tensor(k), axon.Tensor(v), attn_mask=axon.tensor(bool_mask))
    assert_close(out, ref_attention(q, k, v, mask=bool_mask), rtol=1e-10, atol=1e-10)
    add_mask = randn(3, 5)
    out = F.scaled_dot_product_attention(axon.Tensor(q), axon.Tensor(k), axon.Tensor(v), attn_mask=add_mask, scale=0.3)
    assert_close(out, ref_attention(q, k, v, mask=add_mask, scale=0.3), rtol=1e-10, atol=1e-10)
    # causal with Tq == Tk is torch's top-left causal mask
    qq = randn(1, 1, 4, 2)
    full = F.scaled_dot_product_attention(axon.Tensor(qq), axon.Tensor(qq), axon.Tensor(qq), is_causal=True)
    tri = np.tril(np.ones((4, 4), bool))
    assert_close(full, ref_attention(qq, qq, qq, mask=tri), rtol=1e-10, atol=1e-10)


def test_sdpa_fully_masked_row_gives_zeros_and_bad_heads_raise():
    q, k, v = randn(1, 1, 2, 2), randn(1, 1, 3, 2), randn(1, 1, 3, 2)
    mask = np.array([[True, True, False], [False, False, False]])
    out = F.scaled_dot_product_attention(axon.Tensor(q), axon.Tensor(k), axon.Tensor(v), attn_mask=mask).numpy()
    assert np.all(out[0, 0, 1] == 0) and np.all(np.isfinite(out))
    with pytest.raises(ValueError, match="multiple"):
        F.scaled_dot_product_attention(axon.Tensor(randn(1, 3, 2, 2)), axon.Tensor(randn(1, 2, 2, 2)), axon.Tensor(randn(1, 2, 2, 2)))
    with pytest.raises(ValueError, match="Tq <= Tk"):
        F.scaled_dot_product_attention(axon.Tensor(randn(1, 1, 3, 2)), axon.Tensor(randn(1, 1, 2, 2)), axon.Tensor(randn(1, 1, 2, 2)), is_causal=True)


def test_sdpa_float32_stays_float32():
    q = axon.randn(1, 2, 3, 4)
    assert F.scaled_dot_product_attention(q, q, q, is_causal=True).dtype == np.float32
