"""Likelihoods of the observed site: classification, multiple choice and next-token.

A sequence classifier observes one class per example. A causal language model is used in one
of two ways:

- ``"multiple_choice"``: each example has C choices, each a (context + answer) token sequence
  scored by the summed log-probability of its answer tokens; one Categorical over the C scores
  observes the index of the right answer. The model's logits are the (batch, C) scores, so
  evaluation, metrics and analysis are those of classification.
- ``"next_token"``: one example is one (prompt + response) sequence; the observed site is the
  sequence of response tokens, each a Categorical over the vocabulary, with prompt and padding
  positions masked out (``labels == -100``, Hugging Face's convention).
"""

from __future__ import annotations

import torch
from torch import nn

LIKELIHOODS = ("classification", "multiple_choice", "next_token")
CAUSAL_LIKELIHOODS = ("multiple_choice", "next_token")
IGNORE_INDEX = -100


def is_causal_lm(model: nn.Module) -> bool:
    """Whether ``model`` is a Hugging Face causal language model (``...ForCausalLM``)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = type(model).__name__
    return (
        name.endswith(("ForCausalLM", "LMHeadModel"))
        or name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
    )


def resolve_likelihood(model: nn.Module, likelihood: str | None) -> str:
    """Check ``likelihood`` against the kind of ``model``; ``None`` means classification.

    A causal language model has no default: it must be ``"multiple_choice"`` or
    ``"next_token"``, and those two need a causal language model.
    """
    causal = is_causal_lm(model)
    name = type(model).__name__
    if likelihood is None:
        if causal:
            raise ValueError(
                f"{name} is a causal language model: pass likelihood='multiple_choice' (score "
                "answer choices) or likelihood='next_token' (observe response tokens); "
                "likelihood='classification' needs a sequence classifier"
            )
        return "classification"
    if likelihood not in LIKELIHOODS:
        raise ValueError(
            f"likelihood={likelihood!r} is invalid: allowed values are "
            f"{', '.join(map(repr, LIKELIHOODS))}"
        )
    if likelihood == "classification" and causal:
        raise ValueError(
            f"likelihood='classification' needs a sequence classifier, but {name} is a causal "
            "language model: use 'multiple_choice' or 'next_token', or load it with "
            "AutoModelForSequenceClassification"
        )
    if likelihood in CAUSAL_LIKELIHOODS and not causal:
        raise ValueError(
            f"likelihood={likelihood!r} needs a causal language model (a ...ForCausalLM), "
            f"got {name}"
        )
    return likelihood


def check_choice_inputs(
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    answer_mask: torch.Tensor | None,
    choice_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Validate a multiple-choice batch; return the (batch, C) boolean mask of real choices.

    ``input_ids``, ``attention_mask`` and ``answer_mask`` have shape (batch, C, L);
    ``choice_mask`` (batch, C), when given, marks the choices that exist (questions with fewer
    choices than C are padded).
    """
    if input_ids is None or input_ids.dim() != 3:
        shape = None if input_ids is None else tuple(input_ids.shape)
        raise ValueError(
            f"multiple-choice input_ids must have shape (batch, choices, length), got {shape}"
        )
    if answer_mask is None:
        raise ValueError(
            "multiple-choice batches need an answer_mask of shape (batch, choices, length), 1 on "
            "the answer tokens; tokenize with monteclora_pyro.causal_data"
        )
    for key, value in (("attention_mask", attention_mask), ("answer_mask", answer_mask)):
        if value is not None and value.shape != input_ids.shape:
            raise ValueError(
                f"{key} has shape {tuple(value.shape)}, input_ids {tuple(input_ids.shape)}"
            )
    batch, choices = input_ids.shape[:2]
    if choice_mask is None:
        valid = torch.ones(batch, choices, dtype=torch.bool, device=input_ids.device)
    else:
        if choice_mask.shape != (batch, choices):
            raise ValueError(
                f"choice_mask must have shape ({batch}, {choices}), got {tuple(choice_mask.shape)}"
            )
        valid = choice_mask.bool()
        empty = (~valid.any(-1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"examples {empty} of the batch have no choices")
    answers = answer_mask.bool() & valid[..., None]
    if answers[..., 0].any():
        raise ValueError(
            "answer_mask is set at position 0: an answer token needs at least one context token "
            "before it"
        )
    counts = answers.sum(-1)
    bad = ((counts == 0) & valid).nonzero().tolist()
    if bad:
        raise ValueError(
            f"answer_mask is empty for (example, choice) {bad[:5]}: every choice needs at least "
            "one answer token (was the answer truncated away?)"
        )
    if attention_mask is not None and (answers & ~attention_mask.bool()).any():
        raise ValueError("answer_mask marks padding positions (attention_mask == 0)")
    return valid


def answer_log_likelihood(
    token_logits: torch.Tensor, input_ids: torch.Tensor, answer_mask: torch.Tensor
) -> torch.Tensor:
    """Summed log-probability of the answer tokens of each sequence.

    Parameters
    ----------
    token_logits : torch.Tensor
        Next-token logits of a causal LM, shape (M, L, V): position t predicts token t + 1.
    input_ids : torch.Tensor
        Tokens, shape (M, L).
    answer_mask : torch.Tensor
        1 on answer tokens, shape (M, L); position 0 must be 0.

    Returns
    -------
    torch.Tensor
        Shape (M,): Σ_t answer_mask[t] · log p(x_t | x_<t).
    """
    rows, cols = answer_mask[:, 1:].bool().nonzero(as_tuple=True)
    picked = token_logits[rows, cols]
    targets = input_ids[rows, cols + 1]
    log_probs = picked.gather(-1, targets[:, None]).squeeze(-1) - picked.logsumexp(-1)
    sums = torch.zeros(input_ids.shape[0], dtype=log_probs.dtype, device=log_probs.device)
    return sums.index_add(0, rows, log_probs)


def check_token_labels(labels: torch.Tensor, input_ids: torch.Tensor | None) -> None:
    """Validate next-token labels: shape (batch, L), ``-100`` or a token id, ≥ 1 target per row.

    ``labels[:, t]`` is the token at position t (the model shifts it), so ``labels[:, 0]`` is
    never a target.
    """
    if input_ids is not None and labels.shape != input_ids.shape:
        raise ValueError(
            f"next-token labels must have the shape of input_ids {tuple(input_ids.shape)} "
            f"(-100 on prompt and padding positions), got {tuple(labels.shape)}"
        )
    if labels.dim() != 2:
        raise ValueError(f"next-token labels must have shape (batch, length), got {labels.dim()}-D")
    targets = labels[:, 1:]
    if ((targets < 0) & (targets != IGNORE_INDEX)).any():
        raise ValueError(f"next-token labels must be token ids or {IGNORE_INDEX}")
    empty = (~(targets != IGNORE_INDEX).any(-1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"examples {empty} of the batch have no response tokens (every label after "
            f"position 0 is {IGNORE_INDEX})"
        )


def shifted_targets(
    token_logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (batch, L-1, V), targets (batch, L-1) and target mask for next-token prediction.

    Masked targets are replaced by 0 so that they stay in the Categorical's support.
    """
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    if (targets[mask] >= token_logits.shape[-1]).any():
        raise ValueError(
            f"next-token labels hold ids >= the vocabulary size {token_logits.shape[-1]}"
        )
    return token_logits[:, :-1], torch.where(mask, targets, 0), mask


def response_log_probs(token_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-probability of every response token (``labels != -100``), flattened to (T,)."""
    logits, targets, mask = shifted_targets(token_logits, labels)
    picked = logits[mask]
    return picked.gather(-1, targets[mask][:, None]).squeeze(-1) - picked.logsumexp(-1)
