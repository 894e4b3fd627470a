"""ArviZ InferenceData from run directories, and the diagnostics that go with it.

This module reads the files a run writes (``config.json``, ``predictions.npz``,
``posterior_samples.npz``, ``prior_samples.npz``, ``history.jsonl``); it never imports training
code. Chains are independent runs (restarts with different seeds) of the same configuration.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import arviz as az
import numpy as np
import xarray as xr

logger = logging.getLogger(__name__)

NETCDF_FILE = "inference_data.nc"
TRAINING_GROUP = "training"
TERMS = (
    "loss",
    "nll",
    "kl_covariance",
    "kl_concentration",
    "kl_weights",
    "kl_noise",
    "cooperative",
)
HYPERPRIOR_KINDS = ("covariance", "concentration", "weights")


def site_kind(name: str) -> str:
    """``"covariance"`` for ``"bert....query.covariance"``."""
    return name.rpartition(".")[2]


def site_layer(name: str) -> str:
    """``"bert....query"`` for ``"bert....query.covariance"``."""
    return name.rpartition(".")[0]


def _site_dims(name: str, ndim: int) -> list[str]:
    kind = site_kind(name)
    if kind == "covariance":
        return ["rank", "rank_bis"][:ndim]
    if kind in ("concentration", "weights"):
        return ["component"]
    return [f"{kind}_dim_{i}" for i in range(ndim)]


def _read_run(run_dir: Path) -> dict:
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: {run_dir} is not a run directory")
    predictions_path = run_dir / "predictions.npz"
    metrics_path = run_dir / "metrics.json"
    if not predictions_path.is_file():
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
        if "perplexity" in metrics.get("posterior_mean", {}):
            raise ValueError(
                f"{run_dir} is a next-token run: it has no class probabilities "
                "(predictions.npz) to analyse; its per-token NLL and perplexity are in "
                "metrics.json"
            )
        raise FileNotFoundError(f"{predictions_path} not found: has the run finished?")
    run = {"dir": run_dir, "config": json.loads(config_path.read_text())}
    with np.load(predictions_path) as data:
        run["labels"], run["draw_probs"] = data["labels"], data["draw_probs"]
    for group in ("posterior", "prior"):
        path = run_dir / f"{group}_samples.npz"
        if path.is_file():
            with np.load(path) as data:
                run[group] = {name: data[name] for name in data.files}
    history = run_dir / "history.jsonl"
    lines = history.read_text().splitlines() if history.is_file() else []
    run["history"] = [r for r in map(json.loads, lines) if r.get("kind") == "train"]
    return run


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
        ``step``.
    """
    if isinstance(run_dirs, str | Path):
        run_dirs = [run_dirs]
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise ValueError("to_inference_data needs at least one run directory")
    runs = [_read_run(d) for d in run_dirs]
    methods = {r["config"]["train"]["method"] for r in runs}
    if len(methods) > 1:
        raise ValueError(f"runs mix methods {sorted(methods)}: chains must share one method")
    labels = runs[0]["labels"]
    for run in runs[1:]:
        if not np.array_equal(run["labels"], labels):
            raise ValueError(f"{run['dir']} was evaluated on other examples than {run_dirs[0]}")
    draw_probs = _stack([r["draw_probs"] for r in runs], "predictions", run_dirs)
    chains, draws, examples, _ = draw_probs.shape
    rng = np.random.default_rng(seed)
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
    dims = {"y": ["example"]}
    if all("posterior" in r for r in runs):
        names = list(runs[0]["posterior"])
        groups["posterior"] = {
            n: _stack([r["posterior"][n] for r in runs], n, run_dirs) for n in names
        }
        if "prior" in runs[0]:
            groups["prior"] = {n: runs[0]["prior"][n][None] for n in runs[0]["prior"]}
        for n in names:
            dims[n] = _site_dims(n, groups["posterior"][n].ndim - 2)
    attrs = {
        "method": methods.pop(),
        "task": runs[0]["config"]["train"]["task"],
        "run_dirs": json.dumps([str(d) for d in run_dirs]),
        "chains_are": "independent training restarts",
    }
    idata = az.from_dict(**groups, dims=dims, attrs=attrs, coords={"example": np.arange(examples)})
    idata.add_groups({TRAINING_GROUP: _training_dataset(runs)}, warn_on_custom_groups=False)
    return idata


def _training_dataset(runs: list[dict]) -> xr.Dataset:
    steps = max((len(r["history"]) for r in runs), default=0)
    data = {}
    for term in TERMS:
        values = np.full((len(runs), steps), np.nan)
        for chain, run in enumerate(runs):
            for i, record in enumerate(run["history"]):
                values[chain, i] = record.get(term, np.nan)
        data[term] = (("chain", "step"), values)
    return xr.Dataset(data, coords={"chain": np.arange(len(runs)), "step": np.arange(1, steps + 1)})


def save_inference_data(
    idata: az.InferenceData, directory: str | Path, name: str = NETCDF_FILE
) -> Path:
    """Write ``idata`` as netCDF into ``directory``; reload with :func:`arviz.from_netcdf`."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    path = Path(directory) / name
    idata.to_netcdf(str(path))
    return path


def hyperprior_summary(idata: az.InferenceData, **kwargs):
    """``az.summary`` of the hyperprior sites (R-hat and ESS compare restarts).

    With one chain, R-hat is undefined and reported as NaN.
    """
    if "posterior" not in idata.groups():
        raise ValueError("this InferenceData has no posterior (a LoRA run has none)")
    names = [v for v in idata.posterior.data_vars if site_kind(v) in HYPERPRIOR_KINDS]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]hape validation failed.*")
        return az.summary(idata, var_names=names, **kwargs)


def psis_loo(idata: az.InferenceData) -> tuple[az.ELPDData | None, list[str]]:
    """PSIS-LOO over the evaluation examples, and the warnings it raised (Pareto k included).

    Returns ``(None, [reason])`` where LOO does not apply (fewer than two draws). The warnings
    are also logged, so that a caller that ignores them still shows them to the user.
    """
    draws = idata.log_likelihood.sizes["chain"] * idata.log_likelihood.sizes["draw"]
    if draws < 2:
        return None, [f"PSIS-LOO needs at least two posterior draws, this has {draws}"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loo = az.loo(idata, pointwise=True)
    messages = [str(w.message) for w in caught]
    bad = int((loo.pareto_k > 0.7).sum())
    if bad:
        messages.append(
            f"{bad} of {loo.pareto_k.size} examples have Pareto k > 0.7: the "
            "PSIS-LOO estimate for them is unreliable"
        )
    for message in messages:
        logger.warning("PSIS-LOO: %s", message)
    return loo, messages
