"""Count penalty (Count-MORL): SimHash counts over the dataset, larger penalty for rarer (s, a)."""
import pytest
import torch

from pyscorepen.data import TransitionDataset
from pyscorepen.penalties import PENALTIES, CountPenalty, SimHashCounter, is_target_penalty


def make_dataset(x: torch.Tensor) -> TransitionDataset:
    n = x.shape[0]
    return TransitionDataset(x[:, :3], x[:, 3:], torch.zeros(n), x[:, :3], torch.zeros(n))


def test_counts_match_the_dataset_and_unseen_cells_are_zero():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5000, 5, generator=gen)
    counter = SimHashCounter(x, bits=12, generator=torch.Generator().manual_seed(1))
    assert int(counter.counts.sum()) == 5000 and counter.keys.dtype == torch.int64
    assert torch.all(counter.keys[1:] > counter.keys[:-1])                   # sorted, unique
    # every dataset row is counted in its own cell: its count is the number of rows sharing its key
    keys = counter.hash(x)
    n = counter.count(x)
    brute = (keys[:200, None] == keys[None, :]).sum(1)                        # [200]
    assert torch.equal(n[:200], brute)
    # beyond the data (8 std from its mean): cells with few or no dataset pairs
    far = 8 * torch.nn.functional.normalize(torch.randn(500, 5, generator=gen), dim=1)
    near = torch.randn(500, 5, generator=gen)
    assert counter.count(far).float().median() * 3 < counter.count(near).float().median()


def test_penalty_is_larger_for_rarer_pairs():
    gen = torch.Generator().manual_seed(0)
    common, rare = torch.zeros(5), torch.full((5,), 2.0)
    x = torch.cat([common + 0.01 * torch.randn(2000, 5, generator=gen),     # a dense cluster
                   rare + 0.01 * torch.randn(20, 5, generator=gen),         # a sparse one
                   torch.randn(3000, 5, generator=gen)])                   # background
    data = make_dataset(x)
    plugin = PENALTIES["count"](1.0, dataset=data, config=None, dynamics=None)
    assert isinstance(plugin, CountPenalty) and not is_target_penalty(plugin) and not plugin.requires_score

    def penalty(points):
        return plugin(points[:, :3], points[:, 3:], None)

    p_common = penalty(common[None] + 0.005 * torch.randn(50, 5, generator=gen))
    p_rare = penalty(rare[None] + 0.005 * torch.randn(50, 5, generator=gen))
    p_unseen = penalty(torch.full((50, 5), -30.0) + torch.randn(50, 5, generator=gen))
    assert p_common.median() < p_rare.median() < p_unseen.median()
    assert p_unseen.median() == 1.0                                        # 1/sqrt(0 + 1)
    assert p_common.median() <= 1 / 2000 ** 0.5 * 1.5                         # ~ 1/sqrt(2000): shares the cluster's cell
    # coef scales it; values are in (0, 1]
    assert torch.all((p_common > 0) & (p_common <= 1))
    assert CountPenalty(3.0, plugin.counter).coef == 3.0


@pytest.mark.parametrize("bits", [16, 24])
def test_hash_collisions_of_far_apart_points_are_rare(bits):
    """Distinct points far apart (in normalized units) rarely share a code at k bits; more bits, fewer."""
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(4000, 6, generator=gen)
    counter = SimHashCounter(data, bits=bits, generator=torch.Generator().manual_seed(2))
    points = 2.0 * torch.randn(400, 6, generator=gen)                       # [P, D] in the data's range
    dist = torch.cdist(points, points)
    far = dist > 2.0                                                        # pairs at > 2 std apart
    keys = counter.hash(points)
    same = keys[:, None] == keys[None, :]
    rate = (same & far).sum() / far.sum()
    assert rate < (0.005 if bits == 16 else 0.001), float(rate)
    # the offsets make the cells bounded: x and 3x (same direction) get different codes
    x = torch.randn(500, 6, generator=gen)
    assert (counter.hash(x) != counter.hash(3 * x)).float().mean() > 0.75


def test_bits_outside_int64_range_are_a_clear_error():
    with pytest.raises(ValueError, match="bits"):
        SimHashCounter(torch.randn(10, 2), bits=63)
