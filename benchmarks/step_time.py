"""Time one training step of MonteCLoRA against plain LoRA, interleaved, in one process.

Usage::

    python benchmarks/step_time.py              # MiniLM-L6, batch 16, length 64
    python benchmarks/step_time.py --tiny       # the tiny two-layer BERT of the tests

Both methods run the same loop (``elbo_terms`` + backward + AdamW step) on the same model and
batch; steps alternate between the two so that machine noise hits both alike. The last line is
the ratio MonteCLoRA / LoRA of the median step time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from train_step import build_backbone

from monteclora_pyro import LoRAGuide, MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel
from monteclora_pyro.infer import elbo_terms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny BERT instead of MiniLM-L6")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per method")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--covariance", default="full", choices=["full", "diagonal"])
    args = parser.parse_args()
    torch.manual_seed(0)
    runs = {}
    for name, guide_cls in (("monteclora", MonteCLoRAGuide), ("lora", LoRAGuide)):
        hf = build_backbone(args.tiny).train()
        model = MonteCLoRAModel(hf, MonteCLoRAConfig(covariance=args.covariance), num_data=1000)
        guide = guide_cls(model)
        params = [p for _, p in model.trainable_parameters()] + list(guide.parameters())
        runs[name] = (model, guide, torch.optim.AdamW(params, lr=1e-4))
    vocab = runs["lora"][0].hf_model.config.vocab_size
    ids = torch.randint(5, vocab, (args.batch_size, args.length))
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 2, (args.batch_size,))

    def step(name: str) -> float:
        model, guide, optimizer = runs[name]
        start = time.perf_counter()
        loss, _ = elbo_terms(model, guide, ids, attention_mask=mask, labels=labels)
        (loss / model.num_data).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    for name in runs:
        for _ in range(3):
            step(name)
    times = {name: [] for name in runs}
    for _ in range(args.steps):
        for name in runs:
            times[name].append(step(name))
    for name, values in times.items():
        model, guide, _ = runs[name]
        extra = sum(p.numel() for p in guide.parameters())
        print(
            f"{name:<11} median step {1000 * statistics.median(values):8.2f} ms   "
            f"guide parameters {extra} ({extra // len(model.adapters)} per layer)"
        )
    ratio = statistics.median(times["monteclora"]) / statistics.median(times["lora"])
    print(f"step time ratio monteclora / lora: {ratio:.3f}")


if __name__ == "__main__":
    main()
