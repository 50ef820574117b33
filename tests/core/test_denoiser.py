"""The denoisers' time embedding: computed once per distinct step, equal to the per-sample formula."""
from __future__ import annotations

import math

import pytest
import torch

from imagined_env.diffusion.denoiser import (
    KINDS,
    DenoiserConfig,
    TimeEmbedding,
    build_denoiser,
    member_predictions,
    members,
)


def _reference(module: TimeEmbedding, t: int, time_dim: int) -> torch.Tensor:
    """Sinusoidal features of one step written out from their definition, then the module's MLP."""
    half = time_dim // 2
    freqs = [math.exp(-math.log(10_000.0) * i / half) for i in range(half)]
    features = [math.sin(t * f) for f in freqs] + [math.cos(t * f) for f in freqs]
    return module.mlp(torch.tensor([features], dtype=torch.float32))[0]


def test_embedding_of_repeated_steps_matches_per_sample_formula():
    torch.manual_seed(0)
    module = TimeEmbedding(time_dim=16, out_dim=8)
    t = torch.tensor([5, 0, 127, 5, 5, 64, 0])
    out = module(t)
    assert out.shape == (7, 8)
    for row, step in enumerate(t.tolist()):
        torch.testing.assert_close(out[row], _reference(module, step, 16), rtol=1e-5, atol=1e-5)


def test_gradients_reach_the_mlp_through_shared_rows():
    torch.manual_seed(0)
    module = TimeEmbedding(time_dim=16, out_dim=8)
    t = torch.tensor([3, 3, 9])
    module(t).sum().backward()
    reference = TimeEmbedding(time_dim=16, out_dim=8)
    reference.load_state_dict(module.state_dict())
    sum(_reference(reference, s, 16) for s in t.tolist()).sum().backward()
    for got, want in zip(module.parameters(), reference.parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_an_ensemble_predicts_its_members_mean_and_each_member_on_its_own(kind):
    torch.manual_seed(0)
    config = DenoiserConfig(kind=kind, width=16, depth=1, time_dim=8)
    ensemble = build_denoiser(3, 4, 2, config, n_members=3)
    x, a, t = torch.randn(5, 3, 4), torch.randn(5, 3, 2), torch.tensor([0, 3, 3, 7, 1])
    each = member_predictions(ensemble, x, a, t)
    assert each.shape == (3, 5, 3, 4) and len(members(ensemble)) == 3
    for k, member in enumerate(ensemble.members):
        torch.testing.assert_close(each[k], member(x, a, t))
    torch.testing.assert_close(ensemble(x, a, t), each.mean(0))
    assert not torch.allclose(each[0], each[1])                      # initialised one by one
    single = build_denoiser(3, 4, 2, config)
    assert members(single) == [single]
    torch.testing.assert_close(member_predictions(single, x, a, t), single(x, a, t)[None])


@pytest.mark.parametrize("kind", KINDS)
def test_dropout_acts_while_training_and_the_eval_pass_is_the_network_without_it(kind):
    torch.manual_seed(0)
    config = DenoiserConfig(kind=kind, width=16, depth=2, time_dim=8, dropout=0.5)
    net = build_denoiser(3, 4, 2, config)
    plain = build_denoiser(3, 4, 2, DenoiserConfig(kind=kind, width=16, depth=2, time_dim=8))
    plain.load_state_dict(net.state_dict())                          # the same weights, no dropout
    x, a, t = torch.randn(5, 3, 4), torch.randn(5, 3, 2), torch.tensor([0, 3, 3, 7, 1])
    net.train()
    assert not torch.equal(net(x, a, t), net(x, a, t))
    net.eval()
    torch.testing.assert_close(net(x, a, t), plain.eval()(x, a, t))


@pytest.mark.parametrize("dropout", [-0.1, 1.0])
def test_a_dropout_outside_zero_to_one_is_refused(dropout):
    with pytest.raises(ValueError, match=f"dropout must lie in \\[0, 1\\), got {dropout}"):
        DenoiserConfig(dropout=dropout)
