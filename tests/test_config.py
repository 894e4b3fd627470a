"""MonteCLoRAConfig: defaults, validation and JSON round trips."""

from __future__ import annotations

import json

import pytest

from monteclora_pyro import MonteCLoRAConfig
from monteclora_pyro.training import (
    POST_HOC_PRESETS,
    PRESET_TRAINING,
    TrainConfig,
    check_preset,
    preset_training,
    two_phase_training,
)
from monteclora_pyro.training.config import delay_steps


def test_defaults_follow_design_table():
    cfg = MonteCLoRAConfig()
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout, cfg.num_components) == (8, 16.0, 0.0, 4)
    assert (cfg.sample_scaler, cfg.kl_loss_weight, cfg.cooperative_weight) == (1e-4, 1e-5, 1.0)
    assert (cfg.covariance, cfg.concentration_prior, cfg.noise_prior, cfg.mixture) == (
        "full",
        "gamma",
        "standard",
        "dense",
    )
    assert (cfg.wishart_df, cfg.prior_df, cfg.wishart_scale) == (None, 8.0, None)
    assert cfg.prior_scale == 1 / 8  # prior mean of Σ: ν0·V0 = I
    assert MonteCLoRAConfig.paper().prior_scale == 1.0  # the paper's V0 = I
    assert (cfg.concentration_shape, cfg.concentration_rate, cfg.concentration) == (2.0, 2.0, 1.0)
    assert cfg.scaling == 2.0


def test_json_round_trip_is_byte_identical(tmp_path):
    cfg = MonteCLoRAConfig(
        r=4, covariance="diagonal", target_modules=["query"], kl_loss_weight=None, wishart_df=6.5
    )
    first = cfg.save(tmp_path)
    loaded = MonteCLoRAConfig.load(tmp_path)
    assert loaded == cfg
    second = loaded.save(tmp_path / "again.json")
    assert first.read_bytes() == second.read_bytes()
    assert json.loads(first.read_text())["wishart_df"] == 6.5


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("r", 0, "positive integer"),
        ("r", -3, "positive integer"),
        ("r", 2.5, "positive integer"),
        ("num_components", 0, ">= 1"),
        ("sample_scaler", 0.0, "> 0"),
        ("sample_scaler", -1e-4, "> 0"),
        ("kl_loss_weight", -1.0, "> 0"),
        ("cooperative_weight", -0.5, ">= 0"),
        ("lora_dropout", 1.0, "[0, 1)"),
        ("wishart_df", 2.0, "> r - 1"),
        ("wishart_scale", float("nan"), "finite"),
        ("covariance", "banded", "'full', 'diagonal'"),
        ("concentration_prior", "beta", "'gamma', 'fixed'"),
        ("noise_prior", "student", "'standard', 'hierarchical'"),
        ("mixture", "top2", "'dense', 'sparse'"),
        ("target_modules", [], "non-empty list"),
        ("modules_to_save", "classifier", "non-empty list"),
    ],
)
def test_invalid_values_name_field_value_and_allowed(field, value, fragment):
    with pytest.raises(ValueError) as err:
        MonteCLoRAConfig(**{field: value})
    message = str(err.value)
    assert f"MonteCLoRAConfig.{field}={value!r}" in message
    assert fragment in message


def test_unknown_and_malformed_files(tmp_path):
    with pytest.raises(ValueError, match="unknown MonteCLoRAConfig fields \\['rank'\\]"):
        MonteCLoRAConfig.from_dict({"rank": 8})
    with pytest.raises(FileNotFoundError, match="no MonteCLoRA config"):
        MonteCLoRAConfig.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        MonteCLoRAConfig.load(bad)


def test_the_uncertainty_preset_is_the_tempered_bayesian_objective():
    cfg = MonteCLoRAConfig.uncertainty(r=4)
    assert (cfg.objective, cfg.kl_loss_weight, cfg.cooperative_weight, cfg.r) == (
        "bayes",
        0.01,
        0.0,
        4,
    )
    assert MonteCLoRAConfig.preset("uncertainty", r=4) == cfg
    assert MonteCLoRAConfig.preset("paper") == MonteCLoRAConfig.paper()
    assert MonteCLoRAConfig.preset("default") == MonteCLoRAConfig()
    with pytest.raises(ValueError, match="preset='cold' is invalid"):
        MonteCLoRAConfig.preset("cold")


@pytest.mark.parametrize(
    ("epochs", "delay", "total"),
    [(3, 0.5, 6), (1, 0.5, 2), (3, 0.75, 4), (3, 6 / 7, 3.5), (3, 0.4, 7.5), (2, 0.3, 6.666666667)],
)
def test_two_phase_training_gives_the_adapter_loras_steps(epochs, delay, total):
    settings = two_phase_training(epochs, delay)
    assert settings == {
        "epochs": total,
        "guide_delay_ratio": delay,
        "guide_lr_restart": True,
        "freeze_adapter_after_delay": True,
    }
    assert type(settings["epochs"]) is type(total)  # whole numbers stay ints in config.json
    config = TrainConfig(**settings)
    for steps_per_epoch in (1, 7, 112, 113, 207, 3001):
        total_steps = config.total_steps(steps_per_epoch)
        assert delay_steps(delay, total_steps) == epochs * steps_per_epoch  # LoRA's steps


def test_delay_steps_counts_whole_steps_despite_rounding():
    assert int(0.7 * 90) == 62 and int(0.7 * 340) == 237  # a float error short of 63, 238
    assert delay_steps(0.7, 90) == 63 and delay_steps(0.7, 340) == 238
    assert delay_steps(0.5, 339) == 169 and delay_steps(0.0, 100) == 0
    assert delay_steps(0.75, 4) == int(0.75 * 4)


def test_preset_training_trains_uncertaintys_guide_around_a_finished_run(tmp_path):
    # the sixteenth pass's selection: half an epoch of the guide at guide_lr 0.2, post hoc
    assert preset_training("uncertainty") == {"epochs": 0.5, "guide_lr": 0.2}
    assert set(PRESET_TRAINING) == {"uncertainty"} and POST_HOC_PRESETS == ("uncertainty",)
    assert all(preset_training(name) == {} for name in (None, "default", "paper", "bayes"))
    preset_training("uncertainty")["epochs"] = 9  # a copy: the preset itself is unchanged
    assert preset_training("uncertainty")["epochs"] == 0.5
    with pytest.raises(ValueError, match="'uncertainty' trains the guide around a finished"):
        check_preset("uncertainty", TrainConfig(**preset_training("uncertainty")))
    for source in ({"from_run": str(tmp_path)}, {"from_peft": str(tmp_path)}):
        check_preset("uncertainty", TrainConfig(**source))  # no error
    for name in (None, "default", "paper", "bayes"):
        check_preset(name, TrainConfig())


def test_the_command_line_preset_is_overridden_by_explicit_options(tmp_path):
    from monteclora_pyro.cli import build_parser
    from monteclora_pyro.cli.options import configs

    source = ["--from-run", str(tmp_path)]
    args = build_parser().parse_args(
        ["train", "--preset", "uncertainty", "--kl-loss-weight", "0.5", *source]
    )
    train_cfg, model_cfg = configs(args)
    assert model_cfg == MonteCLoRAConfig.uncertainty(kl_loss_weight=0.5)
    preset = {k: getattr(train_cfg, k) for k in preset_training("uncertainty")}
    assert preset == preset_training("uncertainty") and train_cfg.from_run == str(tmp_path)
    args = build_parser().parse_args(
        ["train", "--preset", "uncertainty", "--epochs", "2", "--guide-lr", "0.1", *source]
    )
    assert (configs(args)[0].epochs, configs(args)[0].guide_lr) == (2, 0.1)
    args = build_parser().parse_args(["train", "--preset", "uncertainty"])
    with pytest.raises(ValueError, match=r"--method lora --output-dir RUN_DIR.*--from-run"):
        configs(args)
    plain_train, plain = configs(build_parser().parse_args(["train"]))
    assert plain == MonteCLoRAConfig()
    assert {k: getattr(plain_train, k) for k in preset} == {
        k: getattr(TrainConfig(), k) for k in preset
    }


def test_the_help_of_an_option_a_preset_sets_gives_both_defaults(monkeypatch):
    from monteclora_pyro.cli import build_parser

    monkeypatch.setenv("COLUMNS", "1000")  # one line per option: no wrapping to join
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    text = " ".join(train.format_help().split())
    for name, value in preset_training("uncertainty").items():
        default = getattr(TrainConfig(), name)
        assert f"(default: {default}; --preset uncertainty: {value})" in text, name
    sweep = parser._subparsers._group_actions[0].choices["sweep"]
    assert sweep.get_default("epochs") == TrainConfig().epochs  # no preset in a sweep


def test_command_line_epochs_take_a_fraction_and_keep_a_whole_number_an_integer():
    from monteclora_pyro.cli import build_parser
    from monteclora_pyro.cli.options import configs

    def epochs(text: str):
        return configs(build_parser().parse_args(["train", "--epochs", text]))[0].epochs

    assert epochs("0.5") == 0.5
    assert [(epochs(t), type(epochs(t))) for t in ("3", "3.0")] == [(3, int), (3, int)]
    with pytest.raises(ValueError, match=r"TrainConfig.epochs=-1 is invalid: .*> 0"):
        epochs("-1")
