"""End to end: Pyro's own SVI loop learns a separable toy task with either guide."""

from __future__ import annotations

import math

import pyro
import torch
from conftest import VOCAB, tiny_hf_model
from pyro.infer import SVI, TraceMeanField_ELBO

from monteclora_pyro import (
    LoRAGuide,
    MonteCLoRAConfig,
    MonteCLoRAGuide,
    MonteCLoRAModel,
    elbo_terms,
)

NUM_TRAIN = 64
NUM_TEST = 64
LENGTH = 8
BATCH = 16
STEPS = 50
LR = 0.01  # learns on 10/10 seeds with either guide (held-out accuracy 0.84-0.98)
SEED = 0


def toy_data(n: int, seed: int, purity: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced two-class sequences: class c draws most tokens from its own half of the vocab.

    Each token comes from the class's half (ids 2..32 for class 0, 33..63 for class 1) with
    probability ``purity`` and uniformly from all non-pad ids otherwise.
    """
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % 2)[torch.randperm(n, generator=g)]
    half = (VOCAB - 2) // 2
    own = 2 + torch.randint(0, half, (n, LENGTH), generator=g) + half * labels[:, None]
    anywhere = torch.randint(2, VOCAB, (n, LENGTH), generator=g)
    keep = torch.rand(n, LENGTH, generator=g) < purity
    return torch.where(keep, own, anywhere), labels


def train(guide_cls, seed: int = SEED):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    ids, labels = toy_data(NUM_TRAIN, seed=100 + seed)
    model = MonteCLoRAModel(
        tiny_hf_model("bert", hidden=32, seed=seed), MonteCLoRAConfig(r=4), num_data=NUM_TRAIN
    )
    guide = guide_cls(model)
    svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": LR}), TraceMeanField_ELBO())
    g = torch.Generator().manual_seed(seed)
    batches_per_epoch = NUM_TRAIN // BATCH
    losses = []
    for step in range(STEPS):
        if step % batches_per_epoch == 0:
            order = torch.randperm(NUM_TRAIN, generator=g)
        index = order[(step % batches_per_epoch) * BATCH : (step % batches_per_epoch + 1) * BATCH]
        losses.append(svi.step(ids[index], labels=labels[index]))
    return model, guide, losses, (ids, labels)


def accuracy(model: MonteCLoRAModel, seed: int = SEED) -> float:
    ids, labels = toy_data(NUM_TEST, seed=200 + seed)
    with torch.no_grad():
        predicted = model.logits(ids).argmax(-1)  # posterior mean: no noise
    return (predicted == labels).double().mean().item()


def check_learned(model, guide, losses, train_data):
    assert len(losses) == STEPS and all(math.isfinite(v) for v in losses), losses
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    # The loss starts near N·log 2 ≈ 44 (+ the cooperative penalty for MonteCLoRA).
    assert first > 0.5 * NUM_TRAIN * math.log(2), first
    assert last < 0.6 * first, (first, last)
    acc = accuracy(model)
    assert acc >= 0.8, acc  # chance is 0.5
    # B left zero: the adapter itself learnt, not only the head.
    for path, layer in model.adapters.items():
        assert layer.lora_B.abs().max() > 1e-3, path
    ids, labels = train_data
    loss, terms = elbo_terms(model, guide, ids[:BATCH], labels=labels[:BATCH])
    assert torch.isfinite(loss)
    for name, value in terms.items():
        assert torch.isfinite(torch.as_tensor(value)).all(), name
    return acc


def test_toy_data_is_balanced_and_separable_by_token_range():
    ids, labels = toy_data(NUM_TRAIN, seed=100)
    held_ids, held_labels = toy_data(NUM_TEST, seed=200)
    assert labels.sum() == NUM_TRAIN // 2 and held_labels.sum() == NUM_TEST // 2
    assert ids.min() >= 2 and ids.max() < VOCAB
    assert not torch.equal(ids, held_ids)
    # A majority vote over the token ranges is (nearly) perfect: the task is learnable.
    vote = ((held_ids >= 2 + (VOCAB - 2) // 2).double().mean(-1) > 0.5).long()
    assert (vote == held_labels).double().mean() >= 0.95


def test_monteclora_svi_learns_the_toy_task():
    model, guide, losses, data = train(MonteCLoRAGuide)
    initial = MonteCLoRAGuide(
        MonteCLoRAModel(tiny_hf_model("bert", hidden=32), MonteCLoRAConfig(r=4), num_data=64)
    )
    moved = [
        name
        for (name, value), (_, start) in zip(
            guide.named_variational_parameters(),
            initial.named_variational_parameters(),
            strict=True,
        )
        if not torch.allclose(value, start)
    ]
    assert moved, "no variational parameter was updated"
    check_learned(model, guide, losses, data)


def test_lora_guide_svi_learns_the_toy_task():
    model, guide, losses, data = train(LoRAGuide)
    acc = check_learned(model, guide, losses, data)
    assert acc > 0.5
    ids, labels = data
    _, terms = elbo_terms(model, guide, ids, labels=labels)
    # Pinned latents: the objective is the likelihood alone.
    assert all(value == 0 for name, value in terms.items() if name != "nll"), terms
