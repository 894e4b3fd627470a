"""The cost of the Pyro machinery: one SVI step against the same computation in plain torch.

Usage::

    python benchmarks/pyro_overhead.py           # MiniLM-L6, batch 16, length 64
    python benchmarks/pyro_overhead.py --tiny    # the tiny two-layer BERT of the tests
    python benchmarks/pyro_overhead.py --profile # also cProfile the Pyro step

Both steps use one model and guide, with validation off as in the Trainer. ``pyro``:
``elbo_terms`` (trace the guide, replay the model, closed-form KLs per site) + backward + AdamW,
as the Trainer runs it. ``torch``: the same draws, KLs, cooperative term and likelihood written
out by hand with the same distribution objects and no Pyro handler, trace, plate or param
store. With the same seed both give the same loss (checked below), so the difference in time is
what Pyro's machinery costs. Steps are interleaved; the last line is the ratio.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

import pyro
import torch
import torch.nn.functional as F
from torch.distributions import kl_divergence
from train_step import build_backbone, make_batch

from monteclora_pyro import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel
from monteclora_pyro.infer import elbo_terms
from monteclora_pyro.models.objectives import noise_distribution, perturbation
from monteclora_pyro.sites import site_name


def plain_loss(model: MonteCLoRAModel, guide: MonteCLoRAGuide, batch: dict) -> torch.Tensor:
    """The negative ELBO of :func:`elbo_terms`, without Pyro's handlers (same draw order)."""
    cfg = model.config
    n, layers = model.num_data, len(model.adapters)
    kl = torch.zeros(())
    excess = torch.zeros(())
    deltas = {}
    for path, layer in model.adapters.items():
        prior = model._prior(path, layer)
        q_cov = guide.site_distribution(site_name(path, "covariance"))
        cov = q_cov.rsample()
        kl = kl + kl_divergence(q_cov, prior["covariance"]).sum()
        if cfg.concentration_prior == "gamma":
            q_conc = guide.site_distribution(site_name(path, "concentration"))
            alpha = q_conc.rsample()
            kl = kl + kl_divergence(q_conc, prior["concentration"]).sum()
        else:
            alpha = prior["concentration"]
        q_w = guide.site_distribution(site_name(path, "weights"))
        pi = q_w.rsample()
        kl = kl + kl_divergence(q_w, torch.distributions.Dirichlet(alpha)).sum()
        q_noise = noise_distribution(cov, cfg, layer.in_features)
        noise = q_noise.rsample()
        p_noise = (
            prior["noise"] if "noise" in prior else noise_distribution(cov, cfg, layer.in_features)
        )
        kl = kl + kl_divergence(q_noise, p_noise).sum()
        deltas[path] = perturbation(pi, noise, cfg)
        excess = excess + pi.pow(2).sum(-1) - 1.0 / cfg.num_components
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model.logits(**inputs, deltas=deltas)
    labels = batch["labels"]
    nll = F.cross_entropy(logits, labels, reduction="sum") * (n / labels.shape[0])
    cooperative = cfg.cooperative_weight * n / layers * excess
    return nll + model.latent_scale * kl + cooperative


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny BERT instead of MiniLM-L6")
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="cProfile 5 Pyro steps")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pyro.enable_validation(False)  # as in the Trainer's steps; also torch's argument checks
    hf = build_backbone(args.tiny).train()
    model = MonteCLoRAModel(hf, MonteCLoRAConfig(), num_data=1000)
    guide = MonteCLoRAGuide(model)
    params = [p for _, p in model.trainable_parameters()] + list(guide.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    batch = make_batch(hf.config.vocab_size, args.batch_size, args.length)
    n = model.num_data

    def pyro_loss() -> torch.Tensor:
        return elbo_terms(model, guide, **batch)[0]

    def torch_loss() -> torch.Tensor:
        return plain_loss(model, guide, batch)

    hf.eval()  # no dropout for the equality check: same seed, same draws, same loss
    with torch.no_grad():
        torch.manual_seed(1)
        a = pyro_loss()
        torch.manual_seed(1)
        b = torch_loss()
    hf.train()
    print(f"same seed: pyro loss {a.item():.6f}, plain torch loss {b.item():.6f}")

    def step(loss_fn) -> float:
        start = time.perf_counter()
        (loss_fn() / n).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    for _ in range(3):
        step(pyro_loss)
        step(torch_loss)
    times = {"pyro": [], "torch": []}
    for i in range(args.steps):
        pairs = [("pyro", pyro_loss), ("torch", torch_loss)]
        for name, fn in pairs if i % 2 == 0 else pairs[::-1]:
            times[name].append(step(fn))
    med = {k: statistics.median(v) for k, v in times.items()}

    def forward_only(fn) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            fn()
        return time.perf_counter() - start

    fwd = {"pyro": [], "torch": []}
    for _ in range(args.steps):
        fwd["pyro"].append(forward_only(pyro_loss))
        fwd["torch"].append(forward_only(torch_loss))
    fmed = {k: statistics.median(v) for k, v in fwd.items()}
    print(
        f"backbone {'tiny BERT' if args.tiny else 'MiniLM-L6'}, batch {args.batch_size}, "
        f"length {args.length}, {len(model.adapters)} adapted layers, {args.threads} thread(s)"
    )
    for k in ("pyro", "torch"):
        print(
            f"{k:<6} step median {1000 * med[k]:8.1f} ms   loss-only (no grad) "
            f"{1000 * fmed[k]:8.1f} ms"
        )
    print(
        f"Pyro machinery per step: {1000 * (med['pyro'] - med['torch']):.1f} ms "
        f"(loss only: {1000 * (fmed['pyro'] - fmed['torch']):.1f} ms)"
    )
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(5):
            step(pyro_loss)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    paired = [p / t for p, t in zip(times["pyro"], times["torch"], strict=True)]
    q = statistics.quantiles(paired, n=4)
    print(
        f"\nratio pyro step / plain torch step: {med['pyro'] / med['torch']:.3f} (medians); "
        f"{statistics.median(paired):.3f} (paired, IQR {q[0]:.3f}-{q[2]:.3f})"
    )


if __name__ == "__main__":
    main()
