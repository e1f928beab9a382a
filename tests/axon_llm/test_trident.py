"""Trident (BitNet b1.58): transformers parity, ternary training/inference paths, configs.

Fixtures (made by make_fixtures.py from transformers' BitNetForCausalLM in float32):
`bitnet` stores dense float weights with ``quantization_mode: online`` (every linear is an
AutoBitLinear quantising weights and activations on the fly); `bitnet_packed` stores the same
model in HF's pre-quantised BitLinear format (uint8 weights packed along out_features +
weight_scale).
"""

from __future__ import annotations

import numpy as np
import pytest

import axon
import axon_kernels as kernels
from axon_llm import CheckpointError, ConfigError, UnsupportedError
from axon_llm.auto import from_pretrained
from axon_llm.models.trident import TridentConfig, TridentModel
from axon_llm.ternary import TernaryLinear, latent_weight, pack_hf_ternary, unpack_hf_ternary

from tests.axon_llm.model_checks import (
    check_cache_matches_full, check_causal, check_every_parameter_gets_gradient, check_learns, logits_np,
    next_token_loss,
)


@pytest.fixture(scope="module")
def tiny():
    axon.manual_seed(0)
    return TridentModel(TridentConfig.tiny())


def _load(fixtures_dir, name):
    path = fixtures_dir / "hf" / name
    return from_pretrained(path), np.load(path / "expected.npz")


# ------------------------------------------------------------------ transformers parity
@pytest.mark.parametrize("name", ["bitnet", "bitnet_packed"])
def test_logits_match_transformers(fixtures_dir, name):
    """How close, and why not closer.

    The quantisers are the same float32 operations as transformers' (``round`` half-to-even of
    ``x * a`` and ``W * s``, and ``a`` evaluated as torch evaluates ``127 / max|x|``): given the
    same input, the int8 codes are identical (test_trained_checkpoint_quantises_like_transformers,
    test_activation_scale_is_evaluated_as_transformers_does). The inputs differ only by float
    rounding of the sums before a quantiser (a few ulps); where ``x * a`` lies within that of a
    .5 boundary (or exactly on it: such ties are reached), one int8 code differs by 1. That is not
    a local jump: the changed output feeds the residual stream, attention (later positions) and
    later quantisers, so one flipped code becomes ~100 and a few positions move by ~1e-2. How
    often depends on the number of codes, i.e. tokens, not on training: on this fixture, 2 x 12
    tokens, every position agrees (measured max difference 1.9e-6); on 8 x 64 random tokens 26
    of 512 positions exceed the tolerance (max 0.08), and so do trained checkpoints on long
    inputs -- test_trained_checkpoint_differs_only_by_boundary_flips shows that substituting the
    few flipped codes removes the whole difference. So this test asks that at least 95% of
    positions agree to 1e-4 * max|logit| (all do here), and greedy decoding is identical
    (test_greedy_generation_matches_transformers).
    """
    model, exp = _load(fixtures_dir, name)
    assert isinstance(model, TridentModel)
    assert all(m.is_packed for _, m in model.ternary_layers()) == (name == "bitnet_packed")
    out = logits_np(model, exp["input_ids"])
    ref = exp["logits"]
    tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
    per_position = np.abs(out - ref).max(axis=-1)                       # [B, T]
    assert (per_position <= tol).mean() >= 0.95, per_position
    # and it is not the unquantised model (the quantisation really happens)
    assert np.abs(out - exp["logits_unquantized"]).max() > 100 * tol


@pytest.mark.parametrize("name", ["bitnet", "bitnet_packed"])
def test_greedy_generation_matches_transformers(fixtures_dir, name):
    model, exp = _load(fixtures_dir, name)
    prompt, want = exp["prompt_ids"], exp["greedy_ids"]
    got = model.generate(prompt, max_new_tokens=want.shape[1] - prompt.shape[1], eos_token_id=None)   # fixtures: no EOS
    np.testing.assert_array_equal(got, want)
    bprompt, bwant = exp["batch_prompt_ids"], exp["batch_greedy_ids"]
    got = model.generate(bprompt, attention_mask=exp["batch_attention_mask"],
                         max_new_tokens=bwant.shape[1] - bprompt.shape[1])
    np.testing.assert_array_equal(got, bwant)


def test_autobitlinear_offline_checkpoint(fixtures_dir, tmp_path):
    """transformers' other packed convention (microsoft/bitnet-b1.58-2B-4T's): linear_class
    autobitlinear, quantization_mode offline, y = (xq @ t^T) * weight_scale, so weight_scale = 1/s.
    Written here from the dense fixture; it must reproduce that fixture's transformers logits."""
    import json

    from axon_llm.loaders.safetensors import read_safetensors, write_safetensors

    src = fixtures_dir / "hf" / "bitnet"
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"].update(linear_class="autobitlinear", quantization_mode="offline")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    sd = dict(read_safetensors(src / "model.safetensors"))
    for key in [k for k in sd if k.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight",
                                             "gate_proj.weight", "up_proj.weight", "down_proj.weight"))]:
        w = np.asarray(sd[key], np.float32)
        s = np.float32(1) / np.maximum(np.abs(w).mean(dtype=np.float32), np.float32(1e-5))
        sd[key] = pack_hf_ternary(np.clip(np.round(w * s), -1, 1).astype(np.int8))
        sd[key[:-len("weight")] + "weight_scale"] = np.array([1 / s], np.float32)
    write_safetensors(tmp_path / "model.safetensors", sd)
    model = from_pretrained(tmp_path)
    assert all(m.is_packed for _, m in model.ternary_layers())
    exp = np.load(src / "expected.npz")
    out = logits_np(model, exp["input_ids"])
    per_position = np.abs(out - exp["logits"]).max(axis=-1)
    assert (per_position <= 1e-4 * np.abs(exp["logits"]).max()).mean() >= 0.95, per_position


def test_packed_checkpoint_errors_are_named(fixtures_dir, tmp_path):
    import shutil

    from axon_llm.loaders.safetensors import read_safetensors, write_safetensors

    src = fixtures_dir / "hf" / "bitnet_packed"
    shutil.copy(src / "config.json", tmp_path / "config.json")
    sd = dict(read_safetensors(src / "model.safetensors"))
    key = "model.layers.0.self_attn.q_proj.weight"
    sd[key] = np.full_like(sd[key], 0xFF)                                 # code 3 is not a ternary value
    write_safetensors(tmp_path / "model.safetensors", sd)
    with pytest.raises(CheckpointError, match="q_proj"):
        from_pretrained(tmp_path)


def test_save_pretrained_round_trip(fixtures_dir, tmp_path):
    import json

    model, exp = _load(fixtures_dir, "bitnet_packed")
    model.save_pretrained(tmp_path)
    # the float latent weights are written, with the config asking for on-the-fly quantisation
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"] == ["BitNetForCausalLM"]
    assert cfg["quantization_config"]["quantization_mode"] == "online"
    again = from_pretrained(tmp_path)
    np.testing.assert_allclose(logits_np(again, exp["input_ids"]), exp["logits"], rtol=0,
                               atol=1e-4 * np.abs(exp["logits"]).max())


# ------------------------------------------------------------------ the two paths of TernaryLinear
def test_packed_inference_equals_training_forward(tiny):
    ids = np.random.default_rng(0).integers(0, tiny.config.vocab_size, (2, 12))
    train_path = logits_np(tiny.unpack(), ids)
    packed_path = logits_np(tiny.pack(), ids)
    tiny.unpack()
    # same integer codes; only the order of the float32 accumulation differs
    np.testing.assert_allclose(packed_path, train_path, rtol=0, atol=1e-5 * np.abs(train_path).max())


def test_packed_checkpoint_unpacks_to_the_same_function(fixtures_dir):
    model, exp = _load(fixtures_dir, "bitnet_packed")
    packed = logits_np(model, exp["input_ids"])
    unpacked = logits_np(model.unpack(), exp["input_ids"])
    np.testing.assert_allclose(unpacked, packed, rtol=0, atol=1e-5 * np.abs(packed).max())
    for _, layer in model.ternary_layers():                            # and it trains from there
        assert layer.weight.requires_grad and not layer.is_packed


def test_packed_layer_refuses_to_train(tiny):
    tiny.pack().train()
    try:
        with pytest.raises(UnsupportedError, match="unpack"):
            tiny(np.zeros((1, 3), np.int64))
        with axon.no_grad():
            tiny(np.zeros((1, 3), np.int64))                            # inference is fine
    finally:
        tiny.unpack()


def test_packed_weights_take_at_most_a_tenth_of_float32(tiny):
    tiny.pack()
    packed, dense = tiny.packed_weight_nbytes()
    tiny.unpack()
    assert packed <= dense / 10, (packed, dense)                          # 2 bits vs 32: ~1/16


def _b158(x, w):
    """The recipe written out (architectures.md): dequantised int8 activations and ternary weights."""
    s = np.float32(1) / np.maximum(np.abs(w).mean(dtype=np.float32), np.float32(1e-5))
    wq = np.clip(np.round(w * s), -1, 1) / s
    a = np.float32(127) * (np.float32(1) / np.maximum(np.abs(x).max(axis=-1, keepdims=True), np.float32(1e-5)))
    xq = np.clip(np.round(x * a), -128, 127) / a
    return xq, wq


def test_ternary_linear_forward_is_the_b158_recipe():
    rng = np.random.default_rng(0)
    layer = TernaryLinear(10, 6)
    w = rng.standard_normal((6, 10)).astype(np.float32)
    layer.weight.data = w
    x = rng.standard_normal((3, 10)).astype(np.float32)
    xq, wq = _b158(x, w)
    assert len(np.unique(wq)) <= 3
    np.testing.assert_allclose(layer(axon.tensor(x)).numpy(), xq @ wq.T, rtol=1e-6, atol=1e-6)


def test_straight_through_gradients():
    """d/dW and d/dx are those of the plain linear map evaluated at the quantised values."""
    rng = np.random.default_rng(1)
    layer = TernaryLinear(8, 5)
    w = rng.standard_normal((5, 8)).astype(np.float32)
    layer.weight.data = w
    x = axon.tensor(rng.standard_normal((4, 8)).astype(np.float32), requires_grad=True)
    g = rng.standard_normal((4, 5)).astype(np.float32)
    (layer(x) * axon.tensor(g)).sum().backward()
    xq, wq = _b158(x.numpy(), w)
    np.testing.assert_allclose(layer.weight.grad.numpy(), g.T @ xq, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(x.grad.numpy(), g @ wq, rtol=1e-5, atol=1e-6)


def test_latent_weight_requantises_to_its_codes():
    t = np.random.default_rng(4).integers(-1, 2, (6, 9)).astype(np.int8)
    w = latent_weight(t, 3.7)
    _, wq = _b158(np.ones((1, 9), np.float32), w)
    np.testing.assert_allclose(wq, t / np.float32(3.7), rtol=1e-6)


def test_hf_packing_roundtrip():
    t = np.random.default_rng(2).integers(-1, 2, (10, 7)).astype(np.int8)   # 10 rows: one padded byte row
    packed = pack_hf_ternary(t)
    assert packed.shape == (3, 7) and packed.dtype == np.uint8
    np.testing.assert_array_equal(unpack_hf_ternary(packed, 10), t)
    with pytest.raises(CheckpointError, match="cannot hold"):
        unpack_hf_ternary(packed, 13)


# ------------------------------------------------------------------ family checks
def test_causal(tiny):
    check_causal(tiny, tiny.config.vocab_size)


def test_every_parameter_gets_a_gradient(tiny):
    ids = np.random.default_rng(0).integers(0, tiny.config.vocab_size, (2, 10))
    check_every_parameter_gets_gradient(tiny, next_token_loss(tiny(ids), ids))


@pytest.mark.parametrize("packed", [False, True])
def test_cached_decoding_equals_full_forward(tiny, packed):
    (tiny.pack() if packed else tiny.unpack())
    try:
        check_cache_matches_full(tiny, tiny.config.vocab_size)
    finally:
        tiny.unpack()


def test_tiny_learns():
    axon.manual_seed(0)
    model = TridentModel(TridentConfig.tiny())
    check_learns(model, model.config.vocab_size, steps=20, lr=1e-2)


# ------------------------------------------------------------------ configs
def test_presets():
    rows = [  # d / layers / heads / kv / ffn / ctx / vocab
        (TridentConfig.tiny(), (64, 2, 4, 2, 256, 128, 1000)),
        (TridentConfig.default_150m(), (512, 12, 8, 4, 2048, 2048, 32000)),
        (TridentConfig.medium(), (768, 16, 12, 4, 3072, 2048, 32000)),
        (TridentConfig.trident_1b(50000), (2048, 24, 16, 4, 5504, 4096, 50000)),
        (TridentConfig.trident_3b(50000), (3200, 26, 32, 8, 8640, 4096, 50000)),
        (TridentConfig.smoke(777), (256, 4, 8, 2, 688, 512, 777)),
        (TridentConfig.bitnet_2b4t(), (2560, 30, 20, 5, 6912, 4096, 128256)),
    ]
    for c, want in rows:
        got = (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
               c.intermediate_size, c.max_position_embeddings, c.vocab_size)
        assert got == want
        assert c.rope_theta == 5e5 and c.rms_norm_eps == 1e-5 and c.hidden_act == "relu2"


def test_parameter_counts_match_transformers():
    # counted with transformers' BitNetForCausalLM on the meta device
    assert TridentConfig.tiny().num_parameters() == 251_840
    assert TridentConfig.bitnet_2b4t().num_parameters() == 2_412_820_480


@pytest.mark.parametrize("preset", [TridentConfig.tiny, TridentConfig.default_150m, TridentConfig.medium,
                                    TridentConfig.trident_1b, TridentConfig.trident_3b, TridentConfig.smoke,
                                    TridentConfig.bitnet_2b4t])
def test_every_preset_builds_lazily_with_its_arithmetic_count(preset):
    c = preset()
    params = list(TridentModel(c).parameters())
    assert sum(p.numel() for p in params) == c.num_parameters()
    assert not any(p.is_materialized for p in params)


def test_bad_configs_are_rejected():
    with pytest.raises(ConfigError, match="num_key_value_heads"):
        TridentConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=3)
    with pytest.raises(ConfigError, match="divisible"):
        TridentConfig(hidden_size=66, num_attention_heads=4, num_key_value_heads=2)
    with pytest.raises(UnsupportedError, match="relu2"):
        TridentConfig(hidden_act="silu")


# ------------------------------------------------------------------ a trained checkpoint
# (made by tests/fixtures/make_trident_trained.py)
# The tiny preset trained 60 steps by `axon-llm train` (axon's AdamW, loss 3.25 -> 1.64), saved by
# save_pretrained and run by transformers' BitNetForCausalLM (online quantisation, float32, eager).
# The reported symptom ("trained checkpoints differ by up to 0.2, fixtures match to 1e-6") is
# two things. (1) A real, last-bit mismatch, now fixed: torch evaluates transformers' activation
# scale 127 / max|x| as reciprocal-then-multiply, and codes at exact .5 ties depended on it
# (test_activation_scale_is_evaluated_as_transformers_does). (2) What remains is the number of
# tokens compared, not training: on its 4 x 32 `long_ids` our plain forward is off at 5 of 128
# positions by up to 0.023 (tolerance 9e-4), and the whole difference is ONE activation code within
# float32 noise of a .5 rounding boundary and what it propagates to (the tests below).
TRAINED = "trident_trained"


@pytest.fixture(scope="module")
def trained(fixtures_dir):
    path = fixtures_dir / "hf" / TRAINED
    return from_pretrained(path), np.load(path / "expected.npz")


def _names(exp, prefix):
    return [k[len(prefix):] for k in exp.files if k.startswith(prefix)]


@pytest.mark.parametrize("packed", [False, True])
def test_trained_checkpoint_logits_match_transformers(trained, packed):
    """Every position within 1e-4 x max(1, max|logit|) of transformers, training and packed paths.

    The input (``input_ids``) was drawn so that every activation value ``x * a`` transformers
    rounds is at least 3.1e-4 from a .5 boundary, 4x the largest difference between the two
    frameworks' ``x * a`` on it (7.6e-5, float32 summation order in RMSNorm / attention /
    mean|W|): no code can flip, so any gap here is a real disagreement (config, scales,
    quantiser semantics), not a rounding-boundary accident. Measured: 3.8e-6 (training path),
    3.3e-6 (packed), max|logit| 7.8.
    """
    model, exp = trained
    assert isinstance(model, TridentModel) and not any(m.is_packed for _, m in model.ternary_layers())
    try:
        out = logits_np(model.pack() if packed else model, exp["input_ids"])
    finally:
        model.unpack()
    ref = exp["logits"]
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4 * max(1.0, float(np.abs(ref).max())))


def test_trained_checkpoint_quantises_like_transformers(trained):
    """Layer by layer on transformers' own inputs: identical int8 activation codes, identical
    ternary weights (a flipped weight code would move the output by ~max|x|/s = 1e-2), and the
    same output to float32 rounding (measured <= 9.6e-7; the weight scale 1/mean|W| differs from
    torch's by 1-2 ulp, <= 1.2e-7 relative, in about half the layers: the mean's summation order)."""
    model, exp = trained
    layers = dict(model.ternary_layers())
    names = _names(exp, "in/")
    assert sorted(names) == sorted(layers) and len(names) == 14
    for name in names:
        layer, x, want = layers[name], exp[f"in/{name}"], exp[f"out/{name}"]
        codes, _ = kernels.quantize_activations(x)
        np.testing.assert_array_equal(codes, exp[f"layer_codes/{name}"], err_msg=name)
        _, s = kernels.ternary_codes(layer.weight.numpy())
        assert abs(s - exp[f"weight_scale/{name}"].item()) <= 1e-6 * s, name
        tol = 1e-4 * max(1.0, float(np.abs(want).max()))
        for form in ("unpack", "pack"):
            getattr(layer, form)()
            with axon.no_grad():
                got = layer(axon.tensor(x)).numpy()
            layer.unpack()
            np.testing.assert_allclose(got, want, rtol=0, atol=tol, err_msg=f"{name} ({form}ed)")


def test_trained_checkpoint_differs_only_by_boundary_flips(trained, monkeypatch):
    """On ``long_ids`` (drawn so that our plain forward does flip codes), give every TernaryLinear
    transformers' int8 activation codes where ours differ, everything else ours: the logits then
    agree everywhere within 1e-4 x scale (measured 4.3e-6, against 0.023 without), and each code
    we had to replace was ours within 1e-3 of a .5 boundary and off by exactly one.

    When the fixture was made that was a single code: layer 0 o_proj, where transformers' x * a is
    -23.500002, 1.9e-6 above the boundary, and ours, computed from an input that differs by 1.2e-6
    (float32 summation order of RMSNorm / attention), falls below it. Left alone it becomes 82
    differing codes of 163,840 downstream. So the gap is rounding-boundary flips and their propagation (residual
    stream, attention, later quantisers), nothing systematic. (Whether the flip happens on another
    machine depends on its float summation order, so the test asserts the substitution, not a count.)
    """
    model, exp = trained
    names = {id(m): n for n, m in model.ternary_layers()}
    replaced = []

    def forward_with_reference_codes(self, x):
        ours, a = kernels.quantize_activations(x.numpy())              # int8 [B, T, in], [B, T, 1]
        ref = exp[f"codes/{names[id(self)]}"]
        differ = ours != ref
        if differ.any():
            xa = x.numpy()[differ] * np.broadcast_to(a, x.shape)[differ]
            replaced.append((np.abs(ours[differ].astype(int) - ref[differ]),
                             np.abs(np.abs(xa - np.floor(xa)) - 0.5)))
        t, s = kernels.ternary_codes(self.weight.numpy())
        y = (ref.astype(np.float32) / a) @ (t.astype(np.float32) / np.float32(s)).T   # [B, T, out]
        return axon.tensor(y.astype(np.float32))

    monkeypatch.setattr(TernaryLinear, "forward", forward_with_reference_codes)
    out = logits_np(model, exp["long_ids"])
    ref = exp["long_logits"]
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4 * max(1.0, float(np.abs(ref).max())))
    for step, margin in replaced:
        assert (step == 1).all() and (margin < 1e-3).all(), (step, margin)


def test_activation_scale_is_evaluated_as_transformers_does(trained):
    """transformers writes the activation scale ``127 / max|x|``; torch evaluates ``127 / t`` as
    ``t.reciprocal() * 127``, two float32 roundings, which differ in the last bit from the
    once-rounded quotient for about a quarter of all tokens. Where ``x * a`` is then an exact .5 tie
    (these occur: float32 has only 2^18 values between two integers near 60, and one such tie was
    the root flip on a trained checkpoint before this was matched) the code depends on it. Rows
    made by the fixture script so that every one has such a tie: all three of our paths -- the
    NumPy quantiser, the training forward and the packed kernel -- must give torch's codes."""
    _, exp = trained
    x, want = exp["tie_x"], exp["tie_codes"]                           # [16, 64] float32, int8
    q, a = kernels.quantize_activations(x)
    np.testing.assert_array_equal(q, want)
    n = x.shape[1]
    eye = np.eye(n, dtype=np.float32)                                  # codes I, scale s = 1 / mean|I| = n
    layer = TernaryLinear(n, n)
    layer.weight.data = eye
    for form in ("unpack", "pack"):
        getattr(layer, form)()
        with axon.no_grad():
            y = layer(axon.tensor(x)).numpy()                          # = q / (a n)
        np.testing.assert_array_equal(np.round(y * a * n).astype(np.int8), want, err_msg=form)
    layer.unpack()
    # and the once-rounded quotient would not: every row has a code it gets wrong
    once = np.float32(127) / np.abs(x).max(axis=-1, keepdims=True)
    assert (np.clip(np.round(x * once), -128, 127) != want).any(axis=-1).all()
