"""Figures of monteclora_pyro.analysis.plots render headless and carry their labels.

Rendering of the bigger figures is left to test_report.py, whose report saves every kind.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import arviz as az
import numpy as np
import pytest
import xarray as xr
from matplotlib.figure import Figure

from monteclora_pyro.analysis import plots
from monteclora_pyro.sites import LIKELIHOOD_KINDS

LAYERS = (
    "bert.encoder.layer.0.attention.self.query",
    "bert.encoder.layer.1.attention.self.value",
)
SHORT = ["layer.0.attention.self.query", "layer.1.attention.self.value"]
R, K, CHAINS, DRAWS, N = 3, 4, 2, 50, 40
LAYER_KINDS = tuple(k for k in plots.KINDS if k not in LIKELIHOOD_KINDS)  # regression: elsewhere
TERMS = (
    "loss",
    "nll",
    "kl_covariance",
    "kl_concentration",
    "kl_weights",
    "kl_noise",
    "cooperative",
)


def _wishart(rng, shape, scale=1.0):
    g = rng.normal(size=(*shape, R, R + 1)) * np.sqrt(scale)
    return g @ np.swapaxes(g, -1, -2)


def make_idata(
    seed: int = 0,
    covariance: str = "full",
    layers: list[str] = LAYERS,
    precision: bool = True,
    prior_attrs: dict | None = None,
) -> az.InferenceData:
    """InferenceData with the schema of ``to_inference_data`` (``layers``, r=3, K=4).

    ``precision`` adds the r × r precision sites of ``objective="bayes"``; ``prior_attrs`` go
    to the prior group (e.g. its note on the omitted cooperative tilt).
    """
    rng = np.random.default_rng(seed)
    posterior, prior, dims = {}, {}, {}
    for group, chains, scale, out in ((posterior, CHAINS, 0.05, "post"), (prior, 1, 1.0, "prior")):
        shape = (chains, DRAWS)
        for layer in layers:
            if covariance == "full":
                group[f"{layer}.covariance"] = _wishart(rng, shape, scale)
                dims[f"{layer}.covariance"] = ["rank", "rank_bis"]
            else:
                group[f"{layer}.covariance"] = rng.gamma(1.5, 2 * scale, size=(*shape, R))
                dims[f"{layer}.covariance"] = ["rank"]
            group[f"{layer}.concentration"] = rng.gamma(
                2.0 if out == "prior" else 20.0, 0.5 if out == "prior" else 0.05, size=(*shape, K)
            )
            group[f"{layer}.weights"] = rng.dirichlet(np.ones(K), size=shape)
            if precision:
                group[f"{layer}.precision"] = _wishart(rng, shape, scale)
                dims[f"{layer}.precision"] = ["rank", "rank_bis"]
            dims[f"{layer}.concentration"] = ["component"]
            dims[f"{layer}.weights"] = ["component"]
    y = rng.integers(0, 2, size=N)
    idata = az.from_dict(
        posterior=posterior,
        prior=prior,
        posterior_predictive={"y": rng.integers(0, 2, size=(CHAINS, DRAWS, N))},
        observed_data={"y": y},
        log_likelihood={"y": np.log(rng.uniform(0.2, 0.9, size=(CHAINS, DRAWS, N)))},
        dims={**dims, "y": ["example"]},
    )
    steps = np.arange(1, 31)
    training = xr.Dataset(
        {t: (("chain", "step"), rng.uniform(0.1, 1.0, size=(CHAINS, steps.size))) for t in TERMS},
        coords={"chain": np.arange(CHAINS), "step": steps},
    )
    idata.add_groups({"training": training}, warn_on_custom_groups=False)
    idata.prior.attrs.update(prior_attrs or {})
    return idata


@pytest.fixture(scope="module")
def idata():
    return make_idata()


def _titles(fig: Figure) -> list[str]:
    return [ax.get_title() for ax in fig.axes if ax.get_visible()]


def _legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    assert legend is not None
    return [t.get_text() for t in legend.get_texts()]


def _renders(fig: Figure, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    fig.savefig(path, dpi=40)
    assert path.stat().st_size > 1000


def test_short_layer_names():
    assert plots.short_layer_names(list(LAYERS)) == SHORT
    assert plots.short_layer_names(["model.layers.0.self_attn.q_proj"]) == ["self_attn.q_proj"]
    assert plots.short_layer_names([]) == []


@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_prior_posterior(idata, kind, tmp_path):
    fig = plots.plot_prior_posterior(idata, kind)
    assert isinstance(fig, Figure)
    assert fig.get_suptitle() == f"{kind}: prior vs posterior"
    titles = _titles(fig)
    per_layer = {"covariance": 2, "concentration": 1, "weights": 2, "precision": 2}[kind]
    assert len(titles) == 2 * per_layer
    assert all(any(s in t for s in SHORT) for t in titles)
    symbol = {"covariance": "Σ", "precision": "Λ"}.get(kind)
    if symbol:
        assert any(f"eigenvalues of {symbol}" in t for t in titles)
        assert any(f"diagonal of {symbol}" in t for t in titles)
    for ax in fig.axes:
        assert ax.get_ylabel() == "fraction of draws"
        assert ax.get_xlabel()
        assert _legend_texts(ax) == ["prior", "posterior"]


def test_prior_posterior_wraps_one_quantity_of_many_layers_into_a_grid(tmp_path):
    many = make_idata(seed=2, layers=[f"encoder.layer.{i}.attention.self.query" for i in range(6)])
    fig = plots.plot_prior_posterior(many, "concentration")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 6 and len(fig.axes) == 8  # 2 rows of PANELS_PER_ROW = 4
    columns = {round(ax.get_position().x0, 3) for ax in visible}
    assert len(columns) == plots.PANELS_PER_ROW
    _renders(fig, tmp_path, "grid")


def test_prior_posterior_diagonal_and_pooled(tmp_path):
    diag = make_idata(seed=1, covariance="diagonal")
    fig = plots.plot_prior_posterior(diag, "covariance")
    assert len(fig.axes) == 2
    assert all("diagonal (= eigenvalues) of Σ" in t for t in _titles(fig))
    pooled = plots.plot_prior_posterior(diag, "weights", max_panels=2)
    assert [t.split(":")[0] for t in _titles(pooled)] == ["pooled over 2 layers"] * 2
    _renders(pooled, tmp_path, "pooled")
    with pytest.raises(ValueError, match="kind"):
        plots.plot_prior_posterior(diag, "noise")


def test_without_precision_sites_the_figures_skip_the_kind(tmp_path):
    paper = make_idata(seed=3, precision=False)
    assert plots.layer_sites(paper, "precision") == {}
    assert f"{LAYERS[0]}.precision.trace" not in plots.hyperprior_summaries(paper)
    assert len([ax for ax in plots.plot_rank(paper).axes if ax.get_visible()]) == 6
    with pytest.raises(ValueError, match="no posterior"):
        plots.plot_prior_posterior(paper, "precision")


def test_prior_posterior_says_that_the_prior_omits_the_cooperative_tilt(tmp_path):
    note = "prior shown without the cooperative tilt (λ = 1, N/L = 200): pinned by that tilt"
    tilted = make_idata(seed=4, precision=False, prior_attrs={"prior_note": note})
    for kind in ("weights", "concentration"):
        title = plots.plot_prior_posterior(tilted, kind).get_suptitle()
        assert title.startswith(f"{kind}: prior vs posterior\n")
        assert "without the cooperative tilt" in title and "N/L = 200" in title.replace("\n", " ")
    cov = plots.plot_prior_posterior(tilted, "covariance")
    assert cov.get_suptitle() == "covariance: prior vs posterior"
    _renders(plots.plot_prior_posterior(tilted, "weights"), tmp_path, "tilt")


def test_hyperprior_summaries(idata):
    ds = plots.hyperprior_summaries(idata)
    assert f"{LAYERS[0]}.covariance.trace" in ds
    assert ds[f"{LAYERS[1]}.weights.max"].dims == ("chain", "draw")
    cov = idata.posterior[f"{LAYERS[0]}.covariance"].values
    np.testing.assert_allclose(
        ds[f"{LAYERS[0]}.covariance.trace"], np.trace(cov, axis1=-2, axis2=-1)
    )
    precision = idata.posterior[f"{LAYERS[1]}.precision"].values
    np.testing.assert_allclose(
        ds[f"{LAYERS[1]}.precision.trace"], np.trace(precision, axis1=-2, axis2=-1)
    )


def test_rank(idata, tmp_path):
    fig = plots.plot_rank(idata)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 2 * len(LAYER_KINDS) == 8
    assert fig.get_suptitle().startswith("rank plot across chains")
    assert "independent training restarts" in fig.get_suptitle()
    assert any("trace of Σ" in t for t in _titles(fig))
    assert any("trace of Λ" in t for t in _titles(fig))
    assert all(ax.get_xlabel() == "Rank (all chains)" for ax in visible)
    one = plots.plot_rank(idata, var_names=f"{LAYERS[0]}.weights")
    assert len([ax for ax in one.axes if ax.get_visible()]) == K


@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_forest_layers(idata, kind, tmp_path):
    fig = plots.plot_forest_layers(idata, kind)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == SHORT
    assert ax.get_xlabel() in ("trace of Σ", "mean concentration α", "max weight π", "trace of Λ")
    assert ax.get_ylabel() == "layer"
    assert "94% HDI" in ax.get_title() and "restart" in ax.get_title()
    assert _legend_texts(ax) == ["restart 0", "restart 1", "prior"]


def _probs(rng, n=200, c=2, sharp=2.0):
    logits = rng.normal(size=(n, c)) * sharp
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def test_reliability(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=200)
    curves = {
        name: (_probs(rng), labels) for name in ("posterior mean", "posterior predictive", "LoRA")
    }
    fig = plots.plot_reliability(curves, n_bins=10)
    (ax,) = fig.axes
    assert ax.get_xlabel() == "confidence"
    assert ax.get_ylabel() == "accuracy"
    assert ax.get_title()
    texts = _legend_texts(ax)
    assert texts[0] == "perfect calibration"
    for name, text in zip(curves, texts[1:], strict=True):
        assert text.startswith(f"{name} (ECE 0.")
    _renders(fig, tmp_path, "reliability")


def test_uncertainty_histograms(tmp_path):
    rng = np.random.default_rng(1)
    score = rng.uniform(size=100)
    correct = score < 0.6
    fig = plots.plot_uncertainty_histograms(score, correct, score_name="mutual information")
    (ax,) = [a for a in fig.axes if a.get_visible()]
    assert ax.get_xlabel() == "mutual information"
    assert ax.get_ylabel() == "fraction of examples"
    assert _legend_texts(ax) == [f"correct (n={correct.sum()})", f"wrong (n={(~correct).sum()})"]
    assert "correct vs wrong" in fig.get_suptitle()
    many = plots.plot_uncertainty_histograms({"a": score, "b": np.zeros(100)}, np.ones(100, bool))
    assert [a.get_xlabel() for a in many.axes if a.get_visible()] == ["a", "b"]
    _renders(many, tmp_path, "uncertainty")


def test_accuracy_coverage(tmp_path):
    rng = np.random.default_rng(2)
    conf = rng.uniform(0.5, 1.0, size=150)
    correct = rng.uniform(size=150) < conf
    fig = plots.plot_accuracy_coverage(
        {"MonteCLoRA": (conf, correct), "LoRA": (conf[::-1], correct)}
    )
    (ax,) = fig.axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("coverage", "accuracy")
    texts = _legend_texts(ax)
    assert texts[0].startswith("MonteCLoRA (area 0.") and texts[1].startswith("LoRA (area 0.")
    _renders(fig, tmp_path, "coverage")


def test_training_curves(idata, tmp_path):
    fig = plots.plot_training_curves(idata.training)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_ylabel() for ax in visible] == list(TERMS)
    assert visible[0].get_title() == "loss (negative ELBO)"
    assert all(ax.get_xlabel() == "step" for ax in visible)
    assert all(ax.get_yscale() == "log" for ax in visible)
    assert _legend_texts(visible[0]) == ["restart 0", "restart 1"]
    assert fig.get_suptitle() == "training curves"
    history = {
        "step": np.arange(1, 201),
        "epoch": np.zeros(200),
        "loss": np.linspace(2.0, -1.0, 200),
        "nll": np.linspace(1.0, 0.1, 200),
    }
    fig2 = plots.plot_training_curves(history)
    axes = [ax for ax in fig2.axes if ax.get_visible()]
    assert [ax.get_ylabel() for ax in axes] == ["loss", "nll"]
    assert axes[0].get_yscale() == "linear" and axes[1].get_yscale() == "log"
    _renders(fig2, tmp_path, "training")


def test_sweep_plot():
    records = [
        {"method": m, "lr": lr, "failed": False}
        | {mode: {"accuracy": acc, "nll": 1 - acc} for mode in ("posterior_mean", "x")}
        for m, lr, acc in (("lora", 1e-4, 0.6), ("lora", 1e-3, 0.7), ("monteclora", 1e-3, 0.8))
    ]
    records.append({"method": "monteclora", "lr": 1e-4, "failed": True})
    fig = plots.plot_sweep(records, ["monteclora", "lora"], ["accuracy", "nll"], ["x"])
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    ax = fig.axes[0]
    assert ax.get_title() == "accuracy (x)" and ax.get_xscale() == "log"
    assert _legend_texts(ax) == ["monteclora", "lora"]
    assert list(ax.lines[1].get_ydata()) == [0.6, 0.7]


def test_analysis_imports_no_training_code():
    root = Path(plots.__file__).parents[1]
    allowed = {"arviz", "numpy", "xarray", "matplotlib", "monteclora_pyro.analysis"}
    allowed |= {f"monteclora_pyro.{m}" for m in ("metrics", "runs", "sites", "files", "domains")}
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "monteclora_pyro":
                modules = [f"monteclora_pyro.{a.name}" for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            else:
                continue
            for module in modules:
                if module.split(".")[0] in sys.stdlib_module_names:
                    continue
                assert any(module == a or module.startswith(a + ".") for a in allowed), (
                    path.name,
                    module,
                )
