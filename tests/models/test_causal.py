"""Causal language models: multiple-choice and next-token likelihoods on a tiny LLaMA."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_causal_lm, tiny_hf_model
from pyro import poutine
from torch.utils.data import DataLoader

from monteclora_pyro import (
    LoRAGuide,
    MonteCLoRAConfig,
    MonteCLoRAGuide,
    MonteCLoRAModel,
    elbo_terms,
    load_adapter,
    save_adapter,
)
from monteclora_pyro.infer import draw_guide
from monteclora_pyro.models.likelihood import IGNORE_INDEX, is_causal_lm
from monteclora_pyro.models.objectives import PaperObjective
from monteclora_pyro.sites import site_name
from monteclora_pyro.training import predict, token_metrics

SITES = PaperObjective.kinds  # the latent sites of each layer (paper objective)
KEYS = [10, 11, 12, 13]
ANSWERS = [20, 21, 22, 23]


def choice_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Two questions with 3 choices of different lengths; the second has one padded choice."""
    g = torch.Generator().manual_seed(seed)
    # (context length, answer length) per choice; 0 = padded choice.
    layout = [[(3, 1), (3, 2), (3, 3)], [(4, 2), (4, 1), (0, 0)]]
    length = 7
    ids = torch.zeros(2, 3, length, dtype=torch.long)
    attention = torch.zeros_like(ids)
    answers = torch.zeros_like(ids)
    choice_mask = torch.zeros(2, 3, dtype=torch.long)
    for b, row in enumerate(layout):
        for c, (n_ctx, n_ans) in enumerate(row):
            if n_ctx == 0:
                continue
            n = n_ctx + n_ans
            ids[b, c, :n] = torch.randint(3, 64, (n,), generator=g)
            attention[b, c, :n] = 1
            answers[b, c, n_ctx:n] = 1
            choice_mask[b, c] = 1
    return {
        "input_ids": ids,
        "attention_mask": attention,
        "answer_mask": answers,
        "choice_mask": choice_mask,
        "labels": torch.tensor([2, 1]),
    }


def token_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Three right-padded prompt/response sequences with -100 on prompt and padding."""
    g = torch.Generator().manual_seed(seed)
    lengths = [(3, 4), (2, 2), (4, 1)]  # (prompt, response)
    length = 7
    ids = torch.zeros(3, length, dtype=torch.long)
    attention = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for b, (n_prompt, n_resp) in enumerate(lengths):
        n = n_prompt + n_resp
        ids[b, :n] = torch.randint(3, 64, (n,), generator=g)
        attention[b, :n] = 1
        labels[b, n_prompt:n] = ids[b, n_prompt:n]
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def perturb_b(model: MonteCLoRAModel, seed: int = 5, scale: float = 0.3) -> None:
    """Move every B away from zero so that the adapters change the backbone's output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.adapters.values():
            layer.lora_B.copy_(scale * torch.randn(layer.lora_B.shape, generator=g))


def reference_choice_scores(hf_model, batch: dict) -> torch.Tensor:
    """Each real choice alone, unpadded: Σ over answer tokens of log_softmax(logits[t-1])[x_t]."""
    ids, answers, valid = batch["input_ids"], batch["answer_mask"], batch["choice_mask"]
    scores = torch.full(valid.shape, -math.inf, dtype=torch.float32)
    for b in range(ids.shape[0]):
        for c in range(ids.shape[1]):
            if not valid[b, c]:
                continue
            n = int(batch["attention_mask"][b, c].sum())
            seq = ids[b, c, :n][None]
            log_probs = torch.log_softmax(hf_model(input_ids=seq).logits[0], -1)
            total = 0.0
            for t in range(1, n):
                if answers[b, c, t]:
                    total = total + log_probs[t - 1, seq[0, t]]
            scores[b, c] = total
    return scores


def mc_model(num_data: int = 50, **cfg) -> MonteCLoRAModel:
    config = MonteCLoRAConfig(r=4, num_components=3, **cfg)
    return MonteCLoRAModel(
        tiny_causal_lm(), config, num_data=num_data, likelihood="multiple_choice"
    )


# --- construction and errors ---------------------------------------------------------------


def test_causal_lm_needs_a_likelihood_and_the_right_model():
    assert is_causal_lm(tiny_causal_lm()) and not is_causal_lm(tiny_hf_model("llama"))
    with pytest.raises(ValueError, match=r"causal language model: pass likelihood="):
        MonteCLoRAModel(tiny_causal_lm(), num_data=10)
    with pytest.raises(ValueError, match=r"'classification' needs a sequence classifier"):
        MonteCLoRAModel(tiny_causal_lm(), num_data=10, likelihood="classification")
    with pytest.raises(ValueError, match=r"needs a causal language model"):
        MonteCLoRAModel(tiny_hf_model("llama"), num_data=10, likelihood="multiple_choice")
    with pytest.raises(ValueError, match=r"likelihood='ranking' is invalid"):
        MonteCLoRAModel(tiny_causal_lm(), num_data=10, likelihood="ranking")


def test_causal_defaults_adapt_q_v_and_train_no_head():
    model = mc_model()
    assert model.head_names == [] and model.num_labels is None
    assert [p.rsplit(".", 1)[-1] for p in model.adapters] == ["q_proj", "v_proj"] * 2
    trainable = {n for n, p in model.hf_model.named_parameters() if p.requires_grad}
    assert trainable == {f"{path}.lora_{ab}" for path in model.adapters for ab in "AB"}


def test_choice_input_errors():
    model = mc_model()
    batch = choice_batch()

    def run(**change):
        inputs = {**batch, **change}
        poutine.trace(model).get_trace(**{k: v for k, v in inputs.items() if v is not None})

    with pytest.raises(ValueError, match=r"need an answer_mask"):
        run(answer_mask=None)
    empty = batch["answer_mask"].clone()
    empty[0, 1] = 0
    with pytest.raises(
        ValueError, match=r"answer_mask is empty for \(example, choice\) \[\[0, 1\]\]"
    ):
        run(answer_mask=empty)
    first = batch["answer_mask"].clone()
    first[0, 0, 0] = 1
    with pytest.raises(ValueError, match=r"position 0"):
        run(answer_mask=first)
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        run(labels=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"not choice indices 0..2: the batch has 3 choices"):
        run(labels=torch.tensor([3, 0]))
    with pytest.raises(ValueError, match=r"examples \[1\]: the label points to a padded choice"):
        run(labels=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"shape \(batch, choices, length\)"):
        run(input_ids=batch["input_ids"][:, 0], attention_mask=None, answer_mask=None)


def test_next_token_label_errors():
    model = MonteCLoRAModel(tiny_causal_lm(), num_data=10, likelihood="next_token")
    batch = token_batch()
    no_response = batch["labels"].clone()
    no_response[1] = IGNORE_INDEX
    with pytest.raises(ValueError, match=r"examples \[1\] of the batch have no response tokens"):
        poutine.trace(model).get_trace(**{**batch, "labels": no_response})
    with pytest.raises(ValueError, match=r"must have the shape of input_ids"):
        poutine.trace(model).get_trace(**{**batch, "labels": batch["labels"][:, :5]})
    too_big = batch["labels"].clone()
    too_big[0, 4] = 64
    with pytest.raises(ValueError, match=r"ids >= the vocabulary size 64"):
        poutine.trace(model).get_trace(**{**batch, "labels": too_big})


# --- sites, scores and the objective --------------------------------------------------------


def test_trace_site_parity_with_the_classifier():
    cfg = MonteCLoRAConfig(r=4, num_components=3)
    classifier = MonteCLoRAModel(tiny_hf_model("llama", num_labels=3), cfg, num_data=50)
    causal = MonteCLoRAModel(tiny_causal_lm(), cfg, num_data=50, likelihood="multiple_choice")
    tokens = MonteCLoRAModel(tiny_causal_lm(), cfg, num_data=50, likelihood="next_token")
    ref = poutine.trace(classifier).get_trace(
        torch.randint(2, 64, (2, 5)), labels=torch.tensor([0, 2])
    )
    mc = poutine.trace(causal).get_trace(**choice_batch())
    nt = poutine.trace(tokens).get_trace(**token_batch())

    def latent(trace):
        return {
            name: (tuple(site["value"].shape), site["scale"])
            for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and name != "data"
        }

    expected = {site_name(p, s) for p in classifier.adapters for s in SITES}
    assert set(latent(ref)) == expected
    assert latent(mc) == latent(ref) == latent(nt)
    y = mc.nodes["y"]
    assert y["is_observed"] and y["scale"] == pytest.approx(50 / 2)
    assert y["fn"].batch_shape == (2,) and y["fn"].event_shape == ()
    assert y["fn"].logits.shape == (2, 3) and y["value"].tolist() == [2, 1]
    # The padded choice of example 1 has probability zero.
    assert y["fn"].probs[1, 2].item() == 0.0 and y["fn"].probs[1].sum().item() == pytest.approx(1)
    y = nt.nodes["y"]
    assert y["scale"] == pytest.approx(50 / 3)
    assert y["fn"].batch_shape == (3,) and y["fn"].event_shape == (6,)
    assert y["value"].shape == (3, 6) and int(y["value"].max()) < 64
    for trace in (mc, nt):
        assert trace.nodes["cooperative"]["is_observed"]


def test_choice_scores_equal_summed_answer_log_probs():
    model = mc_model()
    perturb_b(model)
    batch = choice_batch()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        scores = model.logits(**inputs)
        expected = reference_choice_scores(model.hf_model, batch)
        assert scores[1, 2].item() == -math.inf
        torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
        # A posterior draw: the same computation with δ set on every adapter.
        deltas = model.perturbations(draw_guide(MonteCLoRAGuide(model), 1, seed=3)[0])
        drawn = model.logits(**inputs, deltas=deltas)
        for path, delta in deltas.items():
            model.adapters[path].delta = delta * 1e3  # ε is tiny: magnify δ to make it visible
        try:
            magnified = reference_choice_scores(model.hf_model, batch)
        finally:
            for path in deltas:
                model.adapters[path].delta = None
        big = model.logits(**inputs, deltas={p: d * 1e3 for p, d in deltas.items()})
    torch.testing.assert_close(big, magnified, rtol=1e-5, atol=1e-5)
    assert (big - scores)[batch["choice_mask"].bool()].abs().max() > 1e-3
    assert (drawn - scores)[batch["choice_mask"].bool()].abs().max() < 1e-2


def test_lora_guide_loss_is_scaled_choice_nll():
    n = 50
    model = mc_model(num_data=n)
    perturb_b(model)
    batch = choice_batch()
    loss, terms = elbo_terms(model, LoRAGuide(model), **batch)
    with torch.no_grad():
        scores = reference_choice_scores(model.hf_model, batch)
    nll = -torch.log_softmax(scores, -1).gather(1, batch["labels"][:, None]).sum()
    assert loss.item() == pytest.approx(n / 2 * nll.item(), rel=1e-5)
    assert terms["nll"].item() == pytest.approx(loss.item(), rel=1e-6)


def test_lora_guide_loss_is_scaled_token_nll():
    n = 40
    model = MonteCLoRAModel(
        tiny_causal_lm(), MonteCLoRAConfig(r=4), num_data=n, likelihood="next_token"
    )
    perturb_b(model)
    batch = token_batch()
    loss, _ = elbo_terms(model, LoRAGuide(model), **batch)
    with torch.no_grad():
        logits = model.hf_model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
    cross_entropy = F.cross_entropy(
        logits[:, :-1].reshape(-1, 64),
        batch["labels"][:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    assert int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) == 7
    assert loss.item() == pytest.approx(n / 3 * cross_entropy.item(), rel=1e-5)


def synthetic_choices(seed: int = 0) -> dict[str, torch.Tensor]:
    """24 questions "5 key 6 ?" whose right answer token is determined by the key."""
    g = torch.Generator().manual_seed(seed)
    rows, labels = [], []
    for i, key in enumerate(KEYS):
        for _ in range(6):
            others = [a for a in ANSWERS if a != ANSWERS[i]]
            picked = torch.randperm(3, generator=g)[:2].tolist()
            choices = [ANSWERS[i]] + [others[p] for p in picked]
            order = torch.randperm(3, generator=g).tolist()
            rows.append([[5, key, 6, choices[o]] for o in order])
            labels.append(order.index(0))
    ids = torch.tensor(rows)
    answers = torch.zeros_like(ids)
    answers[..., -1] = 1
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "answer_mask": answers,
        "labels": torch.tensor(labels),
    }


def test_svi_learns_a_learnable_multiple_choice_set():
    batch = synthetic_choices()
    model = mc_model(num_data=24)
    guide = MonteCLoRAGuide(model)
    loader = DataLoader([batch], batch_size=None)
    before = predict(model, guide, loader, num_samples=2, seed=0)
    params = [p for _, p in model.trainable_parameters()] + list(guide.parameters())
    optimizer = torch.optim.Adam(params, lr=0.05)
    for _ in range(15):
        loss, _ = elbo_terms(model, guide, **batch)
        (loss / 24).backward()
        optimizer.step()
        optimizer.zero_grad()
    after = predict(model, guide, loader, num_samples=2, seed=0)
    acc = {
        name: (p.mean_probs.argmax(-1) == p.labels).mean()
        for name, p in (("b", before), ("a", after))
    }
    assert acc["b"] <= 0.5 and acc["a"] >= 0.9
    assert after.draw_probs.shape == (2, 24, 3)
    nll_before = -before.mean_probs[range(24), before.labels].mean()
    nll_after = -after.mean_probs[range(24), after.labels].mean()
    assert nll_after < nll_before


# --- evaluation and saving ---------------------------------------------------------------------


def test_token_metrics_refuse_an_empty_loader():
    model = MonteCLoRAModel(
        tiny_causal_lm(), MonteCLoRAConfig(r=2), num_data=4, likelihood="next_token"
    )
    with pytest.raises(ValueError, match="empty loader"):
        token_metrics(model, MonteCLoRAGuide(model), DataLoader([], batch_size=None), num_samples=2)


def test_token_metrics_match_cross_entropy():
    model = MonteCLoRAModel(
        tiny_causal_lm(),
        MonteCLoRAConfig(r=4, sample_scaler=0.5),
        num_data=10,
        likelihood="next_token",
    )
    perturb_b(model)
    guide = MonteCLoRAGuide(model)
    batch = token_batch()
    loader = DataLoader([batch], batch_size=None)
    metrics = token_metrics(model, guide, loader, num_samples=3, seed=4)
    with torch.no_grad():
        logits = model.hf_model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
        targets = batch["labels"][:, 1:].reshape(-1)
        mean_nll = F.cross_entropy(
            logits[:, :-1].reshape(-1, 64), targets, ignore_index=IGNORE_INDEX
        )
        per_draw = []
        for draw in draw_guide(guide, 3, seed=4):
            drawn = model.logits(
                **{k: v for k, v in batch.items() if k != "labels"},
                deltas=model.perturbations(draw),
            )
            lp = -F.cross_entropy(
                drawn[:, :-1].reshape(-1, 64),
                targets,
                ignore_index=IGNORE_INDEX,
                reduction="none",
            )
            per_draw.append(lp[targets != IGNORE_INDEX])
    predictive_nll = -(torch.stack(per_draw).logsumexp(0) - math.log(3)).mean()
    mean, pred = metrics["posterior_mean"], metrics["posterior_predictive"]
    assert mean["num_tokens"] == pred["num_tokens"] == 7
    assert mean["nll"] == pytest.approx(mean_nll.item(), rel=1e-5)
    assert mean["perplexity"] == pytest.approx(math.exp(mean_nll.item()), rel=1e-5)
    assert pred["nll"] == pytest.approx(predictive_nll.item(), rel=1e-5)
    assert abs(pred["nll"] - mean["nll"]) > 1e-4
    with pytest.raises(ValueError, match=r"no per-example predictions: use token_metrics"):
        predict(model, guide, loader)


def test_adapter_round_trip_keeps_the_likelihood(tmp_path):
    model = mc_model()
    perturb_b(model)
    guide = MonteCLoRAGuide(model)
    save_adapter(tmp_path, model, guide)
    loaded, loaded_guide = load_adapter(tmp_path, tiny_causal_lm())
    assert loaded.likelihood.name == "multiple_choice" and isinstance(loaded_guide, MonteCLoRAGuide)
    inputs = {k: v for k, v in choice_batch().items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(loaded.logits(**inputs), model.logits(**inputs))
