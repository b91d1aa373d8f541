"""Denoising score model (ScorePen Eq. 9-10): the loss decreases, and on a uniform box the
learned score is ~0 deep inside and points inward, steeply, at the boundary."""
import torch

from pyscorepen.data import TransitionDataset
from pyscorepen.models.score import ScoreConfig, ScoreModel


def box_dataset(n=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    obs = torch.rand(n, 2, generator=g) - 0.5                     # uniform on [-0.5, 0.5]^2
    actions = torch.zeros(n, 0)
    z = torch.zeros(n)
    return TransitionDataset(obs, actions, z, obs, z)


def train(sigmas=(0.1,), steps=1500):
    torch.manual_seed(0)
    model = ScoreModel(2, ScoreConfig(sigmas=sigmas, hidden_dims=(64, 64), train_steps=steps, batch_size=256))
    info = model.fit(box_dataset(), progress=False)
    return model, info


def test_dsm_loss_decreases_on_toy_distribution():
    """Eq. 10's loss is E||h - grad log p_sigma||^2 / 2 plus a constant E||z||^2 / (2 sigma^2)
    (= 100 here); training must remove most of the reducible part above that constant."""
    data = box_dataset()
    torch.manual_seed(0)
    untrained = ScoreModel(2, ScoreConfig(hidden_dims=(64, 64)))
    model, info = train()

    def mean_loss(m):
        torch.manual_seed(1)
        x = m.normalize(data.obs, data.actions)
        with torch.no_grad():
            return torch.stack([m.dsm_loss(x) for _ in range(10)]).mean().item()

    untrained.input_mean.copy_(model.input_mean); untrained.input_std.copy_(model.input_std)
    before, after = mean_loss(untrained), mean_loss(model)
    constant = 0.5 * 2 / 0.1 ** 2
    assert after < before
    assert after - constant < 0.5 * (before - constant), (before, after)
    assert info["score/dsm_loss_last"] < info["score/dsm_loss_first"]


def check_box_field(model):
    inside = torch.tensor([[0.0, 0.0], [0.1, -0.1], [-0.15, 0.05]])
    edges = torch.tensor([[0.55, 0.0], [-0.55, 0.0], [0.0, 0.55], [0.0, -0.55]])
    none = torch.zeros(3, 0)
    p_in = model.penalty(inside, none)
    p_edge = model.penalty(edges, torch.zeros(4, 0))
    assert p_in.max() < 0.05 * p_edge.min(), (p_in, p_edge)
    with torch.no_grad():
        h = model(model.normalize(edges, torch.zeros(4, 0)))       # [4, 2]
    inward = -edges / edges.norm(dim=-1, keepdim=True)
    cos = torch.nn.functional.cosine_similarity(h, inward, dim=-1)
    assert (cos > 0.9).all(), cos
    # the penalty is flat inside and grows outward: monotone along a ray leaving the box
    ray = torch.tensor([[x, 0.0] for x in (0.0, 0.2, 0.45, 0.5, 0.6, 0.8)])
    p_ray = model.penalty(ray, torch.zeros(6, 0))
    assert all(b > a for a, b in zip(p_ray[2:].tolist(), p_ray[3:].tolist())), p_ray


def test_score_points_inward_at_boundary_and_is_zero_inside():
    model, _ = train()
    check_box_field(model)


def test_noise_conditioned_variant_and_folded_penalty_net():
    model, _ = train(sigmas=(0.1, 0.3, 0.6), steps=2000)
    check_box_field(model)
    x = torch.randn(9, 2)
    with torch.no_grad():
        assert torch.allclose(model.penalty_net()(x), model(x), atol=1e-5)
    assert not any(p.requires_grad for p in model.parameters())   # frozen after training


def test_penalty_params_for_another_normalizer():
    """The rollout op normalizes (s, a) with the dynamics' statistics (training split only); the
    penalty parameters for those statistics give ||h||^2 at the same point as the model's own
    normalization, for the plain and the noise-conditioned net."""
    from pyscorepen.ops import score_penalty
    for sigmas in ((0.1,), (0.1, 0.3)):
        torch.manual_seed(1)
        model = ScoreModel(3, ScoreConfig(sigmas=sigmas, hidden_dims=(16, 16), train_steps=1, batch_size=8))
        with torch.no_grad():
            model.input_mean.copy_(torch.tensor([0.3, -1.0, 2.0]))
            model.input_std.copy_(torch.tensor([1.5, 0.2, 4.0]))
        other_mean, other_std = torch.tensor([0.25, -0.9, 2.5]), torch.tensor([1.4, 0.25, 3.0])
        raw = torch.randn(50, 3) * 2
        own = score_penalty((raw - model.input_mean) / model.input_std, *model.penalty_params())
        folded = score_penalty((raw - other_mean) / other_std, *model.penalty_params(other_mean, other_std))
        torch.testing.assert_close(folded, own, rtol=1e-4, atol=1e-5)
        unfolded = score_penalty((raw - other_mean) / other_std, *model.penalty_params())
        assert not torch.allclose(unfolded, own, rtol=1e-2)   # the mismatch the fold removes
