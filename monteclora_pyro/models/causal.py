"""Scores and checks of causal language models: answer log-likelihoods and response tokens.

Helpers of the ``multiple_choice`` and ``next_token`` likelihoods of
:mod:`monteclora_pyro.models.likelihood`.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


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
            "the answer tokens; tokenize with monteclora_pyro.data"
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
