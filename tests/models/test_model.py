"""MonteCLoRAModel: targets, sites, param store, posterior-mean mode, merging and errors."""

from __future__ import annotations

import copy
import warnings

import pyro
import pytest
import torch
from conftest import tiny_hf_model, token_batch
from pyro import poutine

from monteclora_pyro import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel
from monteclora_pyro.models.objectives import PaperObjective
from monteclora_pyro.sites import site_name

SITES = PaperObjective.kinds  # the latent sites of each layer (paper objective)
DEFAULT_SUFFIXES = {
    "bert": ("query", "value"),
    "roberta": ("query", "value"),
    "llama": ("q_proj", "v_proj"),
}


@pytest.mark.parametrize("arch", ["bert", "roberta", "llama"])
def test_default_targets_and_trainable_set(arch):
    hf = tiny_hf_model(arch)
    model = MonteCLoRAModel(hf, num_data=10)
    suffixes = DEFAULT_SUFFIXES[arch]
    expected = [
        n
        for n, m in tiny_hf_model(arch).named_modules()
        if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in suffixes
    ]
    assert list(model.adapters) == expected and len(expected) == 4
    trainable = {id(p) for _, p in model.trainable_parameters()}
    for name, param in hf.named_parameters():
        assert param.requires_grad == (id(param) in trainable), name
    head = {"bert": "classifier", "roberta": "classifier", "llama": "score"}[arch]
    assert model.head_names == [head]


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_param_store_holds_only_adapter_head_and_guide(arch):
    model = MonteCLoRAModel(tiny_hf_model(arch), num_data=10)
    guide = MonteCLoRAGuide(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pyro.infer.Trace_ELBO().differentiable_loss(
            model, guide, token_batch(), labels=torch.tensor([0, 1, 1, 0])
        )
    expected = {n for n, _ in model.trainable_parameters()}
    expected |= {n for n, _ in guide.named_variational_parameters()}
    store = pyro.get_param_store()
    assert set(store.keys()) == expected
    for name, param in model.trainable_parameters():
        assert store[name] is param


def test_latent_site_names_shapes_and_scale():
    cfg = MonteCLoRAConfig(r=4, num_components=3)
    model = MonteCLoRAModel(tiny_hf_model(), cfg, num_data=200)
    trace = poutine.trace(model).get_trace(token_batch(), labels=torch.tensor([0, 1, 0, 1]))
    for path, layer in model.adapters.items():
        shapes = {
            "covariance": (4, 4),
            "concentration": (3,),
            "weights": (3,),
            "noise": (3, layer.in_features, 4),
        }
        for site in SITES:
            node = trace.nodes[site_name(path, site)]
            assert tuple(node["value"].shape) == shapes[site]
            assert node["scale"] == pytest.approx(1e-5 * 200 / 4)
    y = trace.nodes["y"]
    assert y["scale"] == pytest.approx(200 / 4) and y["is_observed"]
    assert trace.nodes["cooperative"]["is_observed"]


def test_noise_off_is_plain_lora_with_mean_and_merge_matches():
    torch.manual_seed(3)
    hf = tiny_hf_model()
    reference = copy.deepcopy(hf)
    model = MonteCLoRAModel(hf, MonteCLoRAConfig(r=4), num_data=50)
    for layer in model.adapters.values():
        torch.nn.init.normal_(layer.lora_B)
    ids = token_batch()
    guide = MonteCLoRAGuide(model)
    guide_trace = poutine.trace(guide).get_trace(ids)
    zeros = {
        name: torch.zeros_like(node["value"])
        for name, node in guide_trace.nodes.items()
        if name.endswith(".noise")
    }
    replayed = poutine.replay(poutine.condition(model, data=zeros), trace=guide_trace)
    sampled = replayed(ids)
    mean = model.logits(ids)
    assert torch.equal(sampled, mean)
    with torch.no_grad():
        for path, layer in model.adapters.items():
            base = reference.get_submodule(path)
            base.weight += layer.scaling * layer.lora_B @ layer.lora_A
    expected = reference(input_ids=ids).logits
    torch.testing.assert_close(mean, expected, atol=1e-5, rtol=0)
    model.merge_adapters()
    merged = model.hf_model(input_ids=ids).logits
    torch.testing.assert_close(merged, mean, atol=1e-5, rtol=0)
    model.unmerge_adapters()
    torch.testing.assert_close(model.logits(ids), mean, atol=1e-5, rtol=0)


def test_sampled_noise_changes_logits_by_epsilon():
    model = MonteCLoRAModel(tiny_hf_model(), MonteCLoRAConfig(sample_scaler=1.0), num_data=50)
    for layer in model.adapters.values():
        torch.nn.init.normal_(layer.lora_B)
    ids = token_batch()
    assert not torch.allclose(
        poutine.trace(model).get_trace(ids).nodes["_RETURN"]["value"], model.logits(ids)
    )


def test_sparse_mixture_uses_only_heaviest_component():
    from monteclora_pyro.models.objectives import perturbation

    cfg = MonteCLoRAConfig(r=2, num_components=3, mixture="sparse", sample_scaler=0.5)
    weights = torch.tensor([0.2, 0.5, 0.3])
    noise = torch.randn(3, 5, 2)
    expected = 0.5 * 0.5 * noise[1].t()
    torch.testing.assert_close(perturbation(weights, noise, cfg), expected)
    dense = MonteCLoRAConfig(r=2, num_components=3, sample_scaler=0.5)
    expected = 0.5 * (0.2 * noise[0] + 0.5 * noise[1] + 0.3 * noise[2]).t()
    torch.testing.assert_close(perturbation(weights, noise, dense), expected)


def test_unknown_target_lists_existing_linear_modules():
    with pytest.raises(ValueError) as err:
        MonteCLoRAModel(tiny_hf_model(), MonteCLoRAConfig(target_modules=["qkv"]), num_data=5)
    message = str(err.value)
    assert "'qkv' is not a linear module" in message
    for name in ("query", "key", "value", "dense", "classifier"):
        assert name in message
    with pytest.raises(ValueError, match="regex 'nothing.*' matches no linear module"):
        MonteCLoRAModel(tiny_hf_model(), MonteCLoRAConfig(target_modules="nothing.*"), num_data=5)


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="num_data=0 is invalid"):
        MonteCLoRAModel(tiny_hf_model(), num_data=0)
    with pytest.raises(ValueError, match="num_labels=1.*regression"):
        MonteCLoRAModel(tiny_hf_model(num_labels=1), num_data=5)
    with pytest.raises(ValueError, match="modules_to_save entry 'head'.*'bert', 'dropout'"):
        MonteCLoRAModel(tiny_hf_model(), MonteCLoRAConfig(modules_to_save=["head"]), num_data=5)


def test_labels_outside_label_set():
    model = MonteCLoRAModel(tiny_hf_model(), num_data=5)
    with pytest.raises(ValueError, match=r"labels \[2, 7\] are outside the model's label set 0..1"):
        model(token_batch(), labels=torch.tensor([0, 2, 7, 1]))
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        model(token_batch(), labels=torch.tensor([0, 1]))
