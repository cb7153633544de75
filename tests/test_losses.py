"""Training loss: BCE, label smoothing, lsoft on noisy clips, per-source weights."""
import pytest
import torch
import torch.nn.functional as F

from raytag.config import ConfigError, LossConfig
from raytag.training.losses import build_loss


def _batch(b=6, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, generator=g) * 2
    targets = (torch.rand(b, c, generator=g) < 0.3).float()
    return logits, targets


def test_plain_bce_equals_torch():
    logits, y = _batch()
    noisy = torch.tensor([0, 1, 0, 1, 0, 0], dtype=torch.bool)
    # equal source weights -> plain mean BCE
    loss = build_loss(LossConfig(name="bce", noisy_loss="same", curated_weight=1.0, noisy_weight=1.0))
    assert loss(logits, y, noisy).item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, y).item(), rel=1e-6)


def test_lsoft_with_beta_one_is_bce():
    logits, y = _batch()
    loss = build_loss(LossConfig(name="bce", noisy_loss="lsoft", lsoft_beta=1.0, noisy_weight=1.0))
    noisy = torch.ones(6, dtype=torch.bool)
    assert loss(logits, y, noisy).item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, y).item(), rel=1e-6)


def test_lsoft_matches_formula_and_detaches_guess():
    logits, y = _batch()
    logits.requires_grad_(True)
    beta = 0.7
    loss = build_loss(LossConfig(name="bce", noisy_loss="lsoft", lsoft_beta=beta))
    out = loss(logits, y, torch.ones(6, dtype=torch.bool))
    soft = beta * y + (1 - beta) * torch.sigmoid(logits).detach()
    assert out.item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, soft).item(), rel=1e-6)
    out.backward()
    # gradient of BCE w.r.t. logits with a constant target: (sigmoid - target) / (B*C)
    expected = (torch.sigmoid(logits) - soft) / logits.numel()
    torch.testing.assert_close(logits.grad, expected.detach())


def test_lsoft_only_touches_noisy_clips():
    logits, y = _batch()
    loss = build_loss(LossConfig(name="bce", noisy_loss="lsoft", lsoft_beta=0.5, noisy_weight=1.0))
    curated = torch.zeros(6, dtype=torch.bool)
    assert loss(logits, y, curated).item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, y).item(), rel=1e-6)
    assert loss(logits, y, ~curated).item() != pytest.approx(loss(logits, y, curated).item(), rel=1e-3)


def test_label_smoothing():
    logits, y = _batch()
    s = 0.2
    loss = build_loss(LossConfig(label_smoothing=s, noisy_loss="same"))
    expected = F.binary_cross_entropy_with_logits(logits, y * (1 - s) + s / 2)
    assert loss(logits, y, torch.zeros(6, dtype=torch.bool)).item() == pytest.approx(expected.item(), rel=1e-6)


def test_source_weights_are_a_weighted_mean():
    logits, y = _batch()
    per_clip = F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(1)
    noisy = torch.tensor([1, 1, 0, 0, 0, 0], dtype=torch.bool)
    loss = build_loss(LossConfig(noisy_loss="same", curated_weight=1.0, noisy_weight=0.25))
    w = torch.where(noisy, 0.25, 1.0)
    assert loss(logits, y, noisy).item() == pytest.approx(((w * per_clip).sum() / w.sum()).item(), rel=1e-6)
    # noisy weight 0: only curated clips count
    zero = build_loss(LossConfig(noisy_loss="same", noisy_weight=0.0))
    assert zero(logits, y, noisy).item() == pytest.approx(per_clip[2:].mean().item(), rel=1e-6)
    # a batch where nothing weighs anything: zero loss that still backpropagates
    logits.requires_grad_(True)
    out = zero(logits, y, torch.ones(6, dtype=torch.bool))
    out.backward()
    assert out.item() == 0.0 and torch.all(logits.grad == 0)


def test_mixed_share_and_explicit_weights():
    logits, y = _batch()
    cfg = LossConfig(noisy_loss="lsoft", lsoft_beta=0.6, noisy_weight=0.5)
    loss = build_loss(cfg)
    q = torch.full((6,), 0.3)
    lc = F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(1)
    soft = 0.6 * y + 0.4 * torch.sigmoid(logits)
    ln = F.binary_cross_entropy_with_logits(logits, soft, reduction="none").mean(1)
    per_clip = 0.7 * lc + 0.3 * ln
    assert loss(logits, y, q).item() == pytest.approx(per_clip.mean().item(), rel=1e-6)
    w = torch.tensor([1.0, 0, 0, 0, 0, 3.0])
    got = loss(logits, y, q, weights=w).item()
    assert got == pytest.approx(((per_clip[0] + 3 * per_clip[5]) / 4).item(), rel=1e-6)


def test_lsoft_for_every_clip_when_named():
    logits, y = _batch()
    loss = build_loss(LossConfig(name="lsoft", noisy_loss="same", lsoft_beta=0.8, noisy_weight=1.0))
    soft = 0.8 * y + 0.2 * torch.sigmoid(logits)
    expected = F.binary_cross_entropy_with_logits(logits, soft).item()
    for noisy in (torch.zeros(6, dtype=torch.bool), torch.ones(6, dtype=torch.bool)):
        assert loss(logits, y, noisy).item() == pytest.approx(expected, rel=1e-6)


def test_soft_targets_accepted():
    logits, _ = _batch()
    y = torch.rand(6, 5, generator=torch.Generator().manual_seed(1))
    loss = build_loss(LossConfig(noisy_loss="same"))
    expected = F.binary_cross_entropy_with_logits(logits, y)
    assert loss(logits, y, torch.zeros(6, dtype=torch.bool)).item() == pytest.approx(expected.item(), rel=1e-6)


def test_bad_shapes_and_weights():
    logits, y = _batch()
    loss = build_loss(LossConfig())
    with pytest.raises(ValueError, match="shape"):
        loss(logits, y[:, :3], torch.zeros(6, dtype=torch.bool))
    with pytest.raises(ValueError, match="entries"):
        loss(logits, y, torch.zeros(5, dtype=torch.bool))
    with pytest.raises(ConfigError, match="noisy_weight"):
        build_loss(LossConfig(noisy_weight=-1.0))


def test_small_loss_selection_drops_the_noisy_clips_with_the_largest_loss():
    from raytag.training.losses import small_loss_keep, small_loss_mask

    per_clip = torch.tensor([5.0, 0.1, 3.0, 0.2, 9.0, 0.3])
    noisy = torch.tensor([True, True, True, True, False, False])
    mask = small_loss_mask(per_clip, noisy, keep=0.5)
    assert mask.tolist() == [False, True, False, True, True, True]  # curated clips always count
    loss_fn = build_loss(LossConfig(noisy_loss="same", noisy_weight=1.0))
    logits = torch.tensor([[4.0], [-4.0], [4.0], [-4.0]])
    targets = torch.tensor([[0.0], [0.0], [0.0], [0.0]])  # clips 0 and 2: confidently "wrong" labels
    kept = loss_fn(logits, targets, torch.ones(4, dtype=torch.bool), keep=0.5)
    assert kept < loss_fn(logits, targets, torch.ones(4, dtype=torch.bool)) / 10
    cfg = LossConfig(noisy_keep=0.6, noisy_keep_ramp=4)
    assert [round(small_loss_keep(cfg, e), 2) for e in (0, 2, 4, 9)] == [1.0, 0.8, 0.6, 0.6]
    assert small_loss_keep(LossConfig(), 3) == 1.0
