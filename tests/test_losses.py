"""QuRe's reward loss and the in-batch InfoNCE baseline."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qure.losses import info_nce, reward_loss


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def released_kl_form(s_pos: torch.Tensor, s_neg: torch.Tensor, temp: float) -> torch.Tensor:
    """train_qure.py: kl_div(log_softmax([s+, s-] / τ), [1, 0], reduction='batchmean')."""
    scores = torch.stack([s_pos, s_neg], dim=1) / temp
    target = torch.zeros_like(scores)
    target[:, 0] = 1.0
    return F.kl_div(F.log_softmax(scores, dim=1), target, reduction="batchmean")


def test_reward_loss_equals_released_kl_form():
    g = torch.Generator().manual_seed(0)
    s_pos, s_neg = torch.rand(32, generator=g) * 2 - 1, torch.rand(32, generator=g) * 2 - 1
    for temp in (0.07, 0.5, 1.0):
        torch.testing.assert_close(reward_loss(s_pos, s_neg, temp),
                                   released_kl_form(s_pos, s_neg, temp))
    assert reward_loss(torch.zeros(4), torch.zeros(4), 0.07).item() == pytest.approx(
        torch.log(torch.tensor(2.0)).item())


def test_reward_loss_is_stable_and_trains_temperature():
    temp = torch.nn.Parameter(torch.tensor(0.001))
    s_pos = torch.tensor([-1.0, 1.0], requires_grad=True)
    loss = reward_loss(s_pos, torch.tensor([1.0, -1.0]), temp)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(1000.0, rel=1e-5)
    loss.backward()
    assert torch.isfinite(temp.grad) and temp.grad != 0
    assert torch.isfinite(s_pos.grad).all()
    with pytest.raises(ValueError):
        reward_loss(torch.zeros(3), torch.zeros(4), 0.07)


def _embeddings(b: int = 6, t: int = 3, d: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    query = F.normalize(torch.randn(b, d, generator=g), dim=-1)
    targets = F.normalize(torch.randn(b, t, d, generator=g), dim=-1)
    return query, targets, g


def test_info_nce_matches_manual_cross_entropy():
    query, targets, _ = _embeddings()
    logits = torch.einsum("ik,jlk->ijl", query, targets).max(-1).values / 0.07
    expected = F.cross_entropy(logits, torch.arange(6))
    torch.testing.assert_close(info_nce(query, targets, 0.07), expected)
    sym = 0.5 * (expected + F.cross_entropy(logits.t(), torch.arange(6)))
    torch.testing.assert_close(info_nce(query, targets, 0.07, symmetric=True), sym)


def test_info_nce_extra_negatives_are_per_query_columns():
    query, targets, g = _embeddings()
    extra = F.normalize(torch.randn(6, 2, 3, 8, generator=g), dim=-1)
    logits = torch.einsum("ik,jlk->ijl", query, targets).max(-1).values
    mined = torch.stack([torch.einsum("k,mlk->ml", query[i], extra[i]).max(-1).values
                         for i in range(6)])
    expected = F.cross_entropy(torch.cat([logits, mined], 1) / 0.1, torch.arange(6))
    torch.testing.assert_close(info_nce(query, targets, 0.1, extra_negatives=extra), expected)


def test_info_nce_masks_duplicate_targets():
    query, targets, _ = _embeddings()
    targets = targets.clone()
    targets[3] = targets[1]  # triplets 1 and 3 share their target image
    names = ["a", "b", "c", "b", "e", "f"]
    logits = torch.einsum("ik,jlk->ijl", query, targets).max(-1).values / 0.07
    rows = []
    for i in range(6):
        keep = [j for j in range(6) if j == i or names[j] != names[i]]
        rows.append(F.cross_entropy(logits[i, keep][None], torch.tensor([keep.index(i)])))
    torch.testing.assert_close(info_nce(query, targets, 0.07, target_names=names),
                               torch.stack(rows).mean())
    temp = torch.nn.Parameter(torch.tensor(0.07))
    loss = info_nce(query, targets, temp, target_names=names, symmetric=True)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(temp.grad)
