"""Training-step time and memory of our MonteCLoRA and LoRA against PEFT's, interleaved.

Usage::

    python benchmarks/train_step.py               # MiniLM-L6, batch 16, length 64
    python benchmarks/train_step.py --tiny        # the tiny two-layer BERT of the tests
    python benchmarks/train_step.py --no-rss      # skip the peak-RSS subprocesses

Five methods on the same backbone, batch and optimiser (AdamW), each one full step (loss,
backward, optimiser step) as :class:`monteclora_pyro.training.Trainer` runs it:

- ``monteclora``: our Pyro model with ``MonteCLoRAGuide`` (``elbo_terms``);
- ``monteclora-bayes``: the same at ``MonteCLoRAConfig.uncertainty()`` (the Bayesian
  objective, T = 0.01), the default for uncertainty work;
- ``lora``: our Pyro model with ``LoRAGuide``;
- ``peft-lora`` and ``peft-monteclora``: PEFT's LoRA and MonteCLoRA (``PeftMethod``: cross
  entropy plus PEFT's regularisation loss).

Steps alternate between the methods, so that machine noise hits all alike; the figures are
medians. Memory is measured twice: the bytes autograd saves for the backward pass in one step
(exact, in this process), and the peak resident set size of a fresh process per method that
builds the model and runs a few steps (``ru_maxrss``; it includes Python, torch and the
backbone). The last lines are the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
from transformers import BertConfig, BertForSequenceClassification

from monteclora_pyro import MonteCLoRAConfig
from monteclora_pyro.backbones import load_backbone
from monteclora_pyro.training import build_method

METHODS = ("monteclora", "monteclora-bayes", "lora", "peft-lora", "peft-monteclora")


def build_backbone(tiny: bool) -> torch.nn.Module:
    if tiny:
        config = BertConfig(
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            num_labels=2,
        )
        return BertForSequenceClassification(config)
    return load_backbone("minilm", num_labels=2)[0]


def build(method: str, tiny: bool, lr: float = 1e-4):
    """(adapter, optimiser) of a method, as the Trainer builds them."""
    hf = build_backbone(tiny)
    if method == "monteclora-bayes":
        cfg, method = MonteCLoRAConfig.uncertainty(modules_to_save=["classifier"]), "monteclora"
    else:
        cfg = MonteCLoRAConfig(modules_to_save=["classifier"])
    adapter = build_method(method, hf, cfg, num_data=1000)
    adapter.network.train()
    return adapter, torch.optim.AdamW(adapter.params, lr=lr)


def make_batch(vocab: int, batch_size: int, length: int) -> dict:
    ids = torch.randint(5, vocab, (batch_size, length))
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": torch.randint(0, 2, (batch_size,)),
    }


def step(adapter, optimizer, batch) -> tuple[float, float]:
    """One training step; returns its wall time and this process's CPU time, in seconds."""
    start, cpu = time.perf_counter(), time.process_time()
    loss, _ = adapter.loss(batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start, time.process_time() - cpu


def saved_bytes(adapter, batch) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one loss evaluation."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = adapter.loss(batch)
    loss.backward()
    for p in adapter.params:
        p.grad = None
    return total


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_child(method: str, tiny: bool, batch_size: int, length: int, steps: int) -> None:
    """Build one method in this (fresh) process and run ``steps`` steps; print RSS as JSON.

    ``imports``: resident set after the imports; ``built``: after building the model;
    ``peak``: the high-water mark during the steps (reset through ``/proc/self/clear_refs``
    after building, so the import-time peak does not hide it).
    """
    torch.manual_seed(0)
    torch.set_num_threads(1)
    imports = _status_kib("VmRSS")
    adapter, optimizer = build(method, tiny)
    vocab = adapter.network.config.vocab_size
    batch = make_batch(vocab, batch_size, length)
    built = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    for _ in range(steps):
        step(adapter, optimizer, batch)
    peak = _status_kib("VmHWM")
    print(json.dumps({"imports": imports, "built": built, "peak": peak}))


def peak_rss(args) -> dict[str, dict]:
    """Peak RSS (KiB) per method, each in a fresh process; methods alternate over rounds."""
    results: dict[str, list[dict]] = {m: [] for m in METHODS}
    for round_ in range(args.rss_rounds):
        order = METHODS if round_ % 2 == 0 else METHODS[::-1]
        for method in order:
            cmd = [sys.executable, __file__, "--rss-child", method]
            cmd += ["--batch-size", str(args.batch_size), "--length", str(args.length)]
            cmd += ["--tiny"] if args.tiny else []
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[method].append(json.loads(out.strip().splitlines()[-1]))
    return {m: min(rs, key=lambda r: r["peak"]) for m, rs in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny BERT instead of MiniLM-L6")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per method")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS processes")
    parser.add_argument("--rss-rounds", type=int, default=1)
    parser.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.tiny, args.batch_size, args.length, steps=3)
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    runs = {m: build(m, args.tiny) for m in METHODS}
    vocab = runs["lora"][0].network.config.vocab_size
    batch = make_batch(vocab, args.batch_size, args.length)
    for adapter, optimizer in runs.values():
        for _ in range(3):
            step(adapter, optimizer, batch)
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    cpu: dict[str, list[float]] = {m: [] for m in METHODS}
    for i in range(args.steps):
        order = METHODS if i % 2 == 0 else METHODS[::-1]
        for m in order:
            wall, used = step(*runs[m], batch)
            times[m].append(wall)
            cpu[m].append(used)
    saved = {m: saved_bytes(runs[m][0], batch) for m in METHODS}
    median = {m: statistics.median(v) for m, v in times.items()}
    print(
        f"backbone {'tiny BERT' if args.tiny else 'MiniLM-L6'}, batch {args.batch_size}, "
        f"length {args.length}, {args.threads} thread(s), {args.steps} interleaved steps each"
    )
    print(
        f"{'method':<17}{'median ms':>10}{'IQR ms':>16}{'CPU ms':>8}{'trainable':>12}"
        f"{'saved MiB':>11}"
    )
    for m in METHODS:
        q = statistics.quantiles(times[m], n=4)
        trainable = sum(p.numel() for p in runs[m][0].params)
        print(
            f"{m:<17}{1000 * median[m]:>10.1f}{1000 * q[0]:>8.1f}-{1000 * q[2]:<7.1f}"
            f"{1000 * statistics.median(cpu[m]):>8.1f}{trainable:>12}{saved[m] / 2**20:>11.2f}"
        )
    rss = None if args.no_rss else peak_rss(args)
    if rss:
        print(
            f"\n{'method':<17}{'after imports':>14}{'after build':>12}{'step peak':>11}"
            f"{'peak - imports':>16}  (MiB, fresh process each)"
        )
        for m in METHODS:
            r = rss[m]
            print(
                f"{m:<17}{r['imports'] / 1024:>14.1f}{r['built'] / 1024:>12.1f}"
                f"{r['peak'] / 1024:>11.1f}{(r['peak'] - r['imports']) / 1024:>16.1f}"
            )

    def paired(a: str, b: str, clock: dict = times) -> str:
        """Median of step-by-step ratios (neighbouring steps share the machine's load)."""
        ratios = [x / y for x, y in zip(clock[a], clock[b], strict=True)]
        q = statistics.quantiles(ratios, n=4)
        return f"{statistics.median(ratios):.3f} (paired; IQR {q[0]:.3f}-{q[2]:.3f})"

    print("\nratios (target: ours monteclora <= 1.05 x ours lora, and < peft-monteclora)")
    print(f"paired     monteclora / lora:            {paired('monteclora', 'lora')}")
    print(f"paired     monteclora / peft-monteclora: {paired('monteclora', 'peft-monteclora')}")
    print(f"paired     monteclora-bayes / lora:      {paired('monteclora-bayes', 'lora')}")
    print(f"paired     peft-monteclora / peft-lora:  {paired('peft-monteclora', 'peft-lora')}")
    print(f"paired     lora / peft-lora:             {paired('lora', 'peft-lora')}")
    print(f"CPU time   monteclora / lora:            {paired('monteclora', 'lora', cpu)}")
    print(
        f"CPU time   monteclora / peft-monteclora: {paired('monteclora', 'peft-monteclora', cpu)}"
    )
    print(f"step time  monteclora / lora:            {median['monteclora'] / median['lora']:.3f}")
    print(
        f"step time  monteclora / peft-monteclora: "
        f"{median['monteclora'] / median['peft-monteclora']:.3f}"
    )
    print(
        f"step time  peft-monteclora / peft-lora:  "
        f"{median['peft-monteclora'] / median['peft-lora']:.3f}"
    )
    print(f"step time  lora / peft-lora:             {median['lora'] / median['peft-lora']:.3f}")
    print(f"saved tensors monteclora / lora:         {saved['monteclora'] / saved['lora']:.3f}")
    print(
        f"saved tensors peft-monteclora / peft-lora: "
        f"{saved['peft-monteclora'] / saved['peft-lora']:.3f}"
    )
    if rss:

        def own(m: str) -> float:
            return rss[m]["peak"] - rss[m]["imports"]

        print(
            f"peak RSS - imports  monteclora / lora:            "
            f"{own('monteclora') / own('lora'):.3f}"
        )
        print(
            f"peak RSS - imports  peft-monteclora / peft-lora:  "
            f"{own('peft-monteclora') / own('peft-lora'):.3f}"
        )
        print(
            f"peak RSS - imports  monteclora / peft-monteclora: "
            f"{own('monteclora') / own('peft-monteclora'):.3f}"
        )


if __name__ == "__main__":
    main()
