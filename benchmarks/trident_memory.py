"""Question: how much memory do Trident's packed ternary weights take against float32?

Peer: the same TernaryLinear weights stored as dense float32 (what the training form and a
plain float model hold). For the small presets the model is built, packed (``model.pack()``)
and the real array sizes are measured; for the large ones the packed size is computed from the
kernel's layout (uint8 ``[out, ceil(in/4)]`` + one float32 scale per layer), so nothing big is
allocated. Prints packed bytes, float32 bytes and the ratio (packed / float32).

    python benchmarks/trident_memory.py
"""

from __future__ import annotations


def main() -> None:
    from axon_llm.models.trident import TridentConfig, TridentModel
    from axon_llm.ternary import TernaryLinear

    presets = [("tiny", TridentConfig.tiny(), True), ("smoke", TridentConfig.smoke(32000), True),
               ("default_150m", TridentConfig.default_150m(), False), ("medium", TridentConfig.medium(), False),
               ("trident_1b", TridentConfig.trident_1b(32000), False),
               ("trident_3b", TridentConfig.trident_3b(32000), False),
               ("bitnet_2b4t", TridentConfig.bitnet_2b4t(), False)]
    print(f"{'preset':<14}{'packed MiB':>12}{'float32 MiB':>13}{'packed/float32':>16}  how")
    for name, cfg, build in presets:
        model = TridentModel(cfg)
        layers = [m for _, m in model.named_modules() if isinstance(m, TernaryLinear)]
        dense = sum(4 * m.in_features * m.out_features for m in layers)
        if build:
            model.pack()
            packed, dense_measured = model.packed_weight_nbytes()
            assert dense_measured == dense
            how = "measured"
        else:
            packed = sum(m.out_features * ((m.in_features + 3) // 4) + 4 for m in layers)
            how = "layout arithmetic"
        print(f"{name:<14}{packed / 2**20:>12.2f}{dense / 2**20:>13.2f}{packed / dense:>16.4f}  {how}")


if __name__ == "__main__":
    main()
