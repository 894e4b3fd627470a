"""Saving and loading adapters: round trips, file layout, bad input, atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyro
import pytest
import torch
from conftest import tiny_hf_model, token_batch
from pyro import poutine
from safetensors import safe_open

import monteclora_pyro.io as mio
from monteclora_pyro import (
    LoRAGuide,
    MonteCLoRAConfig,
    MonteCLoRAGuide,
    MonteCLoRAModel,
    load_adapter,
    save_adapter,
)
from monteclora_pyro.config import CONFIG_NAME
from monteclora_pyro.io import ADAPTER_FILE, GUIDE_FILE, META_FILE

GUIDES = {"monteclora": MonteCLoRAGuide, "lora": LoRAGuide}
NUM_DATA = 24


def _trained(arch: str, guide_kind: str, r: int = 4):
    """A model and guide whose every learnable tensor has been moved away from its init."""
    cfg = MonteCLoRAConfig(r=r, sample_scaler=0.5)
    model = MonteCLoRAModel(tiny_hf_model(arch, seed=0), cfg, num_data=NUM_DATA)
    guide = GUIDES[guide_kind](model)
    torch.manual_seed(123)
    with torch.no_grad():
        for _, param in model.trainable_parameters():
            param.copy_(torch.randn_like(param))
        if isinstance(guide, MonteCLoRAGuide):
            for _, param in guide.named_variational_parameters():
                param.copy_(0.5 * torch.randn_like(param))
    return model, guide


def _posterior_draw(model, guide, ids, seed: int) -> torch.Tensor:
    pyro.set_rng_seed(seed)
    with torch.no_grad():
        trace = poutine.trace(guide).get_trace(ids)
        return poutine.replay(model, trace=trace)(ids)


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _tmp_files(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if name.endswith(".tmp")]


def _safetensors_keys(path: Path) -> set[str]:
    with safe_open(str(path), framework="pt") as f:
        return set(f.keys())


# --------------------------------------------------------------------------------------------
# Round trip
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["bert", "llama"])
@pytest.mark.parametrize("guide_kind", ["monteclora", "lora"])
def test_round_trip_restores_predictions_and_variational_parameters(tmp_path, arch, guide_kind):
    model, guide = _trained(arch, guide_kind)
    ids = token_batch(batch=5, length=6)
    save_adapter(tmp_path / "adapter", model, guide)
    assert _tmp_files(tmp_path / "adapter") == []

    loaded, loaded_guide = load_adapter(tmp_path / "adapter", tiny_hf_model(arch, seed=0))
    assert type(loaded_guide) is type(guide)
    assert loaded.config == model.config
    assert loaded.num_data == NUM_DATA

    with torch.no_grad():
        mean_logits = model.logits(ids)
        assert torch.equal(loaded.logits(ids), mean_logits)
    for (name, a), (name_b, b) in zip(
        model.trainable_parameters(), loaded.trainable_parameters(), strict=True
    ):
        assert name == name_b and torch.equal(a, b), name
    if isinstance(guide, MonteCLoRAGuide):
        original = dict(guide.named_variational_parameters())
        restored = dict(loaded_guide.named_variational_parameters())
        assert list(original) == list(restored)
        for name, value in original.items():
            assert torch.equal(value, restored[name]), name
        for name, value in guide.constrained_parameters().items():
            assert torch.equal(value, loaded_guide.constrained(name)), name

    draw = _posterior_draw(model, guide, ids, seed=7)
    loaded_draw = _posterior_draw(loaded, loaded_guide, ids, seed=7)
    assert torch.equal(draw, loaded_draw)
    if isinstance(guide, MonteCLoRAGuide):
        # The draw carries noise, so the comparison above is not the posterior mean again.
        assert not torch.allclose(draw, mean_logits)
        assert not torch.equal(_posterior_draw(model, guide, ids, seed=8), draw)
    else:
        torch.testing.assert_close(draw, mean_logits)


@pytest.mark.parametrize("arch", ["bert", "llama"])
@pytest.mark.parametrize("guide_kind", ["monteclora", "lora"])
def test_saved_files_name_the_param_store_and_resave_identically(tmp_path, arch, guide_kind):
    model, guide = _trained(arch, guide_kind)
    first = save_adapter(tmp_path / "first", model, guide)
    expected = {CONFIG_NAME, META_FILE, ADAPTER_FILE}
    if guide_kind == "monteclora":
        expected.add(GUIDE_FILE)
    assert {p.name for p in first.iterdir()} == expected

    # Tensor names are the param-store names of the model and guide.
    assert _safetensors_keys(first / ADAPTER_FILE) == {n for n, _ in model.trainable_parameters()}
    if guide_kind == "monteclora":
        names = {n for n, _ in guide.named_variational_parameters()}
        assert _safetensors_keys(first / GUIDE_FILE) == names
        # ... and the param store, after one guide call, holds exactly these names.
        pyro.clear_param_store()
        with torch.no_grad():
            poutine.trace(guide).get_trace(token_batch())
            poutine.trace(model).get_trace(token_batch())
        store = set(pyro.get_param_store().keys())
        assert store == names | {n for n, _ in model.trainable_parameters()}

    config = json.loads((first / CONFIG_NAME).read_text())
    assert config == model.config.to_dict()
    meta = json.loads((first / META_FILE).read_text())
    assert meta["guide"] == type(guide).__name__
    assert meta["target_paths"] == list(model.adapters)

    loaded, loaded_guide = load_adapter(first, tiny_hf_model(arch, seed=0))
    second = save_adapter(tmp_path / "second", loaded, loaded_guide)
    assert _snapshot(second) == _snapshot(first)


def test_save_without_a_guide_loads_without_one(tmp_path):
    model, _ = _trained("bert", "lora")
    save_adapter(tmp_path, model)
    assert not (tmp_path / GUIDE_FILE).exists()
    loaded, guide = load_adapter(tmp_path, tiny_hf_model("bert", seed=0))
    assert guide is None
    ids = token_batch()
    with torch.no_grad():
        assert torch.equal(loaded.logits(ids), model.logits(ids))


# --------------------------------------------------------------------------------------------
# Bad input: a clear error naming the file, and nothing on disk touched
# --------------------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path) -> Path:
    model, guide = _trained("bert", "monteclora")
    return save_adapter(tmp_path / "adapter", model, guide)


def _assert_failed_load(directory: Path, error, *fragments: str, arch: str = "bert"):
    before = _snapshot(directory) if directory.is_dir() else None
    with pytest.raises(error) as info:
        load_adapter(directory, tiny_hf_model(arch, seed=0))
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    if before is not None:
        assert _snapshot(directory) == before
    return message


def test_corrupt_adapter_file(saved):
    (saved / ADAPTER_FILE).write_bytes(b"this is not a safetensors file at all" * 7)
    message = _assert_failed_load(saved, ValueError, str(saved / ADAPTER_FILE))
    assert "corrupt" in message


def test_truncated_guide_file(saved):
    data = (saved / GUIDE_FILE).read_bytes()
    (saved / GUIDE_FILE).write_bytes(data[: len(data) // 2])
    _assert_failed_load(saved, ValueError, str(saved / GUIDE_FILE))


def test_missing_meta_file(saved):
    (saved / META_FILE).unlink()
    _assert_failed_load(saved, FileNotFoundError, META_FILE, str(saved))


def test_missing_guide_file(saved):
    (saved / GUIDE_FILE).unlink()
    _assert_failed_load(saved, FileNotFoundError, str(saved / GUIDE_FILE))


def test_rank_edited_on_disk_names_the_tensor_and_both_shapes(saved):
    config = json.loads((saved / CONFIG_NAME).read_text())
    assert config["r"] == 4
    config["r"] = 8
    (saved / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    first = json.loads((saved / META_FILE).read_text())["target_paths"][0]
    _assert_failed_load(
        saved, ValueError, str(saved / ADAPTER_FILE), f"{first}.lora_A", "(4, 32)", "(8, 32)"
    )


def test_other_architecture_is_rejected(saved):
    message = _assert_failed_load(saved, ValueError, str(saved), arch="llama")
    assert "architecture" in message


def test_missing_directory(tmp_path):
    missing = tmp_path / "nowhere"
    _assert_failed_load(missing, FileNotFoundError, str(missing))
    assert not missing.exists()


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------


def _interrupted(write_part):
    """A writer that puts half of its output in place and then fails, like a full disk."""

    def fail(*args, **kwargs):
        write_part(*args, **kwargs)
        raise OSError(28, "No space left on device")

    return fail


@pytest.mark.parametrize(
    "victim",
    [
        CONFIG_NAME,
        META_FILE,
        ADAPTER_FILE,
        GUIDE_FILE,
    ],
)
def test_interrupted_save_keeps_the_previous_file(tmp_path, monkeypatch, victim):
    model, guide = _trained("bert", "monteclora")
    save_adapter(tmp_path, model, guide)
    before = _snapshot(tmp_path)
    with torch.no_grad():  # a different state to save
        for _, param in [*model.trainable_parameters(), *guide.named_variational_parameters()]:
            param.add_(1.0)
    model.config.lora_dropout = 0.25  # and a different config text

    real_save_file, real_write_text = mio.save_file, Path.write_text

    def partial_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 64)

    def partial_write_text(self, text, *args, **kwargs):
        with open(self, "w") as f:
            f.write(text[: len(text) // 2])

    def save_file(tensors, filename, metadata=None):
        if Path(filename).name.startswith(f".{victim}."):
            return _interrupted(partial_save_file)(tensors, filename, metadata)
        return real_save_file(tensors, filename, metadata=metadata)

    def write_text(self, text, *args, **kwargs):
        if self.name == victim or self.name.startswith(f".{victim}."):
            return _interrupted(partial_write_text)(self, text)
        return real_write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(mio, "save_file", save_file)
    monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(OSError, match="No space left"):
        save_adapter(tmp_path, model, guide)
    monkeypatch.undo()

    assert _tmp_files(tmp_path) == []
    assert (tmp_path / victim).read_bytes() == before[victim]


def test_save_leaves_no_temporary_files_and_overwrites(tmp_path):
    model, guide = _trained("bert", "monteclora")
    save_adapter(tmp_path, model, guide)
    first = _snapshot(tmp_path)
    with torch.no_grad():
        for _, param in guide.named_variational_parameters():
            param.mul_(2.0)
    save_adapter(tmp_path, model, guide)
    assert _tmp_files(tmp_path) == []
    second = _snapshot(tmp_path)
    assert set(second) == set(first)
    assert second[GUIDE_FILE] != first[GUIDE_FILE]
    assert second[ADAPTER_FILE] == first[ADAPTER_FILE]
