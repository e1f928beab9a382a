"""Dev-only check (not collected by pytest; CI has no torch): axon's ops, layers and optimizers
against PyTorch in float64 — values, gradients and parameter trajectories.

    python -m tests.axon.torch_parity      # exits 1 on any mismatch

The pytest suite checks the same things against NumPy definitions and central differences;
this script confirms the torch semantics (argument order, defaults, edge conventions).
"""

import sys

import numpy as np
import torch
import torch.nn.functional as TF

import axon
import axon.nn.functional as F

FAILED = []
r = np.random.default_rng(0)
def A(x): return axon.tensor(x, requires_grad=True)
def T(x): return torch.tensor(x, requires_grad=True)
def cmp(name, fa, ft, *arrs, tol=1e-9):
    xa = [A(a) if a.dtype.kind == 'f' else axon.tensor(a) for a in arrs]
    xt = [T(a) if a.dtype.kind == 'f' else torch.tensor(a) for a in arrs]
    ya, yt = fa(*xa), ft(*xt)
    w = r.standard_normal(yt.shape)
    (ya * axon.tensor(w)).sum().backward(); (yt * torch.tensor(w)).sum().backward()
    err = np.abs(ya.numpy() - yt.detach().numpy()).max()
    gerr = max((np.abs(a.grad.numpy() - t.grad.numpy()).max() for a, t in zip(xa, xt) if t.requires_grad), default=0)
    ok = err < tol and gerr < tol
    FAILED.extend([] if ok else [name])
    print(f"{name:<28} value {err:.1e} grad {gerr:.1e}", "OK" if ok else "MISMATCH")
x = r.standard_normal((3, 5, 8)); w = r.standard_normal((6, 8)); b = r.standard_normal(6)
cmp("linear", lambda x, w, b: F.linear(x, w, b), lambda x, w, b: TF.linear(x, w, b), x, w, b)
g = r.standard_normal(8); bb = r.standard_normal(8)
cmp("layer_norm", lambda x, g, b: F.layer_norm(x, (8,), g, b), lambda x, g, b: TF.layer_norm(x, (8,), g, b), x, g, bb)
cmp("rms_norm", lambda x, g: F.rms_norm(x, (8,), g, 1e-6), lambda x, g: TF.rms_norm(x, (8,), g, 1e-6), x, g)
cmp("gelu", lambda x: F.gelu(x), lambda x: TF.gelu(x), x)
cmp("gelu_tanh", lambda x: F.gelu_tanh(x), lambda x: TF.gelu(x, approximate="tanh"), x)
cmp("silu", F.silu, TF.silu, x); cmp("softplus b2 t1", lambda x: F.softplus(x, 2, 1), lambda x: TF.softplus(x, 2, 1), x)
cmp("log_softmax", lambda x: F.log_softmax(x, 1), lambda x: TF.log_softmax(x, 1), x)
lg = r.standard_normal((7, 5)); tg = np.array([0, 4, -100, 2, 2, 1, 3])
for red in ("mean", "sum", "none"):
    cmp(f"cross_entropy {red} ls.1", lambda x, t: F.cross_entropy(x, t, reduction=red, label_smoothing=0.1),
        lambda x, t: TF.cross_entropy(x, t, reduction=red, label_smoothing=0.1), lg, tg)
lg3 = r.standard_normal((2, 5, 3)); tg3 = np.array([[0, 4, 1], [2, -100, 3]])
cmp("cross_entropy [N,C,d]", lambda x, t: F.cross_entropy(x, t), lambda x, t: TF.cross_entropy(x, t), lg3, tg3)
q = r.standard_normal((2, 4, 5, 8)); k = r.standard_normal((2, 2, 5, 8)); v = r.standard_normal((2, 2, 5, 8))
cmp("sdpa gqa causal", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
    lambda q, k, v: TF.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True), q, k, v)
m = r.random((2, 1, 5, 5)) > 0.3; m[..., 0] = True
cmp("sdpa bool mask scale", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=0.2, enable_gqa=True),
    lambda q, k, v: TF.scaled_dot_product_attention(q, k, v, attn_mask=torch.tensor(m), scale=0.2, enable_gqa=True), q, k, v)
fm = r.standard_normal((5, 5))
cmp("sdpa float mask", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=fm, enable_gqa=True),
    lambda q, k, v: TF.scaled_dot_product_attention(q, k, v, attn_mask=torch.tensor(fm), enable_gqa=True), q, k, v)
xc = r.standard_normal((2, 6, 11)); wc = r.standard_normal((4, 3, 3)); bc = r.standard_normal(4)
cmp("conv1d g2 s2 p2 d2", lambda x, w, b: F.conv1d(x, w, b, 2, 2, 2, 2), lambda x, w, b: TF.conv1d(x, w, b, 2, 2, 2, 2), xc, wc, bc)
wd = r.standard_normal((6, 1, 4))
cmp("conv1d depthwise causal", lambda x, w: F.conv1d(x, w, None, padding=3, groups=6), lambda x, w: TF.conv1d(x, w, None, padding=3, groups=6), xc, wd)
cmp("conv1d same", lambda x, w, b: F.conv1d(x, w, b, padding="same", groups=2), lambda x, w, b: TF.conv1d(x, w, b, padding="same", groups=2), xc, wc, bc)
E = r.standard_normal((10, 4)); ids = np.array([[1, 2, 0], [0, 9, 1]])
cmp("embedding pad0", lambda i, e: F.embedding(i, e, padding_idx=0), lambda i, e: TF.embedding(i, e, padding_idx=0), ids, E)
cmp("var/std/logsumexp", lambda x: x.var(1) + x.std(-1, keepdim=True).sum(1) + x.logsumexp(0).sum(), lambda x: x.var(1) + x.std(-1, keepdim=True).sum(1) + x.logsumexp(0).sum(), x)
cmp("max dim/gather/topk", lambda x: x.max(-1).values + x.topk(2, -1).values.sum(-1), lambda x: x.max(-1).values + x.topk(2, -1).values.sum(-1), x)
cmp("pad/tril/repeat_interleave", lambda x: axon.pad(x, (1, 2, 0, 1), value=0.3).tril(1).repeat_interleave(2, 0), lambda x: TF.pad(x, (1, 2, 0, 1), value=0.3).tril(1).repeat_interleave(2, 0), x)
# optimizers
for name, ca, ct, kw in [("SGD nesterov wd", axon.optim.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)),
                         ("SGD damp", axon.optim.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.3)),
                         ("Adam wd", axon.optim.Adam, torch.optim.Adam, dict(lr=0.1, weight_decay=0.1, betas=(0.8, 0.95))),
                         ("AdamW", axon.optim.AdamW, torch.optim.AdamW, dict(lr=0.1, weight_decay=0.1))]:
    p0 = r.standard_normal(5)
    pa = axon.nn.Parameter(p0.copy()); pt = torch.nn.Parameter(torch.tensor(p0.copy()))
    oa, ot = ca([pa], **kw), ct([pt], **kw)
    for _ in range(5):
        oa.zero_grad(); ot.zero_grad()
        (pa * pa * pa).sum().backward(); (pt * pt * pt).sum().backward()
        oa.step(); ot.step()
    e = np.abs(pa.data - pt.detach().numpy()).max()
    FAILED.extend([] if e < 1e-12 else [name])
    print(f"{name:<28} params {e:.1e}", "OK" if e < 1e-12 else "MISMATCH")
pa = [axon.nn.Parameter(r.standard_normal(3)) for _ in range(2)]; pt = [torch.nn.Parameter(torch.tensor(p.data.copy())) for p in pa]
for a, t in zip(pa, pt):
    gg = r.standard_normal(3); a.grad = axon.tensor(gg); t.grad = torch.tensor(gg)
na = axon.optim.clip_grad_norm_(pa, 0.5); nt = torch.nn.utils.clip_grad_norm_(pt, 0.5)
e = max(abs(na.item() - nt.item()) / nt.item(), max(np.abs(a.grad.numpy() - t.grad.numpy()).max() for a, t in zip(pa, pt)))
FAILED.extend([] if e < 1e-6 else ["clip_grad_norm_"])
print(f"{'clip_grad_norm_':<28} {e:.1e}", "OK" if e < 1e-6 else "MISMATCH")
if FAILED:
    print("mismatches:", ", ".join(FAILED))
    sys.exit(1)
