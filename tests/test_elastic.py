"""Elastic students: rewiring keeps the function, a sub-network run inside the elastic model is the one cut out of
it, and one training step distills several sub-networks into the shared weights."""
from __future__ import annotations

import pytest
import torch

from compress.stages.distill import LossConfig
from compress.stages.elastic import Candidate, ElasticLoss, extract, forward_as, rewire
from compress.stages.prune import blocks
from tests.conftest import tiny_config

INPUTS = {"input_ids": torch.tensor([[2, 5, 9, 14, 3, 0], [2, 7, 8, 3, 0, 0]]),
          "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])}


def model(arch: str, layers: int = 4):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    m = AutoModelForSequenceClassification.from_config(tiny_config(arch, num_hidden_layers=layers))
    return m.eval()


def random_scores(m) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(b.heads(m.config.hidden_size // m.config.num_attention_heads), generator=g),
             torch.rand(b.ffn_in.out_features, generator=g)) for b in blocks(m)]


@pytest.mark.parametrize("arch", ["bert", "albert"])
def test_rewiring_keeps_the_function_and_puts_the_most_important_first(arch):
    m = model(arch)
    before = m(**INPUTS).logits
    scores = random_scores(m)
    query = blocks(m)[0].qkv[0].weight.detach().clone()
    rewire(m, scores)
    assert torch.allclose(m(**INPUTS).logits, before, atol=1e-5)
    d = m.config.hidden_size // m.config.num_attention_heads
    best = int(scores[0][0].argmax())
    assert torch.equal(blocks(m)[0].qkv[0].weight[:d], query[best * d:(best + 1) * d])


@pytest.mark.parametrize("arch", ["bert", "albert"])
@pytest.mark.parametrize("candidate", [Candidate(2, 0.5, 0.75), Candidate(3, 0.25, 0.0), Candidate(4, 0.0, 0.5),
                                       Candidate(1, 0.75, 0.25)])
def test_a_cut_out_sub_network_gives_the_logits_it_gave_inside_the_elastic_model(arch, candidate):
    m = model(arch)
    rewire(m, random_scores(m))
    inside = forward_as(m, candidate, **INPUTS, output_hidden_states=True)
    sub = extract(m, candidate)
    assert sub.config.num_hidden_layers == candidate.layers
    assert sub.config.intermediate_size == candidate.kept_neurons(m.config)
    cut = sub(**INPUTS, output_hidden_states=True)
    assert torch.allclose(cut.logits, inside.logits, atol=1e-5)
    assert torch.allclose(cut.hidden_states[-1], inside.hidden_states[-1], atol=1e-5)
    whole = m(**INPUTS, output_hidden_states=True).hidden_states[-1]
    assert not torch.allclose(inside.hidden_states[-1], whole, atol=1e-2)  # a smaller network, not the whole
    # the elastic model is whole again afterwards
    assert m.config.num_hidden_layers == 4 and len(blocks(m)) == (4 if arch == "bert" else 1)


def test_a_cut_out_sub_network_reloads_by_the_documented_route(tmp_path):
    from compress.core.models import load_classifier

    m = model("bert")
    rewire(m, random_scores(m))
    candidate = Candidate(2, 0.5, 0.5)
    extract(m, candidate).save_pretrained(tmp_path)
    reloaded = load_classifier(tmp_path).eval()  # transformers 4 and 5 alike (5 cannot cut heads itself)
    assert torch.allclose(reloaded(**INPUTS).logits, forward_as(m, candidate, **INPUTS).logits, atol=1e-5)


def test_one_step_trains_the_largest_the_smallest_and_sampled_sub_networks_in_the_shared_weights():
    teacher, student = model("bert"), model("bert")
    torch.nn.init.normal_(student.classifier.weight)
    grid = [Candidate(l, h, f) for l in (1, 2, 4) for h in (0.0, 0.5) for f in (0.5,)]
    order = [c.estimated_cost(student.config, "latency", 16) for c in grid]
    loss = ElasticLoss(LossConfig(hidden=1.0), teacher, grid, order, sandwich=1, cache={}, seed=0)
    drawn = loss.sample()
    assert drawn[:2] == [Candidate(4, 0.0, 0.5), Candidate(1, 0.5, 0.5)] and len(drawn) == 3
    value = loss(student.train(), INPUTS, torch.tensor([0, 1]))
    value.backward()
    top = blocks(student)[-1]  # only the 4-layer candidates read the last layer
    assert value.item() > 0 and top.ffn_in.weight.grad is not None
    assert top.ffn_in.weight.grad[top.ffn_in.out_features // 2:].abs().sum() == 0  # pruned half: no gradient


def test_the_search_refuses_losses_it_cannot_map():
    from compress.stages.search import SearchConfig

    with pytest.raises(ValueError, match="attention and layer_map"):
        SearchConfig(name="s", distillation={"loss": {"attention": 1.0}})
