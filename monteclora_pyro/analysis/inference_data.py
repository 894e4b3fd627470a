"""ArviZ InferenceData from run directories, and the diagnostics that go with it.

Reads runs through :mod:`monteclora_pyro.runs` (never imports training code). Chains are
independent runs (restarts with different seeds) of the same configuration, not MCMC chains
(:data:`RESTARTS_NOTE`). The ``log_likelihood`` group holds the log-likelihoods of the
*held-out* evaluation examples (group attributes ``split`` and ``held_out = 1``): the data for
the held-out lppd (:mod:`monteclora_pyro.analysis.heldout`), not for PSIS-LOO, which needs
training-set log-likelihoods (docs/design.md §5). For a regression run ``y`` is the real score:
its log-likelihood is ``log N(y | m_s, 1/τ_s)`` of each draw s, and its posterior predictive one
draw from that Normal (:func:`monteclora_pyro.analysis.regression.normal_groups`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import arviz as az
import numpy as np
import xarray as xr

from monteclora_pyro import runs
from monteclora_pyro.analysis.prior_note import cooperative_tilt, num_layers, tilt_note
from monteclora_pyro.analysis.regression import normal_groups
from monteclora_pyro.sites import HYPERPRIOR_KINDS, TERMS, split_site_name

__all__ = [
    "HELD_OUT_NOTE",
    "KINDS",
    "RESTARTS_NOTE",
    "TRAINING_GROUP",
    "TRAINING_TERMS",
    "hyperprior_summary",
    "prior_note",
    "save_inference_data",
    "to_inference_data",
]

TRAINING_GROUP = "training"
TRAINING_TERMS = ("loss", *TERMS)
MATRIX_KINDS = ("covariance", "precision")
KINDS = (*HYPERPRIOR_KINDS, *(k for k in MATRIX_KINDS if k not in HYPERPRIOR_KINDS))
"""Hyperprior site kinds the analysis shows (``precision`` of ``objective="bayes"`` included)."""
RESTARTS_NOTE = (
    "Chains are independent training restarts (different seeds), not MCMC chains: R-hat "
    "measures the disagreement between restarts and ESS counts independent guide draws."
)
HELD_OUT_NOTE = (
    "log-likelihoods of held-out evaluation examples, which the posterior never conditioned "
    "on: sum their log mean over draws for the held-out lppd; do not apply PSIS-LOO to them"
)


def _site_dims(name: str, ndim: int) -> list[str]:
    kind = split_site_name(name)[1]
    if kind in MATRIX_KINDS:
        return ["rank", "rank_bis"][:ndim]
    if kind in ("concentration", "weights"):
        return ["component"]
    return [f"{kind}_dim_{i}" for i in range(ndim)]


def _read_run(run_dir: Path) -> dict:
    config = runs.read_config(run_dir)
    if not runs.has_predictions(run_dir) and runs.read_metrics(run_dir, missing_ok=True):
        # A finished run without class probabilities: only next-token runs are.
        raise ValueError(
            f"{run_dir} is a next-token run: it has no class probabilities "
            f"({runs.PREDICTIONS_FILE}) to analyse; its per-token NLL and perplexity are "
            f"in {runs.METRICS_FILE}"
        )
    predictions = runs.read_predictions(run_dir)
    return {
        "dir": run_dir,
        "config": config,
        "metrics": runs.read_metrics(run_dir, missing_ok=True),
        "labels": predictions.labels,
        "predictions": predictions,
        "posterior": runs.read_samples(run_dir, "posterior"),
        "prior": runs.read_samples(run_dir, "prior"),
        "history": runs.history_arrays(run_dir),
    }


def _stack(arrays: list[np.ndarray], name: str, run_dirs: list[Path]) -> np.ndarray:
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        detail = ", ".join(f"{d}: {a.shape}" for d, a in zip(run_dirs, arrays, strict=True))
        raise ValueError(
            f"runs disagree on the shape of {name!r} ({detail}); chains must be "
            "restarts of the same configuration with the same number of draws"
        )
    return np.stack(arrays)


def to_inference_data(run_dirs: str | Path | list, seed: int = 0) -> az.InferenceData:
    """Build an :class:`arviz.InferenceData` from one run or several restarts.

    Parameters
    ----------
    run_dirs : path or list of paths
        Finished run directories; each becomes one chain.
    seed : int
        Seeds the posterior-predictive label draws.

    Returns
    -------
    arviz.InferenceData
        ``posterior`` and ``prior`` (one variable per hyperprior site, named as the Pyro site;
        absent for LoRA), ``posterior_predictive``, ``observed_data`` and ``log_likelihood``
        (variable ``y`` over ``example``), and a ``training`` group with every loss term per
        ``step``. The ``log_likelihood`` group is of the held-out evaluation split: its
        attributes are ``split``, ``held_out = 1`` and ``note`` (:data:`HELD_OUT_NOTE`); do not
        give it to ``az.loo``. Under the paper objective with a cooperative weight λ > 0 the
        ``prior`` group's attributes say that its draws omit the cooperative tilt
        (``cooperative_tilt = "omitted"``, ``cooperative_weight``, ``num_train_examples``,
        ``num_layers``, ``tilt_scale`` and ``prior_note``).
    """
    if isinstance(run_dirs, str | Path):
        run_dirs = [run_dirs]
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise ValueError("to_inference_data needs at least one run directory")
    loaded = [_read_run(d) for d in run_dirs]
    methods = {r["config"]["train"]["method"] for r in loaded}
    if len(methods) > 1:
        raise ValueError(f"runs mix methods {sorted(methods)}: chains must share one method")
    labels = loaded[0]["labels"]
    for run in loaded[1:]:
        if not np.array_equal(run["labels"], labels):
            raise ValueError(f"{run['dir']} was evaluated on other examples than {run_dirs[0]}")
    if len({type(r["predictions"]) for r in loaded}) > 1:
        raise ValueError("runs mix regression and classification predictions")
    rng = np.random.default_rng(seed)
    if isinstance(loaded[0]["predictions"], runs.RegressionPredictions):
        predictions = [r["predictions"] for r in loaded]
        means = _stack([p.draw_mean for p in predictions], "predictions", run_dirs)
        precisions = _stack([p.draw_precision for p in predictions], "predictions", run_dirs)
        groups = normal_groups(means, precisions, labels, rng)
        examples = means.shape[-1]
    else:
        groups, examples = _class_groups(loaded, labels, run_dirs, rng)
    dims = {"y": ["example"]}
    if all(r["posterior"] is not None for r in loaded):
        names = list(loaded[0]["posterior"])
        groups["posterior"] = {
            n: _stack([r["posterior"][n] for r in loaded], n, run_dirs) for n in names
        }
        if loaded[0]["prior"] is not None:
            groups["prior"] = {n: loaded[0]["prior"][n][None] for n in loaded[0]["prior"]}
        for n in names:
            dims[n] = _site_dims(n, groups["posterior"][n].ndim - 2)
    attrs = {
        "method": methods.pop(),
        "task": loaded[0]["config"]["train"]["task"],
        "run_dirs": json.dumps([str(d) for d in run_dirs]),
        "chains_are": "independent training restarts",
    }
    idata = az.from_dict(**groups, dims=dims, attrs=attrs, coords={"example": np.arange(examples)})
    first = loaded[0]
    split = first["metrics"].get("split") or first["config"]["train"].get("eval_split", "")
    idata.log_likelihood.attrs.update(
        {"split": str(split), "held_out": 1, "note": HELD_OUT_NOTE, "chains_are": RESTARTS_NOTE}
    )
    if "prior" in idata.groups():
        tilt = cooperative_tilt(
            first["config"], first["metrics"], num_layers(idata.prior.data_vars)
        )
        if tilt is not None:
            idata.prior.attrs.update(
                {"cooperative_tilt": "omitted", **tilt, "prior_note": tilt_note(tilt)}
            )
    idata.add_groups({TRAINING_GROUP: _training_dataset(loaded)}, warn_on_custom_groups=False)
    return idata


def _class_groups(
    loaded: list[dict], labels: np.ndarray, run_dirs: list[Path], rng: np.random.Generator
) -> tuple[dict, int]:
    """The predictive groups of class probabilities, and the number of examples."""
    draw_probs = _stack([r["predictions"].draw_probs for r in loaded], "predictions", run_dirs)
    chains, draws, examples, _ = draw_probs.shape
    cumulative = draw_probs.cumsum(-1)
    uniform = rng.random((chains, draws, examples, 1))
    y_rep = np.minimum((uniform > cumulative).sum(-1), draw_probs.shape[-1] - 1)
    picked = np.take_along_axis(draw_probs, labels[None, None, :, None], -1)[..., 0]
    log_lik = np.log(np.clip(picked, np.finfo(float).tiny, None))
    groups = {
        "posterior_predictive": {"y": y_rep},
        "log_likelihood": {"y": log_lik},
        "observed_data": {"y": labels},
    }
    return groups, examples


def _training_dataset(loaded: list[dict]) -> xr.Dataset:
    lengths = [len(next(iter(r["history"].values()), ())) for r in loaded]
    steps = max(lengths, default=0)
    data = {}
    logged = {term for run in loaded for term in run["history"]}
    for term in (t for t in TRAINING_TERMS if t in logged):  # each objective logs its own terms
        values = np.full((len(loaded), steps), np.nan)
        for chain, (run, length) in enumerate(zip(loaded, lengths, strict=True)):
            if term in run["history"]:
                values[chain, :length] = run["history"][term]
        data[term] = (("chain", "step"), values)
    coords = {"chain": np.arange(len(loaded)), "step": np.arange(1, steps + 1)}
    return xr.Dataset(data, coords=coords)


def save_inference_data(
    idata: az.InferenceData, directory: str | Path, name: str = runs.INFERENCE_DATA_FILE
) -> Path:
    """Write ``idata`` as netCDF into ``directory``; reload with :func:`arviz.from_netcdf`."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    path = Path(directory) / name
    idata.to_netcdf(str(path))
    return path


def hyperprior_summary(idata: az.InferenceData, **kwargs):
    """``az.summary`` of the hyperprior sites, with :data:`RESTARTS_NOTE` as its caption.

    The chains are restarts: R-hat measures the disagreement between restarts and ESS counts
    independent guide draws. With one chain, R-hat is undefined and reported as NaN. The
    returned frame keeps ArviZ's columns; ``frame.attrs["caption"]`` holds the note.
    """
    if "posterior" not in idata.groups():
        raise ValueError("this InferenceData has no posterior (a LoRA run has none)")
    names = [v for v in idata.posterior.data_vars if split_site_name(str(v))[1] in KINDS]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]hape validation failed.*")
        frame = az.summary(idata, var_names=names, **kwargs)
    frame.attrs["caption"] = RESTARTS_NOTE
    return frame


def prior_note(idata: az.InferenceData | None) -> str | None:
    """The note of the ``prior`` group on the omitted cooperative tilt, or ``None``."""
    if idata is None or "prior" not in idata.groups():
        return None
    note = idata.prior.attrs.get("prior_note")
    return str(note) if note else None
