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
- ``"regression"``: a sequence classifier with one output (``num_labels=1``); ``y`` is a real
  score, ``y ~ Normal(f(x), 1/√τ)`` with a learned observation precision τ under a Gamma prior
  (the latent site ``"y.obs_precision"``). Evaluation reports Pearson, Spearman, RMSE, NLL and
  the coverage of central predictive intervals.

A likelihood may have latent sites of its own (:meth:`Likelihood.latent_priors`, named
``"y.{kind}"``): the model samples them with the adapters' sites, under the same latent scale,
the guides learn them in the family the likelihood names (:meth:`Likelihood.guide_parameters`,
:meth:`Likelihood.guide_distribution`), and a draw of them is part of each posterior draw.

New likelihoods are one subclass of :class:`Likelihood` added to :data:`LIKELIHOODS`; what their
evaluations collect lives in :mod:`monteclora_pyro.models.evaluations`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn

from monteclora_pyro.models.causal import (
    IGNORE_INDEX,
    answer_log_likelihood,
    check_choice_inputs,
    check_token_labels,
    shifted_targets,
)
from monteclora_pyro.models.evaluations import (
    ClassEvaluation,
    NormalAccumulator,
    ProbabilityAccumulator,
    RegressionEvaluation,
    TokenAccumulator,
    TokenEvaluation,
)
from monteclora_pyro.models.layer import default_modules_to_save
from monteclora_pyro.sites import DATA_PLATE, OBSERVED_SITE, likelihood_site_name

__all__ = [
    "IGNORE_INDEX",
    "LIKELIHOODS",
    "ClassEvaluation",
    "Classification",
    "Likelihood",
    "MultipleChoice",
    "NextToken",
    "Regression",
    "RegressionEvaluation",
    "TokenEvaluation",
    "get_likelihood",
    "is_causal_lm",
    "resolve_likelihood",
]

Backbone = Callable[..., torch.Tensor]
Accumulator = ProbabilityAccumulator | TokenAccumulator | NormalAccumulator
GuideParameters = dict[str, tuple[torch.Tensor, constraints.Constraint]]


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

    def latent_priors(self, device: torch.device, dtype: torch.dtype) -> dict:
        """The prior of each latent site of the likelihood, by site name (``"y.{kind}"``).

        None by default. The model samples them after the adapters' sites, under the same
        latent scale; :meth:`scores` receives a value of each.
        """
        return {}

    def guide_parameters(self, name: str, prior: dist.Distribution) -> GuideParameters:
        """The guide's learnable parameters of the latent site ``name``: initial value and
        constraint of each, by parameter name (the guide stores them unconstrained)."""
        raise NotImplementedError(f"likelihood {self.name!r} has no latent site {name!r}")

    def guide_distribution(self, name: str, params: dict[str, torch.Tensor]) -> dist.Distribution:
        """The guide's distribution of the latent site ``name`` given its constrained
        :meth:`guide_parameters`."""
        raise NotImplementedError(f"likelihood {self.name!r} has no latent site {name!r}")

    def scores(
        self, backbone: Backbone, inputs: dict, latents: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """What :meth:`MonteCLoRAModel.logits` returns, from ``backbone(**inputs)`` logits and
        a value of each of the likelihood's latent sites (``latents``)."""
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

    def evaluation(self) -> Accumulator:
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
                f"the model has num_labels={num_labels!r}: likelihood='classification' needs a "
                "classifier with num_labels >= 2 (a regression head with num_labels=1 takes "
                "likelihood='regression')"
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

    def scores(
        self, backbone: Backbone, inputs: dict, latents: dict[str, torch.Tensor]
    ) -> torch.Tensor:
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


class Regression(Likelihood):
    """A real score per example: ``y ~ Normal(f(x), 1/√τ)``, τ ~ Gamma(a0, b0).

    The head is a sequence classifier with ``num_labels=1``; its logits (batch, 1) are the
    means. The observation precision τ is the latent site ``"y.obs_precision"``, with the
    prior Gamma(shape ``precision_shape``, rate ``precision_rate``) (mean 1: a noise standard
    deviation of 1 on the label scale) and a Gamma guide whose shape and rate are learned from
    the prior's. :meth:`scores` are (batch, 2): the mean and the precision of each example's
    Normal; the plug-in prediction takes the guide's mean of τ.
    """

    name = "regression"
    causal = False
    class_probabilities = False
    precision_shape = 2.0  # a0
    precision_rate = 2.0  # b0
    precision_site = likelihood_site_name("obs_precision")

    def num_labels(self, hf_model: nn.Module) -> int:
        super().num_labels(hf_model)
        num_labels = getattr(getattr(hf_model, "config", None), "num_labels", None)
        if num_labels != 1:
            raise ValueError(
                f"likelihood='regression' needs a regression head with num_labels=1, but the "
                f"model has num_labels={num_labels!r}: load it with num_labels=1"
            )
        return 1

    def default_heads(self, hf_model: nn.Module) -> list[str]:
        return default_modules_to_save(hf_model)

    def latent_priors(self, device: torch.device, dtype: torch.dtype) -> dict:
        shape = torch.tensor(self.precision_shape, device=device, dtype=dtype)
        rate = torch.tensor(self.precision_rate, device=device, dtype=dtype)
        return {self.precision_site: dist.Gamma(shape, rate)}

    def guide_parameters(self, name: str, prior: dist.Distribution) -> GuideParameters:
        if name != self.precision_site:
            super().guide_parameters(name, prior)
        positive = constraints.softplus_positive
        return {"shape": (prior.concentration, positive), "rate": (prior.rate, positive)}

    def guide_distribution(self, name: str, params: dict[str, torch.Tensor]) -> dist.Distribution:
        if name != self.precision_site:
            super().guide_distribution(name, params)
        return dist.Gamma(params["shape"], params["rate"])

    def scores(
        self, backbone: Backbone, inputs: dict, latents: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """(batch, 2): the mean ``f(x)`` and the precision τ of each example's Normal."""
        logits = backbone(**inputs)
        if logits.dim() != 2 or logits.shape[-1] != 1:
            raise ValueError(
                f"a regression head must return logits of shape (batch, 1), got "
                f"{tuple(logits.shape)}"
            )
        mean = logits.squeeze(-1)
        precision = latents[self.precision_site].to(mean.dtype).expand_as(mean)
        return torch.stack([mean, precision], dim=-1)

    def check_labels(self, labels: torch.Tensor, inputs: dict, num_labels: int | None) -> None:
        super().check_labels(labels, inputs, num_labels)
        if not labels.is_floating_point():
            raise ValueError(
                f"regression labels must be floating point scores, got dtype {labels.dtype}"
            )
        bad = (~torch.isfinite(labels)).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"regression labels of examples {bad} are not finite")

    def observe(
        self, scores: torch.Tensor, labels: torch.Tensor | None, inputs: dict, num_data: int
    ) -> None:
        _check_finite(scores)
        mean, precision = scores.unbind(-1)
        obs = None if labels is None else labels.to(mean.dtype)
        _observe(scores, dist.Normal(mean, precision.rsqrt()), obs, num_data)

    def evaluation(self) -> NormalAccumulator:
        return NormalAccumulator()


LIKELIHOODS: dict[str, Likelihood] = {
    cls.name: cls() for cls in (Classification, MultipleChoice, NextToken, Regression)
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
