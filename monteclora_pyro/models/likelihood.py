"""Likelihoods of the observed site ``y``: one class per kind of task.

A likelihood owns what depends on what ``y`` observes: which backbones it needs, the scores that
:meth:`MonteCLoRAModel.logits` returns, the label checks, the observe statement under the
subsampled data plate, and how an evaluation pass turns the scores of the plug-in prediction
and of S posterior draws into predictions and metrics (and which files they leave in a run
directory). The kinds:

- ``"classification"``: a sequence classifier; one Categorical over the classes per example.
- ``"multiple_choice"``: a causal language model; each example has C choices, each a
  (context + answer) token sequence scored by the summed log-probability of its answer tokens,
  and one Categorical over the C scores observes the index of the right answer. Evaluation,
  metrics and analysis are those of classification.
- ``"next_token"``: a causal language model; one example is one (prompt + response) sequence and
  ``y`` is its response tokens, each a Categorical over the vocabulary, with prompt and padding
  masked out (``labels == -100``). Evaluation reports per-token NLL and perplexity.

New likelihoods are one subclass of :class:`Likelihood` added to :data:`LIKELIHOODS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import nn

from monteclora_pyro.metrics import classification_report
from monteclora_pyro.models.causal import (
    IGNORE_INDEX,
    answer_log_likelihood,
    check_choice_inputs,
    check_token_labels,
    response_log_probs,
    shifted_targets,
)
from monteclora_pyro.models.layer import default_modules_to_save
from monteclora_pyro.runs import MODES, Predictions, write_predictions
from monteclora_pyro.sites import DATA_PLATE, OBSERVED_SITE

__all__ = [
    "IGNORE_INDEX",
    "LIKELIHOODS",
    "ClassEvaluation",
    "Classification",
    "Likelihood",
    "MultipleChoice",
    "NextToken",
    "TokenEvaluation",
    "get_likelihood",
    "is_causal_lm",
    "resolve_likelihood",
]

REPORT_METRICS = ("mcc", "f1")
Backbone = Callable[..., torch.Tensor]


def is_causal_lm(model: nn.Module) -> bool:
    """Whether ``model`` is a Hugging Face causal language model (``...ForCausalLM``)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = type(model).__name__
    return (
        name.endswith(("ForCausalLM", "LMHeadModel"))
        or name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
    )


def batch_size(inputs: dict) -> int:
    """Number of examples in a batch given as ``input_ids`` or ``inputs_embeds``."""
    for key in ("input_ids", "inputs_embeds"):
        if inputs.get(key) is not None:
            return inputs[key].shape[0]
    raise ValueError("pass input_ids or inputs_embeds")


def _check_finite(scores: torch.Tensor) -> None:
    if not torch.isfinite(scores).all():
        raise FloatingPointError("the backbone returned non-finite logits")


def _observe(
    scores: torch.Tensor, fn: dist.Distribution, obs: torch.Tensor | None, num_data: int
) -> None:
    """``y ~ fn`` for a minibatch of ``scores.shape[0]`` examples, scaled to ``num_data``."""
    batch = scores.shape[0]
    index = torch.arange(batch, device=scores.device)
    with pyro.plate(DATA_PLATE, max(num_data, batch), subsample=index):
        pyro.sample(OBSERVED_SITE, fn, obs=obs)


class Likelihood:
    """What ``y`` observes given the backbone's output (see the module docstring)."""

    name: ClassVar[str]
    causal: ClassVar[bool]  # needs a causal language model
    class_probabilities: ClassVar[bool] = True  # evaluations give per-class probabilities

    def num_labels(self, hf_model: nn.Module) -> int | None:
        """Check that ``hf_model`` fits; the number of classes of its head (None: no head)."""
        causal = is_causal_lm(hf_model)
        model_name = type(hf_model).__name__
        if self.causal and not causal:
            raise ValueError(
                f"likelihood={self.name!r} needs a causal language model (a ...ForCausalLM), "
                f"got {model_name}"
            )
        if causal and not self.causal:
            raise ValueError(
                f"likelihood={self.name!r} needs a sequence classifier, but {model_name} is a "
                f"causal language model: use {' or '.join(map(repr, causal_likelihoods()))}, or "
                "load it with AutoModelForSequenceClassification"
            )
        return None

    def default_heads(self, hf_model: nn.Module) -> list[str]:
        """Modules trained with the adapters when ``modules_to_save`` is not set."""
        return []

    def scores(self, backbone: Backbone, inputs: dict) -> torch.Tensor:
        """What :meth:`MonteCLoRAModel.logits` returns, from ``backbone(**inputs)`` logits."""
        return backbone(**inputs)

    def check_labels(self, labels: torch.Tensor, inputs: dict, num_labels: int | None) -> None:
        """Refuse labels that do not fit the batch or the label set."""
        batch = batch_size(inputs)
        if labels.shape != (batch,):
            raise ValueError(
                f"labels must have shape ({batch},) to match the batch, got {tuple(labels.shape)}"
            )

    def observe(
        self, scores: torch.Tensor, labels: torch.Tensor | None, inputs: dict, num_data: int
    ) -> None:
        """The observe statement of a minibatch, scaled to ``num_data`` examples."""
        _check_finite(scores)
        _observe(scores, dist.Categorical(logits=scores), labels, num_data)

    def evaluation(self) -> ProbabilityAccumulator | TokenAccumulator:
        """A fresh accumulator for one evaluation pass."""
        return ProbabilityAccumulator()


class Classification(Likelihood):
    """One Categorical over the classifier's classes per example."""

    name = "classification"
    causal = False

    def num_labels(self, hf_model: nn.Module) -> int:
        super().num_labels(hf_model)
        num_labels = getattr(getattr(hf_model, "config", None), "num_labels", None)
        if not isinstance(num_labels, int) or num_labels < 2:
            raise ValueError(
                f"the model has num_labels={num_labels!r}: MonteCLoRAModel needs a classifier "
                "with num_labels >= 2 (regression heads are not supported)"
            )
        return num_labels

    def default_heads(self, hf_model: nn.Module) -> list[str]:
        return default_modules_to_save(hf_model)

    def check_labels(self, labels: torch.Tensor, inputs: dict, num_labels: int | None) -> None:
        super().check_labels(labels, inputs, num_labels)
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_labels):
            bad = labels[(labels < 0) | (labels >= num_labels)].unique().tolist()
            raise ValueError(f"labels {bad} are outside the model's label set 0..{num_labels - 1}")


class MultipleChoice(Likelihood):
    """One Categorical over each question's choices, scored by answer-token log-likelihood."""

    name = "multiple_choice"
    causal = True

    def scores(self, backbone: Backbone, inputs: dict) -> torch.Tensor:
        """(batch, C) summed answer log-probabilities (``-inf`` for padded choices).

        The real choices of the batch go through the backbone as one batch.
        """
        inputs = dict(inputs)
        input_ids = inputs.pop("input_ids", None)
        attention_mask = inputs.pop("attention_mask", None)
        answer_mask = inputs.pop("answer_mask", None)
        choice_mask = inputs.pop("choice_mask", None)
        if inputs:
            raise ValueError(
                f"unexpected multiple-choice inputs {sorted(inputs)}; expected input_ids, "
                "attention_mask, answer_mask and optionally choice_mask"
            )
        valid = check_choice_inputs(input_ids, attention_mask, answer_mask, choice_mask)
        ids = input_ids[valid]
        mask = None if attention_mask is None else attention_mask[valid]
        token_logits = backbone(input_ids=ids, attention_mask=mask)
        flat = answer_log_likelihood(token_logits, ids, answer_mask[valid])
        scores = torch.full(valid.shape, -math.inf, dtype=flat.dtype, device=flat.device)
        return scores.masked_scatter(valid, flat)

    def check_labels(self, labels: torch.Tensor, inputs: dict, num_labels: int | None) -> None:
        super().check_labels(labels, inputs, num_labels)
        input_ids, choice_mask = inputs.get("input_ids"), inputs.get("choice_mask")
        if input_ids is None or input_ids.dim() != 3:
            return  # check_choice_inputs names the problem
        choices = input_ids.shape[1]
        outside = ((labels < 0) | (labels >= choices)).nonzero().flatten().tolist()
        if outside:
            raise ValueError(
                f"labels {labels[outside].tolist()} of examples {outside} are not choice indices "
                f"0..{choices - 1}: the batch has {choices} choices per example"
            )
        if choice_mask is not None:
            picked = choice_mask.bool().gather(1, labels[:, None]).squeeze(1)
            missing = (~picked).nonzero().flatten().tolist()
            if missing:
                raise ValueError(
                    f"examples {missing}: the label points to a padded choice (choice_mask == 0)"
                )

    def observe(
        self, scores: torch.Tensor, labels: torch.Tensor | None, inputs: dict, num_data: int
    ) -> None:
        valid = inputs.get("choice_mask")
        _check_finite(scores if valid is None else scores[valid.bool()])
        _observe(scores, dist.Categorical(logits=scores), labels, num_data)


class NextToken(Likelihood):
    """The response tokens of each sequence: a masked event of length L - 1."""

    name = "next_token"
    causal = True
    class_probabilities = False

    def check_labels(self, labels: torch.Tensor, inputs: dict, num_labels: int | None) -> None:
        check_token_labels(labels, inputs.get("input_ids"))

    def observe(
        self, scores: torch.Tensor, labels: torch.Tensor | None, inputs: dict, num_data: int
    ) -> None:
        _check_finite(scores)
        if labels is None:
            tokens, targets = dist.Categorical(logits=scores[:, :-1]), None
        else:
            logits, targets, mask = shifted_targets(scores, labels)
            tokens = dist.Categorical(logits=logits).mask(mask)
        _observe(scores, tokens.to_event(1), targets, num_data)

    def evaluation(self) -> TokenAccumulator:
        return TokenAccumulator()


LIKELIHOODS: dict[str, Likelihood] = {
    cls.name: cls() for cls in (Classification, MultipleChoice, NextToken)
}


def causal_likelihoods() -> list[str]:
    """Names of the likelihoods of causal language models."""
    return [name for name, likelihood in LIKELIHOODS.items() if likelihood.causal]


def get_likelihood(name: str | Likelihood) -> Likelihood:
    """The likelihood called ``name`` (a :class:`Likelihood` is returned as it is)."""
    if isinstance(name, Likelihood):
        return name
    if name not in LIKELIHOODS:
        raise ValueError(
            f"likelihood={name!r} is invalid: allowed values are "
            f"{', '.join(map(repr, LIKELIHOODS))}"
        )
    return LIKELIHOODS[name]


def resolve_likelihood(model: nn.Module, likelihood: str | Likelihood | None) -> Likelihood:
    """The likelihood for ``model``; ``None`` means classification for a sequence classifier.

    A causal language model has no default: it must be one of the causal likelihoods.
    """
    if likelihood is None:
        if is_causal_lm(model):
            raise ValueError(
                f"{type(model).__name__} is a causal language model: pass "
                "likelihood='multiple_choice' (score answer choices) or "
                "likelihood='next_token' (observe response tokens); "
                "likelihood='classification' needs a sequence classifier"
            )
        return LIKELIHOODS[Classification.name]
    return get_likelihood(likelihood)


# ------------------------------------------------------------------------------ evaluation


def _normalise(probs: np.ndarray) -> np.ndarray:
    return probs / probs.sum(-1, keepdims=True)


@dataclass
class ClassEvaluation:
    """The class probabilities of an evaluation pass (classification, multiple choice)."""

    predictions: Predictions

    @property
    def num_draws(self) -> int:
        """S, the posterior draws (1 for a method without a posterior)."""
        return self.predictions.num_draws

    def metrics(self, extra: tuple[str, ...] = ()) -> dict:
        """Accuracy, NLL, ECE (15 equal-width bins), Brier and ``extra`` of both modes."""
        extra = tuple(m for m in extra if m in REPORT_METRICS)
        return {
            mode: classification_report(
                _normalise(self.predictions.mode_probs(mode)), self.predictions.labels, extra=extra
            )
            for mode in MODES
        }

    def save(self, directory) -> None:
        """Write ``predictions.npz``."""
        write_predictions(directory, self.predictions)

    @staticmethod
    def summary(metrics: dict) -> str:
        """One log line of :meth:`metrics`."""
        mean, pred = metrics["posterior_mean"], metrics["posterior_predictive"]
        return (
            f"accuracy {mean['accuracy']:.4f} (mean) {pred['accuracy']:.4f} (predictive), "
            f"nll {mean['nll']:.4f} / {pred['nll']:.4f}"
        )


@dataclass
class TokenEvaluation:
    """Per-token log-probabilities of held-out responses (next-token tasks)."""

    mean_log_probs: torch.Tensor  # (T,)
    draw_log_probs: torch.Tensor  # (S, T)

    @property
    def num_draws(self) -> int:
        """S, the posterior draws (1 for a method without a posterior)."""
        return self.draw_log_probs.shape[0]

    def metrics(self, extra: tuple[str, ...] = ()) -> dict:
        """``nll`` (mean over tokens), ``perplexity`` and ``num_tokens`` of both modes.

        The posterior predictive averages each token's probability over the draws.
        """
        draws = self.draw_log_probs
        predictive = draws.logsumexp(0) - math.log(draws.shape[0])
        out = {}
        for mode, log_probs in zip(MODES, (self.mean_log_probs, predictive), strict=True):
            nll = float(-log_probs.mean())
            out[mode] = {
                "nll": nll,
                "perplexity": math.exp(nll),
                "num_tokens": int(log_probs.numel()),
            }
        return out

    def save(self, directory) -> None:
        """Nothing: the per-token metrics are all of it."""

    @staticmethod
    def summary(metrics: dict) -> str:
        """One log line of :meth:`metrics`."""
        mean, pred = metrics["posterior_mean"], metrics["posterior_predictive"]
        return (
            f"token nll {mean['nll']:.4f} (mean) {pred['nll']:.4f} (predictive), "
            f"perplexity {mean['perplexity']:.3f} / {pred['perplexity']:.3f}"
        )


class ProbabilityAccumulator:
    """Collects class probabilities batch by batch; :meth:`result` gives a ClassEvaluation."""

    def __init__(self):
        self.labels: list[torch.Tensor] = []
        self.mean: list[torch.Tensor] = []
        self.draws: list[torch.Tensor] = []

    def add(
        self, labels: torch.Tensor, mean_scores: torch.Tensor, draw_scores: list[torch.Tensor]
    ) -> None:
        """One batch: the plug-in scores and those of each draw (none: one draw, the mean)."""
        mean = mean_scores.softmax(-1)
        self.labels.append(labels.cpu())
        self.mean.append(mean)
        if draw_scores:
            self.draws.append(torch.stack([s.softmax(-1) for s in draw_scores]))
        else:
            self.draws.append(mean.unsqueeze(0))

    def result(self) -> ClassEvaluation:
        """The pass's predictions."""
        return ClassEvaluation(
            Predictions(
                labels=torch.cat(self.labels).numpy(),
                mean_probs=torch.cat(self.mean).double().cpu().numpy(),
                draw_probs=torch.cat(self.draws, dim=1).double().cpu().numpy(),
            )
        )


class TokenAccumulator:
    """Collects response-token log-probabilities; :meth:`result` gives a TokenEvaluation."""

    def __init__(self):
        self.mean: list[torch.Tensor] = []
        self.draws: list[torch.Tensor] = []

    def add(
        self, labels: torch.Tensor, mean_scores: torch.Tensor, draw_scores: list[torch.Tensor]
    ) -> None:
        """One batch: token logits of the plug-in prediction and of each draw."""
        labels = labels.to(mean_scores.device)
        self.mean.append(response_log_probs(mean_scores, labels).double())
        draws = [response_log_probs(s, labels) for s in draw_scores]
        self.draws.append(torch.stack(draws).double() if draws else self.mean[-1][None])

    def result(self) -> TokenEvaluation:
        """The pass's log-probabilities."""
        if not self.mean:
            raise ValueError("the evaluation got an empty loader: there are no held-out responses")
        return TokenEvaluation(torch.cat(self.mean), torch.cat(self.draws, dim=1))
