"""Posterior-predictive throughput: S posterior draws against S deterministic passes.

Usage::

    python benchmarks/predictive.py              # MiniLM-L6, S = 8, batch 16, length 64
    python benchmarks/predictive.py --tiny       # the tiny two-layer BERT of the tests

On one evaluation batch, interleaved and repeated: (a) S forward passes of the posterior mean
(A = μ, the deterministic LoRA pass), (b) S forward passes with the S posterior draws applied
(``model.logits(..., deltas=...)``, the inner loop of :func:`monteclora_pyro.training.evaluate`),
and (c) drawing the S guide samples and turning them into perturbations, which ``predict`` does
once per evaluation, not per batch. The last lines are the ratios (target: (b) <= 1.1 x (a)).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from train_step import build_backbone, make_batch

from monteclora_pyro import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel
from monteclora_pyro.infer import draw_guide


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny BERT instead of MiniLM-L6")
    parser.add_argument("--samples", type=int, default=8, help="posterior draws S")
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats of each")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = MonteCLoRAModel(build_backbone(args.tiny), MonteCLoRAConfig(), num_data=1000)
    guide = MonteCLoRAGuide(model)
    with torch.no_grad():  # a trained-looking adapter: B away from zero, so draws matter
        for layer in model.adapters.values():
            layer.lora_B.normal_(0, 0.02)
    model.hf_model.eval()
    batch = make_batch(model.hf_model.config.vocab_size, args.batch_size, args.length)
    batch.pop("labels")
    s = args.samples

    def draws() -> list[dict]:
        return [model.perturbations(d) for d in draw_guide(guide, s, seed=0)]

    deltas = draws()

    @torch.no_grad()
    def deterministic() -> float:
        start = time.perf_counter()
        for _ in range(s):
            model.logits(**batch).softmax(-1)
        return time.perf_counter() - start

    @torch.no_grad()
    def posterior() -> float:
        start = time.perf_counter()
        for d in deltas:
            model.logits(**batch, deltas=d).softmax(-1)
        return time.perf_counter() - start

    def sampling() -> float:
        start = time.perf_counter()
        draws()
        return time.perf_counter() - start

    with torch.no_grad():
        spread = torch.stack([model.logits(**batch, deltas=d) for d in deltas]).std(0).mean()
    for fn in (deterministic, posterior, sampling):
        fn()
    times = {"deterministic": [], "posterior": [], "sampling": []}
    for i in range(args.repeats):
        pairs = [("deterministic", deterministic), ("posterior", posterior)]
        for name, fn in pairs if i % 2 == 0 else pairs[::-1]:
            times[name].append(fn())
        times["sampling"].append(sampling())
    med = {k: statistics.median(v) for k, v in times.items()}
    n = args.batch_size
    print(
        f"backbone {'tiny BERT' if args.tiny else 'MiniLM-L6'}, S = {s}, batch {n}, length "
        f"{args.length}, {args.threads} thread(s), {args.repeats} interleaved repeats"
    )
    print(f"logit std across draws: {spread:.2e} (the draws do change the output)")
    print(
        f"S deterministic passes: {1000 * med['deterministic']:8.1f} ms  "
        f"({s * n / med['deterministic']:.0f} example-passes/s)"
    )
    print(
        f"S posterior draws:      {1000 * med['posterior']:8.1f} ms  "
        f"({s * n / med['posterior']:.0f} example-passes/s)"
    )
    print(f"drawing S guide samples (once per evaluation): {1000 * med['sampling']:.1f} ms")
    paired = [p / d for p, d in zip(times["posterior"], times["deterministic"], strict=True)]
    q = statistics.quantiles(paired, n=4)
    print(
        f"\nratio S draws / S deterministic passes (target <= 1.1): "
        f"{med['posterior'] / med['deterministic']:.3f} (medians); "
        f"{statistics.median(paired):.3f} (paired, IQR {q[0]:.3f}-{q[2]:.3f})"
    )
    print(
        f"ratio incl. one sampling per batch (worst case, one-batch evaluation): "
        f"{(med['posterior'] + med['sampling']) / med['deterministic']:.3f}"
    )


if __name__ == "__main__":
    main()
