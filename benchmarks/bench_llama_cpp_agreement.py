"""Question: on SmolLM2 requantised by llama.cpp into each GGUF type, does axon predict what llama.cpp predicts?

Reads llama.cpp's top-64 log-probabilities at every position of a fixed text
(tests/fixtures/gguf_types/llama_cpp.npz, recorded by tests/fixtures/make_gguf_types.py with
llama-cpp-python) and runs axon on the same cached files. Prints per type: top-1 agreement
(fraction of positions where both pick the same next token) and the mean over positions of
KL(llama.cpp || axon), computed over llama.cpp's top 64 tokens (the mass outside them is below
the printed ``mass`` deficit). The peer is llama.cpp itself; axon differs from it because
llama.cpp rounds the activations to 8 bits (Q8_0 / Q8_K) inside its quantised dot products.

Second, the quantisers: every tensor llama.cpp wrote in a type axon can write (Q8_0, Q4_0,
Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K) is quantised again by axon from the same F16 source, and
the fraction of byte-identical blocks is printed (llama.cpp's ``llama_model_quantize`` without
an importance matrix runs the ``quantize_row_*_ref`` functions axon follows).

    PYTHONPATH=.:kernels python benchmarks/bench_llama_cpp_agreement.py [--types Q4_K_M,Q6_K]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default="", help="comma-separated subset (default: every recorded type)")
    args = ap.parse_args()

    import numpy as np

    import axon
    from axon_llm.auto import from_pretrained
    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    from make_gguf_types import HERE, cache_dir, log_softmax

    if not (HERE / "llama_cpp.npz").exists():
        sys.exit("no recorded llama.cpp outputs: run tests/fixtures/make_gguf_types.py with llama-cpp-python")
    rec = np.load(HERE / "llama_cpp.npz")
    meta = json.loads((HERE / "llama_cpp.json").read_text())
    ids = rec["text_ids"].astype(np.int64)
    wanted = [t for t in args.types.split(",") if t] or [t for t in meta["files"] if t != "axon-Q8_0"]
    print(f"{len(ids)} positions of: {meta['text'][:60]}...")
    print(f"{'type':8} {'MB':>5} | {'top-1 agree':>11} | {'mean KL':>9} | {'mass':>6}")
    for name in wanted:
        info = meta["files"][name]
        path = cache_dir() / info["file"]
        if not path.exists() or path.stat().st_size != info["bytes"]:
            print(f"{name:8} missing {path} (run make_gguf_types.py)")
            continue
        model = from_pretrained(path)
        with axon.no_grad():
            lp = log_softmax(model(ids[None]).numpy()[0])               # [T, V]
        top_ids, top_lp = rec[f"{name}_ids"], rec[f"{name}_logprobs"].astype(np.float64)
        agree = float(np.mean(lp.argmax(-1) == top_ids[:, 0]))
        p = np.exp(top_lp)                                              # llama.cpp's probabilities of its top 64
        kl = float(np.mean(np.sum(p * (top_lp - np.take_along_axis(lp, top_ids, -1)), axis=-1)))
        print(f"{name:8} {info['bytes'] / 1e6:5.0f} | {agree:11.3f} | {kl:9.5f} | {float(p.sum(-1).mean()):6.3f}")
        del model
    quantiser_agreement(wanted, meta, cache_dir())


def quantiser_agreement(names, meta, folder) -> None:
    """Byte-identical blocks between llama.cpp's quantisation of the F16 file and axon's."""
    import numpy as np

    from axon_kernels.quant_encode import WRITE_TYPES, quantize
    from axon_kernels.quant_formats import BLOCK
    from axon_llm.loaders.gguf import GGUFFile

    print(f"\nquantisers: axon vs llama.cpp from the same F16 weights")
    print(f"{'file':8} {'type':5} {'tensors':>7} {'blocks':>9} | {'identical':>9}")
    src = GGUFFile(folder / meta["files"]["F16"]["file"])
    for name in names:
        path = folder / meta["files"][name]["file"]
        if name in ("F16", "BF16") or not path.exists():
            continue
        g = GGUFFile(path)
        by_type: dict[str, list[int]] = {}
        for tname, info in g.tensors.items():
            if info.type_name not in WRITE_TYPES or info.type_name in ("F32", "F16", "BF16"):
                continue
            x = np.asarray(src.tensor_data(tname), dtype=np.float32)
            ours = quantize(info.type_name, x).reshape(-1, BLOCK[info.type_name][1])
            theirs = g.tensor_data(tname).raw.reshape(-1, BLOCK[info.type_name][1])
            same = int(np.all(ours == theirs, axis=1).sum())
            counts = by_type.setdefault(info.type_name, [0, 0, 0])
            counts[0] += 1
            counts[1] += ours.shape[0]
            counts[2] += same
        for qtype, (n, blocks, same) in sorted(by_type.items()):
            print(f"{name:8} {qtype:5} {n:7d} {blocks:9d} | {same / blocks:9.5f}")
        g.close()


if __name__ == "__main__":
    main()
