"""The public contract (../shared/spec/contract.md), called exactly as written there.

Outside checks call these names; each line here mirrors a line of the contract, so a rename
or a changed default breaks this test before it breaks a user.
"""

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.realmodel
def test_every_contract_name_works_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(Path(__file__).parents[1])
    import numpy as np, axon, kernels, axon_llm, tempfile, os
    x = axon.tensor(np.ones((2, 3)), requires_grad=True); assert x.dtype == np.float64
    w = axon.randn(3, 4, requires_grad=True); assert w.dtype == np.float32
    assert axon.tensor(1.5).dtype == np.float32
    y = (x.float() @ w).gelu().sum()
    y.backward(); g = w.grad.numpy(); np.asarray(w)
    with axon.no_grad(): pass
    nn = axon.nn
    for c in (nn.Module, nn.Parameter, nn.Linear, nn.Embedding, nn.LayerNorm, nn.RMSNorm, nn.Dropout, nn.Conv1d): pass
    lin = nn.Linear(3, 4, bias=True)
    import axon.nn.functional as F
    for f in ("softmax","log_softmax","cross_entropy","gelu","gelu_tanh","silu","relu","scaled_dot_product_attention"): getattr(F,f)
    loss = F.cross_entropy(axon.randn(5, 7), np.array([1,2,-100,3,4]), ignore_index=-100)
    opt = axon.optim.AdamW(lin.parameters(), lr=1e-3, weight_decay=0.01); axon.optim.SGD; axon.optim.Adam
    out = lin(axon.randn(2,3)).sum(); out.backward(); opt.step(); opt.zero_grad()
    sd = lin.state_dict(); r = lin.load_state_dict(sd, strict=True); r.missing_keys, r.unexpected_keys, r.mismatched
    d = str(tmp_path); axon.save(sd, f"{d}/x.safetensors"); axon.load(f"{d}/x.safetensors")
    a = np.random.rand(2, 8, 5).astype(np.float32); b = np.random.rand(2, 5, 3).astype(np.float32)
    np.testing.assert_allclose(kernels.matmul(a, b), kernels.matmul_ref(a, b), rtol=1e-5)
    q = np.random.randn(1, 4, 3, 8).astype(np.float32); k = np.random.randn(1, 2, 6, 8).astype(np.float32); v = k + 1
    out, lse = kernels.flash_attention(q, k, v, causal=True, window=None, scale=None, block_q=64, block_kv=64)
    assert lse.shape == (1, 4, 3)
    dq, dk, dv = kernels.flash_attention_backward(q, k, v, out, lse, np.ones_like(out), causal=True, window=None, scale=None)
    bb, dd, ll, n = 1, 4, 5, 3
    u = np.random.randn(bb, dd, ll).astype(np.float32); A = -np.random.rand(dd, n).astype(np.float32)
    B = np.random.randn(bb, n, ll).astype(np.float32)
    y, last = kernels.selective_scan(u, np.random.rand(bb, dd, ll).astype(np.float32), A, B, B.copy(), D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=True)
    assert y.shape == (1, 4, 5) and last.shape == (1, 4, 3)
    W = np.random.randn(6, 10).astype(np.float32); packed, scale = kernels.ternary_quantize(W)
    assert packed.dtype == np.uint8 and packed.shape == (6, 3)
    yy = kernels.ternary_matmul(np.random.randn(2, 10).astype(np.float32), packed, scale, 10); assert yy.shape == (2, 6) and yy.dtype == np.float32
    for n_ in ("matmul","flash_attention","flash_attention_backward","selective_scan","ternary_quantize","ternary_matmul"): getattr(kernels, n_ + "_ref")
    m = axon_llm.from_pretrained("tests/fixtures/hf/llama")
    o = m(np.array([[1, 2, 3]])); assert o.shape[:2] == (1, 3)
    o = m(np.array([[1, 2, 3]]), attention_mask=np.array([[1,1,1]]))
    ids = m.generate(np.array([[1, 2, 3]]), max_new_tokens=24, do_sample=False); assert ids.shape[0] == 1
    tok = axon_llm.HFTokenizer.from_pretrained("all-minilm-l6-v2"); assert tok.decode(tok.encode("hello world")).find("hello") >= 0
    assert axon_llm.LLaMAConfig.tiny(); axon_llm.LLaMAForCausalLM(axon_llm.LLaMAConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4))
    reg = axon_llm.llm_registry(); assert "smollm2-135m-instruct" in reg and "all-minilm-l6-v2" in axon_llm.list_models()
    p = axon_llm.download_llm_weights("all-minilm-l6-v2"); assert p.is_dir()
    axon_llm.hub.download_file; axon_llm.hub.register; axon_llm.hub.PretrainedLLM
    for cls in ("GPT2LMHead","Bert","BertForMaskedLM","BertForSequenceClassification","LLaMAForCausalLM","MistralForCausalLM","PhiForCausalLM","SSMForCausalLM","TridentModel"): getattr(axon_llm, cls)
