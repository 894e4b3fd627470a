"""PEFT interop: runs exported as PEFT LoRA adapters, and post-hoc MonteCLoRA from one."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import tiny_hf_model, token_batch
from safetensors.torch import load_file

from monteclora_pyro import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel
from monteclora_pyro.backbones import load_backbone
from monteclora_pyro.cli import main
from monteclora_pyro.infer import elbo_terms
from monteclora_pyro.io import save_adapter
from monteclora_pyro.peft_interop import (
    export_peft_adapter,
    load_peft_adapter,
    monteclora_config_from_peft,
    read_peft_config,
)
from monteclora_pyro.training import TrainConfig, build_method, load_run, save_run_config

TOL = 1e-5
TARGETS = {"bert": ["query", "value"], "llama": ["q_proj", "v_proj"]}
HEADS = {"bert": "classifier", "llama": "score"}


def _labels(n: int = 4) -> torch.Tensor:
    return torch.arange(n) % 2


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _trained_run(run_dir, arch: str) -> MonteCLoRAModel:
    """A run directory of our method after three SVI steps (so that B is not zero)."""
    cfg = MonteCLoRAConfig(r=4, lora_alpha=8, num_components=2)
    model = MonteCLoRAModel(tiny_hf_model(arch), cfg, num_data=32)
    guide = MonteCLoRAGuide(model)
    params = [p for _, p in model.trainable_parameters()] + list(guide.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(3):
        loss, _ = elbo_terms(model, guide, token_batch(), labels=_labels())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for path, layer in model.adapters.items():
        assert layer.lora_B.abs().max() > 1e-3, path
    save_adapter(run_dir, model, guide)
    save_run_config(run_dir, TrainConfig(model=f"tiny-{arch}", method="monteclora"), cfg)
    return model


def _peft_adapter(adapter_dir, arch: str, **lora_options):
    """A PEFT LoRA adapter with random B and a perturbed head, saved; returns PEFT's model."""
    peft = pytest.importorskip("peft")
    options = {"r": 4, "lora_alpha": 8, "target_modules": TARGETS[arch]}
    options.update(lora_options)
    if "task_type" not in options:
        options["modules_to_save"] = [HEADS[arch]]
    torch.manual_seed(3)
    lora_cfg = peft.LoraConfig(init_lora_weights=False, **options)
    peft_model = peft.get_peft_model(tiny_hf_model(arch), lora_cfg)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "modules_to_save" in name:
                param.add_(0.3 * torch.randn_like(param))
    peft_model.save_pretrained(adapter_dir)
    return peft_model.eval()


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_export_loads_in_peft_with_our_posterior_mean_logits(tmp_path, arch):
    peft = pytest.importorskip("peft")
    model = _trained_run(tmp_path / "run", arch)
    out = export_peft_adapter(tmp_path / "run", tmp_path / "peft")

    loaded = peft.PeftModel.from_pretrained(tiny_hf_model(arch), out).eval()
    ids = token_batch()
    with torch.no_grad():
        ours, theirs = model.logits(ids), loaded(input_ids=ids).logits
    assert _max_diff(ours, theirs) < TOL
    # The comparison sees the LoRA term: without B·A the logits move far beyond TOL.
    with torch.no_grad():
        for layer in model.adapters.values():
            layer.lora_B.zero_()
        assert _max_diff(ours, model.logits(ids)) > 100 * TOL

    # The keys and shapes are those PEFT saves for the equivalent LoraConfig.
    reference = peft.get_peft_model(
        tiny_hf_model(arch),
        peft.LoraConfig(
            r=4, lora_alpha=8, target_modules=TARGETS[arch], modules_to_save=[HEADS[arch]]
        ),
    )
    expected = peft.get_peft_model_state_dict(reference)
    exported = load_file(str(out / "adapter_model.safetensors"))
    assert {k: v.shape for k, v in exported.items()} == {k: v.shape for k, v in expected.items()}
    config = peft.LoraConfig.from_pretrained(out)
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 8, 0.0)
    assert set(config.target_modules) == set(model.adapters)
    assert config.modules_to_save == [HEADS[arch]]


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_posthoc_init_reproduces_the_peft_model(tmp_path, arch):
    # BERT: a SEQ_CLS adapter, whose config lists the absent "score" among modules_to_save.
    options = {"task_type": "SEQ_CLS"} if arch == "bert" else {}
    peft_model = _peft_adapter(tmp_path / "adapter", arch, **options)
    hf_model = tiny_hf_model(arch)
    cfg = monteclora_config_from_peft(tmp_path / "adapter", hf_model, MonteCLoRAConfig(r=4))
    assert (cfg.r, cfg.lora_alpha, cfg.modules_to_save) == (4, 8.0, [HEADS[arch]])
    assert cfg.target_modules == sorted(TARGETS[arch])
    model = load_peft_adapter(MonteCLoRAModel(hf_model, cfg, num_data=32), tmp_path / "adapter")
    ids = token_batch()
    with torch.no_grad():
        assert _max_diff(model.logits(ids), peft_model(input_ids=ids).logits) < TOL
    assert not any(p.requires_grad for _, p in model.trainable_parameters())


def test_posthoc_steps_train_the_guide_only(tmp_path):
    _peft_adapter(tmp_path / "adapter", "bert")
    hf_model = tiny_hf_model("bert")
    cfg = monteclora_config_from_peft(tmp_path / "adapter", hf_model, MonteCLoRAConfig())
    method = build_method(
        "monteclora", hf_model, cfg, num_data=32, from_peft=str(tmp_path / "adapter")
    )
    point = {n: p.detach().clone() for n, p in method.model.trainable_parameters()}
    variational = {n: p.detach().clone() for n, p in method.guide.named_parameters()}
    assert {id(p) for p in method.params} == {id(p) for p in method.guide.parameters()}
    optimizer = torch.optim.AdamW(method.params, lr=1e-2)
    for _ in range(3):
        loss, _ = method.loss({"input_ids": token_batch(), "labels": _labels()})
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, param in method.model.trainable_parameters():
        assert torch.equal(param, point[name]), name
        assert param.grad is None and not param.requires_grad, name
    for name, param in method.guide.named_parameters():
        assert not torch.equal(param, variational[name]), name


def test_export_and_posthoc_train_from_the_command_line(toy_assets, tmp_path, caplog):
    peft = pytest.importorskip("peft")
    model_dir, data_dir = toy_assets
    common = ["--quiet", "train", "--model", str(model_dir), "--task", "sst2"]
    common += ["--data-dir", str(data_dir), "--max-steps", "2", "--batch-size", "16"]
    common += ["--lr", "0.01", "--num-samples", "2", "--max-eval-examples", "16"]
    run, out, posthoc = tmp_path / "run", tmp_path / "peft", tmp_path / "posthoc"
    assert main([*common, "--r", "4", "--output-dir", str(run)]) == 0
    assert main(["--quiet", "export", str(run), "--peft", str(out)]) == 0
    assert main(["--quiet", "export", str(run), "--peft", str(out)]) == 2
    assert "is not empty" in caplog.text
    assert main(["--quiet", "export", str(run), "--peft", str(out), "--overwrite"]) == 0

    method, tokenizer, _ = load_run(run)
    model = method.model
    backbone = load_backbone(str(model_dir), 2)[0]
    loaded = peft.PeftModel.from_pretrained(backbone, out).eval()
    batch = tokenizer(["good film", "the plot was very boring"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert _max_diff(model.logits(**batch), loaded(**batch).logits) < TOL

    # Post-hoc from the exported adapter: r, targets and head come from it (--r is left unset).
    assert main([*common, "--from-peft", str(out), "--r", "2", "--output-dir", str(posthoc)]) == 2
    assert "conflicts with r=4" in caplog.text
    assert main([*common, "--from-peft", str(out), "--output-dir", str(posthoc)]) == 0
    config = json.loads((posthoc / "config.json").read_text())
    assert config["train"]["from_peft"] == str(out)
    assert config["monteclora"]["r"] == 4
    assert config["monteclora"]["modules_to_save"] == ["classifier"]
    before = load_file(str(run / "adapter_model.safetensors"))
    after = load_file(str(posthoc / "adapter_model.safetensors"))
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert torch.equal(value, after[name]), name
    method, _, _ = load_run(posthoc)
    model, guide = method.model, method.guide
    initial = MonteCLoRAGuide(model).state_dict()
    assert all(not torch.equal(v, initial[k]) for k, v in guide.state_dict().items())
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (run, posthoc)]
    assert metrics[1]["posterior_mean"]["nll"] == pytest.approx(
        metrics[0]["posterior_mean"]["nll"], abs=1e-6
    )


def test_export_refuses_what_is_not_a_finished_run_of_ours(tmp_path, monkeypatch):
    pytest.importorskip("peft")
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        export_peft_adapter(tmp_path, tmp_path / "out")
    baseline, unfinished = tmp_path / "baseline", tmp_path / "unfinished"
    baseline.mkdir()
    unfinished.mkdir()
    # A PEFT run's config.json holds PEFT's LoraConfig under "peft".
    save_run_config(
        baseline, TrainConfig(method="peft-lora"), MonteCLoRAConfig(), peft={"peft_type": "LORA"}
    )
    with pytest.raises(ValueError, match="already in PEFT's format"):
        export_peft_adapter(baseline, tmp_path / "out")
    save_run_config(unfinished, TrainConfig(), MonteCLoRAConfig())
    with pytest.raises(FileNotFoundError, match="is the run finished"):
        export_peft_adapter(unfinished, tmp_path / "out")
    with pytest.raises(ValueError, match="into the run directory"):
        export_peft_adapter(unfinished, unfinished)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_peft_adapter(unfinished, tmp_path / "full")
    assert not (tmp_path / "out").exists()

    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(RuntimeError, match="pip install"):
        export_peft_adapter(unfinished, tmp_path / "out")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("use_dora", True, "use_dora=True"),
        ("use_rslora", True, "use_rslora=True"),
        ("bias", "all", "bias='all'"),
        ("rank_pattern", {"query": 2}, "rank_pattern"),
        ("peft_type", "IA3", "only 'LORA'"),
        ("init_lora_weights", "pissa", "init_lora_weights='pissa'"),
        ("r", 0, "r=0 is invalid"),
        ("layers_to_transform", 0, "layers_to_transform=0"),
    ],
)
def test_reading_an_adapter_refuses_what_monteclora_cannot_express(tmp_path, field, value, message):
    _peft_adapter(tmp_path, "bert")
    path = tmp_path / "adapter_config.json"
    config = json.loads(path.read_text())
    config[field] = value
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        read_peft_config(tmp_path)


def test_adapter_conflicts_and_missing_files_are_clear_errors(tmp_path):
    adapter = tmp_path / "adapter"
    _peft_adapter(adapter, "bert")
    hf_model = tiny_hf_model("bert")
    with pytest.raises(ValueError, match=r"r=2 conflicts with r=4"):
        monteclora_config_from_peft(adapter, hf_model, MonteCLoRAConfig(r=2))
    with pytest.raises(ValueError, match="adapts"):
        monteclora_config_from_peft(adapter, hf_model, MonteCLoRAConfig(target_modules=["query"]))
    with pytest.raises(ValueError, match="modules_to_save"):
        monteclora_config_from_peft(adapter, hf_model, MonteCLoRAConfig(modules_to_save=["bert"]))
    with pytest.raises(ValueError, match="newly initialised"):
        monteclora_config_from_peft(adapter, hf_model, new_modules=["bert.pooler.dense"])
    same = MonteCLoRAConfig(lora_alpha=8, target_modules=["value", "query"])
    assert monteclora_config_from_peft(adapter, hf_model, same).r == 4

    with pytest.raises(ValueError, match="r=8 but"):
        load_peft_adapter(MonteCLoRAModel(tiny_hf_model("bert"), num_data=4), adapter)
    wider = MonteCLoRAModel(
        tiny_hf_model("bert", hidden=48), MonteCLoRAConfig(r=4, lora_alpha=8), num_data=4
    )
    with pytest.raises(ValueError, match="has shape"):
        load_peft_adapter(wider, adapter)

    with pytest.raises(ValueError, match="needs it"):
        TrainConfig(method="lora", from_peft=str(adapter))
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    with pytest.raises(FileNotFoundError, match="safe_serialization"):
        read_peft_config(adapter)
    with pytest.raises(FileNotFoundError, match="not a PEFT adapter directory"):
        read_peft_config(tmp_path)
