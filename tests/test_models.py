"""The model zoo: every registered model honours the forward/embed contract, trains, and
fails clearly on bad settings. Small widths keep the whole file to a few seconds."""
from __future__ import annotations

import math

import pytest
import torch

from raytag.config import ModelConfig, recorded_model_settings, saved_model_settings
from raytag.errors import RaytagError
from raytag.models import MODELS, Tagger, build_model, register
from raytag.models.common import block_widths
from raytag.models.resnet import BasicBlock
from raytag.training.checkpoint import load_train_state, save_train_state

RAW = {"rawwave_cnn"}
ONE_D = {"cnn_1d", "cnn_1d_dropout", "cnn_1d_dense_dropout"}
N_BINS = 32

# Small but structurally complete versions of each model.
SMALL_PARAMS = {
    "crnn": {"lstm_hidden": 16},
    "vgg_small": {"dense_units": 32},
    "vgg_large": {"dense_units": 32},
    "cnn_1d_dense_dropout": {"dense_units": 16},
}


def small_cfg(name: str, **kw) -> ModelConfig:
    args = dict(name=name, width=8, depth=3, dropout=0.3, params=dict(SMALL_PARAMS.get(name, {})))
    args.update(kw)
    return ModelConfig(**args)


def bins_for(name: str) -> int:
    return 1 if name in RAW else N_BINS


def make_input(name: str, batch: int, channels: int, length: int, generator=None) -> torch.Tensor:
    """Spectrogram [B, C, F, T], or a waveform [B, C, 1, N] (length x 16 samples) for raw models."""
    if name in RAW:
        return torch.randn(batch, channels, 1, length * 16, generator=generator)
    return torch.randn(batch, channels, N_BINS, length, generator=generator)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_registry_lists_every_family():
    expected = {
        "cnn2d", "crnn", "resnet18", "resnet34", "vgg_small", "vgg_large",
        "cnn_1d", "cnn_1d_dropout", "cnn_1d_dense_dropout", "rawwave_cnn",
    }
    assert set(MODELS) == expected
    assert len(MODELS) == len(set(MODELS))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", MODELS)
def test_shapes_for_classes_and_crop_lengths(name, channels):
    torch.manual_seed(0)
    for n_classes in (1, 7, 80):
        model = build_model(small_cfg(name), n_classes, channels, bins_for(name)).eval()
        assert isinstance(model, Tagger)
        assert model.embed_dim > 0
        with torch.no_grad():
            for length in (64, 301):
                x = make_input(name, 2, channels, length)
                logits = model(x)
                assert logits.shape == (2, n_classes)
                assert torch.isfinite(logits).all()
                emb = model.embed(x)
                assert emb.shape == (2, model.embed_dim)
                assert torch.isfinite(emb).all()


@pytest.mark.parametrize("name", [n for n in MODELS if n not in RAW | ONE_D])
def test_2d_models_take_other_bin_counts_and_very_short_crops(name):
    model = build_model(small_cfg(name), 5, 1, 64).eval()
    with torch.no_grad():
        for bins, frames in ((64, 200), (8, 50), (128, 17), (40, 1), (3, 3)):
            out = model(torch.randn(2, 1, bins, frames))
            assert out.shape == (2, 5) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(ONE_D | RAW))
def test_fixed_bin_models_reject_other_bin_counts(name):
    model = build_model(small_cfg(name), 5, 1, bins_for(name))
    with pytest.raises(ValueError, match="bins"):
        model(torch.randn(2, 1, bins_for(name) + 4, 100))


@pytest.mark.parametrize("name", MODELS)
def test_wrong_channel_count_or_rank_is_a_clear_error(name):
    model = build_model(small_cfg(name), 5, 1, bins_for(name))
    with pytest.raises(ValueError, match="input channel"):
        model(make_input(name, 2, 3, 64))
    with pytest.raises(ValueError, match="batch, channels, bins, frames"):
        model(torch.randn(2, 64, 100))


@pytest.mark.parametrize("name", MODELS)
def test_eval_is_deterministic_and_train_mode_uses_dropout(name):
    torch.manual_seed(0)
    model = build_model(small_cfg(name, dropout=0.5), 6, 1, bins_for(name))
    x = make_input(name, 4, 1, 96)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        assert torch.equal(model.embed(x), model.embed(x))
    # Sanity check that the comparison above could fail: train mode is stochastic
    # wherever the model has dropout (cnn_1d deliberately has none).
    if name != "cnn_1d":
        model.train()
        with torch.no_grad():
            assert not torch.equal(model(x), model(x))


def test_cnn_1d_variants_differ_as_the_seed_describes():
    def layers(name):
        model = build_model(small_cfg(name), 5, 1, N_BINS)
        return [type(m).__name__ for m in model.modules() if type(m).__name__ in ("Dropout", "Linear")]

    assert layers("cnn_1d") == ["Linear"]
    assert layers("cnn_1d_dropout") == ["Dropout", "Linear"]
    assert layers("cnn_1d_dense_dropout") == ["Linear", "Dropout", "Linear"]
    assert build_model(small_cfg("cnn_1d_dense_dropout"), 5, 1, N_BINS).embed_dim == 16


def _toy_problem(name: str, n_classes: int = 3, per_class: int = 8):
    """Class k = a loud band at frequency k (spectrograms) or a tone at frequency k (raw)."""
    g = torch.Generator().manual_seed(1)
    n = n_classes * per_class
    y = torch.zeros(n, n_classes)
    x = make_input(name, n, 1, 48, generator=g) * 0.5
    for i in range(n):
        k = i % n_classes
        y[i, k] = 1.0
        if name in RAW:
            t = torch.arange(x.shape[-1], dtype=torch.float32)
            x[i, 0, 0] += 2.0 * torch.sin(2 * math.pi * t * (0.02 + 0.06 * k))
        else:
            band = slice(k * N_BINS // n_classes, (k + 1) * N_BINS // n_classes)
            x[i, 0, band] += 2.0
    return x, y


@pytest.mark.parametrize("name", MODELS)
def test_loss_goes_down_on_a_tiny_problem(name):
    torch.manual_seed(0)
    x, y = _toy_problem(name)
    model = build_model(small_cfg(name, dropout=0.1), y.shape[1], 1, bins_for(name))
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.eval()
    with torch.no_grad():
        before = loss_fn(model(x), y).item()
    model.train()
    train_losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        train_losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        after = loss_fn(model(x), y).item()
    assert math.isfinite(after)
    assert train_losses[-1] < 0.5 * train_losses[0], f"{name}: train loss {train_losses}"
    # In eval mode too (BatchNorm running statistics included), not only in train mode.
    assert after < 0.7 * before, f"{name}: eval loss {before:.3f} -> {after:.3f}"


@pytest.mark.parametrize("name", MODELS)
def test_train_mode_accepts_a_batch_of_one(name):
    # The last batch of an epoch can hold a single clip.
    model = build_model(small_cfg(name), 4, 1, bins_for(name)).train()
    out = model(make_input(name, 1, 1, 256))
    out.sum().backward()
    assert out.shape == (1, 4)


@pytest.mark.parametrize("name", MODELS)
def test_weights_load_into_a_fresh_model(name):
    cfg = small_cfg(name)
    a = build_model(cfg, 5, 1, bins_for(name)).eval()
    b = build_model(cfg, 5, 1, bins_for(name)).eval()
    b.load_state_dict(a.state_dict())
    x = make_input(name, 2, 1, 64)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("name", MODELS)
def test_2d_conv_nets_keep_weights_channels_last_with_the_same_outputs(name, tmp_path):
    """build_model's channels-last layout is faster on CPU and GPU; it must change no number
    beyond float rounding, and raytag's checkpoint writer (safetensors) must still store it."""
    torch.manual_seed(0)
    fast = build_model(small_cfg(name), 5, 1, bins_for(name)).eval()
    plain = build_model(small_cfg(name), 5, 1, bins_for(name)).eval().to(memory_format=torch.contiguous_format)
    plain.load_state_dict(fast.state_dict())
    convs = [m.weight for m in fast.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert bool(convs) == (name not in ONE_D | RAW)  # the 1-D nets have no 2-D convolution to switch
    x = make_input(name, 2, 1, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-5)
    save_train_state(tmp_path, {"model": fast.state_dict()})  # safetensors refuses non-contiguous tensors
    fresh = build_model(small_cfg(name), 5, 1, bins_for(name)).eval()
    fresh.load_state_dict(load_train_state(tmp_path)["model"])
    with torch.no_grad():
        assert torch.equal(fresh(x), fast(x))


def test_resnets_match_the_reference_layout():
    # torchvision's resnet18/34 at 3 channels, 1000 classes: 11,689,512 / 21,797,672 params.
    for name, n_params, n_blocks in (("resnet18", 11_689_512, 8), ("resnet34", 21_797_672, 16)):
        model = build_model(ModelConfig(name=name, width=64, depth=4), 1000, 3, 128)
        assert sum(p.numel() for p in model.parameters()) == n_params
        assert sum(isinstance(m, BasicBlock) for m in model.modules()) == n_blocks
        assert model.embed_dim == 512


def test_width_depth_and_params_change_the_model():
    base = build_model(small_cfg("cnn2d"), 5, 1, N_BINS)
    wider = build_model(small_cfg("cnn2d", width=16), 5, 1, N_BINS)
    deeper = build_model(small_cfg("cnn2d", depth=4), 5, 1, N_BINS)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(wider) > count(base) and count(deeper) > count(base)
    assert build_model(small_cfg("crnn", params={"lstm_hidden": 24, "skip": 0}), 5, 1, N_BINS).embed_dim == 48
    assert build_model(small_cfg("vgg_small", params={}), 5, 1, N_BINS).embed_dim == 1024
    assert build_model(small_cfg("vgg_large", params={}), 5, 1, N_BINS).embed_dim == 4096


def test_crnn_skip_adds_the_conv_path_to_the_embedding():
    cfg = small_cfg("crnn", params={"lstm_hidden": 24})  # skip is on by default
    model = build_model(cfg, 5, 1, N_BINS).eval()
    conv_width = block_widths(cfg.width, cfg.depth)[-1]
    assert model.embed_dim == 48 + conv_width
    x = torch.randn(2, 1, N_BINS, 40)
    with torch.no_grad():
        embedding = model.pooled(x)
        conv = model.backbone(x).mean(dim=2)
    assert embedding.shape == (2, 48 + conv_width)
    # the first part is the conv features' own mean + max over time, not the LSTM's
    torch.testing.assert_close(embedding[:, :conv_width], conv.mean(-1) + conv.amax(-1))


def test_resnet_without_the_stem_pool_keeps_twice_the_resolution_and_the_same_weights():
    pooled = build_model(small_cfg("resnet18", depth=2), 5, 1, N_BINS).eval()
    unpooled = build_model(small_cfg("resnet18", depth=2, params={"stem_pool": 0}), 5, 1, N_BINS).eval()
    unpooled.load_state_dict(pooled.state_dict())  # pooling has no weights: the same parameters
    x = torch.randn(1, 1, N_BINS, 64)
    with torch.no_grad():
        a, b = pooled.stages(pooled.stem(x)), unpooled.stages(unpooled.stem(x))
    assert b.shape[-2:] == (a.shape[-2] * 2, a.shape[-1] * 2)


def test_resnet_zero_init_residual_starts_every_block_as_the_identity():
    from raytag.models.resnet import BasicBlock

    model = build_model(small_cfg("resnet18", depth=2, params={"zero_init_residual": 1}), 5, 1, N_BINS)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert blocks and all(float(b.bn2.weight.detach().abs().sum()) == 0.0 for b in blocks)
    plain = build_model(small_cfg("resnet18", depth=2), 5, 1, N_BINS)
    assert all(float(m.bn2.weight.detach().abs().sum()) > 0 for m in plain.modules() if isinstance(m, BasicBlock))


def test_a_saved_crnn_from_before_skip_was_the_default_still_loads_its_weights():
    """A card written before crnn's skip default changed lacks the key and was built without
    it; one written now records it, so it keeps building the same network."""
    old_card = {"name": "crnn", "width": 4, "depth": 2, "dropout": 0.0, "params": {"lstm_hidden": 8}}
    old_model = build_model(ModelConfig(**{**old_card, "params": {"lstm_hidden": 8, "skip": 0}}), 5, 1, N_BINS)
    rebuilt = build_model(ModelConfig(**saved_model_settings(old_card)), 5, 1, N_BINS)
    rebuilt.load_state_dict(old_model.state_dict())  # same shapes: the old network
    written = recorded_model_settings({**old_card, "params": {"lstm_hidden": 8}})
    assert written["params"] == {"lstm_hidden": 8, "skip": 1}
    assert saved_model_settings(written) == written  # read back as written
    assert saved_model_settings({**old_card, "params": {"skip": 1}})["params"] == {"skip": 1}
    assert recorded_model_settings({"name": "cnn2d", "params": {}}) == {"name": "cnn2d", "params": {}}


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(RaytagError) as err:
        build_model(ModelConfig(name="resnet-18"), 5, 1, 64)
    message = str(err.value)
    assert "resnet-18" in message
    for name in MODELS:
        assert name in message


@pytest.mark.parametrize(
    "cfg, n_bins, match",
    [
        (ModelConfig(name="cnn2d", params={"hiden": 64}), 64, "hiden.*valid keys: hidden"),
        (ModelConfig(name="crnn", params={"lstm_hidden": "big"}), 64, "lstm_hidden: expected int"),
        (ModelConfig(name="crnn", params={"skip": 2}), 64, "skip: 0 or 1"),
        (ModelConfig(name="vgg_small", params={"dense_units": 0}), 64, "dense_units: must be > 0"),
        (ModelConfig(name="resnet18", params={"hidden": 3}), 64, "valid keys: stem_pool, zero_init_residual"),
        (ModelConfig(name="resnet18", params={"zero_init_residual": 2}), 64, "zero_init_residual: 0 or 1"),
        (ModelConfig(name="resnet18", params={"stem_pool": 2}), 64, "stem_pool: 0 or 1"),
        (ModelConfig(name="resnet34", depth=5), 64, "model.depth"),
        (ModelConfig(name="cnn_1d", params={"kernel_size": 4}), 64, "must be odd"),
        (ModelConfig(name="cnn_1d_dropout", params={"dense_units": 64}), 64, "dense_units.*valid keys: kernel_size"),
        (ModelConfig(name="cnn2d", width=0), 64, "model.width"),
        (ModelConfig(name="cnn2d", dropout=1.0), 64, "model.dropout"),
        (ModelConfig(name="rawwave_cnn"), 64, "features.kind: raw"),
    ],
)
def test_bad_settings_are_clear_errors(cfg, n_bins, match):
    with pytest.raises(RaytagError, match=match):
        build_model(cfg, 5, 1, n_bins)


def test_bad_class_count_is_a_clear_error():
    with pytest.raises(RaytagError, match="n_classes"):
        build_model(ModelConfig(), 0, 1, 64)


def test_a_name_cannot_be_registered_twice():
    with pytest.raises(ValueError, match="twice"):
        register("cnn2d")(lambda cfg, n_classes, in_channels, n_bins: None)
