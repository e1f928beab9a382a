"""The public contract (../shared/spec/contract.md), called exactly as written there.

Outside checks call these names; each block here mirrors a block of the contract, so a rename
or a changed default breaks this test before it breaks a user.
"""

from pathlib import Path

import numpy as np
import pytest

import axon
import axon.nn.functional as F
import axon_llm
import axon_kernels as kernels

FIXTURES = Path(__file__).parent / "fixtures"


def test_axon_core_as_written(tmp_path):
    x = axon.tensor(np.ones((2, 3)), requires_grad=True)
    assert x.dtype == np.float64                                   # float64 in, float64 kept
    assert axon.tensor(1.5).dtype == np.float32                    # python floats -> float32
    w = axon.randn(3, 4, requires_grad=True)
    assert w.dtype == np.float32
    y = (x.float() @ w).gelu().sum()
    y.backward()
    assert isinstance(w.grad, axon.Tensor) and w.grad.numpy().shape == (3, 4)
    assert np.asarray(w).shape == (3, 4)
    with axon.no_grad():
        assert not (w * 2).requires_grad

    nn = axon.nn
    assert all(isinstance(c, type) for c in (nn.Module, nn.Parameter, nn.Linear, nn.Embedding, nn.LayerNorm,
                                             nn.RMSNorm, nn.Dropout, nn.Conv1d))
    for name in ("softmax", "log_softmax", "cross_entropy", "gelu", "gelu_tanh", "silu", "relu",
                 "scaled_dot_product_attention"):
        assert callable(getattr(F, name))
    loss = F.cross_entropy(axon.randn(5, 7), np.array([1, 2, -100, 3, 4]), ignore_index=-100)
    assert np.isfinite(loss.item())

    lin = nn.Linear(3, 4, bias=True)
    opt = axon.optim.AdamW(lin.parameters(), lr=1e-3, weight_decay=0.01)
    assert axon.optim.SGD and axon.optim.Adam
    lin(axon.randn(2, 3)).sum().backward()
    opt.step()
    opt.zero_grad()

    sd = lin.state_dict()
    result = lin.load_state_dict(sd, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == [] and not result.mismatched
    axon.save(sd, tmp_path / "x.safetensors")
    assert set(axon.load(tmp_path / "x.safetensors")) == set(sd)


def test_kernels_as_written():
    rng = np.random.default_rng(0)
    a, b = rng.random((2, 8, 5), np.float32), rng.random((2, 5, 3), np.float32)
    np.testing.assert_allclose(kernels.matmul(a, b), kernels.matmul_ref(a, b), rtol=1e-5)

    q = rng.standard_normal((1, 4, 3, 8), np.float32)              # H=4 queries over Hkv=2, Tq=3 < Tk=6
    k = rng.standard_normal((1, 2, 6, 8), np.float32)
    v = k + 1
    out, lse = kernels.flash_attention(q, k, v, causal=False, window=None, scale=None, block_q=64, block_kv=64)
    assert out.shape == q.shape and lse.shape == (1, 4, 3)
    dq, dk, dv = kernels.flash_attention_backward(q, k, v, out, lse, np.ones_like(out), causal=False,
                                                  window=None, scale=None)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape

    u = rng.standard_normal((1, 4, 5), np.float32)                 # [b, d, l]
    delta = rng.random((1, 4, 5), np.float32)
    A = -rng.random((4, 3), np.float32)                            # [d, n]
    B = rng.standard_normal((1, 3, 5), np.float32)                 # [b, n, l]
    y = kernels.selective_scan(u, delta, A, B, B.copy(), D=None, z=None, delta_bias=None, delta_softplus=False,
                               return_last_state=False)
    y2, last = kernels.selective_scan(u, delta, A, B, B.copy(), return_last_state=True)
    assert y.shape == (1, 4, 5) and last.shape == (1, 4, 3)
    np.testing.assert_array_equal(y, y2)

    W = rng.standard_normal((6, 10), np.float32)
    packed, scale = kernels.ternary_quantize(W)
    assert packed.dtype == np.uint8 and packed.shape == (6, 3)     # ceil(10 / 4) bytes a row
    out = kernels.ternary_matmul(rng.standard_normal((2, 10), np.float32), packed, scale, 10)
    assert out.shape == (2, 6) and out.dtype == np.float32

    for name in ("matmul", "flash_attention", "flash_attention_backward", "selective_scan", "ternary_quantize",
                 "ternary_matmul"):
        assert callable(getattr(kernels, name + "_ref"))


@pytest.mark.realmodel
def test_axon_llm_as_written():
    m = axon_llm.from_pretrained(FIXTURES / "hf" / "llama")
    assert m(np.array([[1, 2, 3]])).shape[:2] == (1, 3)            # logits [B, T, V]
    assert m(np.array([[1, 2, 3]]), attention_mask=np.array([[1, 1, 1]])).shape[:2] == (1, 3)
    ids = m.generate(np.array([[1, 2, 3]]), max_new_tokens=24, do_sample=False)
    assert ids.dtype.kind == "i" and ids.shape[0] == 1 and 3 < ids.shape[1] <= 27

    tok = axon_llm.HFTokenizer.from_pretrained("all-minilm-l6-v2")
    assert "hello world" in tok.decode(tok.encode("hello world"))
    assert isinstance(axon_llm.LLaMAConfig.tiny(), axon_llm.LLaMAConfig)
    axon_llm.LLaMAForCausalLM(axon_llm.LLaMAConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                                   num_attention_heads=4))
    for name in ("GPT2LMHead", "Bert", "BertForMaskedLM", "BertForSequenceClassification", "LLaMAForCausalLM",
                 "MistralForCausalLM", "PhiForCausalLM", "SSMForCausalLM", "TridentModel"):
        assert isinstance(getattr(axon_llm, name), type)


@pytest.mark.realmodel
def test_hub_as_written():
    registry = axon_llm.llm_registry()
    assert "smollm2-135m-instruct" in registry and "all-minilm-l6-v2" in axon_llm.list_models()
    assert isinstance(registry["smollm2-135m-instruct"], axon_llm.hub.PretrainedLLM)
    assert axon_llm.download_llm_weights("all-minilm-l6-v2").is_dir()     # from its package, no network
    assert callable(axon_llm.hub.download_file) and callable(axon_llm.hub.register)
