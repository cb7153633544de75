"""Segment-averaged inference: the segment grid, looping of short clips, mean/max
reduction, TTA and normalisation, checked against a model whose output is known."""
import numpy as np
import pytest
import torch

from raytag.training.dataset import tile_to
from raytag.training.inference import cut_segment, predict_segments, segment_starts


class MeanModel(torch.nn.Module):
    """logit of class 0 = mean of the input; class 1 = minus that."""

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([m, -m], dim=1)

    def embed(self, x):
        return x.mean(dim=(2, 3))


def test_segment_grid_covers_the_clip_and_ends_at_its_end():
    assert segment_starts(50, 100) == [0]
    assert segment_starts(100, 100) == [0]
    assert segment_starts(250, 100, overlap=0.5) == [0, 50, 100, 150]
    assert segment_starts(260, 100, overlap=0.5)[-1] == 160
    assert segment_starts(300, 100, overlap=0.0) == [0, 100, 200]


def test_short_clips_are_looped_never_zero_padded():
    clip = np.arange(3, dtype=np.float32).reshape(1, 1, 3) - 50.0  # dB-like values, no zeros
    seg = cut_segment(clip, 0, 8)
    assert seg.shape == (1, 1, 8) and np.all(seg != 0)
    assert list(seg[0, 0]) == [-50, -49, -48, -50, -49, -48, -50, -49]
    assert tile_to(clip, 2).shape[-1] == 2


@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_segment_predictions_are_reduced_over_the_clip(reduce):
    # two segments of constant value 1 and 3: the clip's class-0 logit is mean/max over segments
    clip = np.concatenate([np.full((1, 2, 10), 1.0), np.full((1, 2, 10), 3.0)], axis=-1).astype(np.float32)
    probs = predict_segments(MeanModel(), [clip], segment_frames=10, overlap=0.0, reduce=reduce)
    seg_probs = 1 / (1 + np.exp(-np.array([1.0, 3.0])))
    want = seg_probs.mean() if reduce == "mean" else seg_probs.max()
    assert probs.shape == (1, 2)
    assert probs[0, 0] == pytest.approx(want, rel=1e-5)


def test_tta_normalisation_and_batching_do_not_change_a_constant_clip():
    clips = [np.full((1, 4, n), 5.0, np.float32) for n in (7, 30, 61)]
    mean, std = np.full((1, 4), 5.0), np.full((1, 4), 2.0)
    a = predict_segments(MeanModel(), clips, segment_frames=10, mean=mean, std=std, batch_size=2)
    b = predict_segments(MeanModel(), clips, segment_frames=10, mean=mean, std=std, tta=2, batch_size=64)
    np.testing.assert_allclose(a, 0.5, atol=1e-6)  # normalised to 0 -> sigmoid 0.5
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("reduce,tta", [("mean", 0), ("max", 2)])
def test_segments_cut_once_give_predict_segments_scores(reduce, tta):
    """The tagging engine cuts each clip's segments once for every fold model
    (clip_segments + reduce_segments); that must score exactly as predict_segments."""
    from raytag.training.inference import clip_segments, normaliser, reduce_segments

    rng = np.random.default_rng(0)
    clips = [rng.normal(size=(1, 4, n)).astype(np.float32) for n in (3, 40, 97, 10)]
    mean, std = rng.normal(size=(1, 4)), rng.uniform(0.5, 2, size=(1, 4))
    expected = predict_segments(MeanModel(), clips, 16, overlap=0.5, reduce=reduce, tta=tta,
                                batch_size=5, mean=mean, std=std)
    segs, owners = clip_segments(clips, 16, overlap=0.5, tta=tta)
    assert segs.shape[1:] == (1, 4, 16) and sorted(set(owners)) == [0, 1, 2, 3]
    probs = torch.sigmoid(MeanModel()(normaliser(mean, std)(torch.from_numpy(segs)))).numpy()
    assert np.allclose(reduce_segments(probs, owners, len(clips), reduce), expected, atol=1e-6)


@pytest.mark.parametrize("name", ["cnn2d", "crnn", "resnet18"])
def test_one_pass_gives_the_probabilities_and_embeddings_of_two(name):
    """The noisy-label filter scores and embeds the noisy clips in one pass
    (predict_and_embed_segments): the same numbers as predict_segments and embed_segments."""
    from raytag.config import ModelConfig
    from raytag.models import build_model
    from raytag.training.inference import embed_segments, predict_and_embed_segments

    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, width=8), 5, 1, 16)
    rng = np.random.default_rng(0)
    clips = [rng.normal(size=(1, 16, n)).astype(np.float32) for n in (30, 64, 97, 12)]
    mean, std = rng.normal(size=(1, 16)), rng.uniform(0.5, 2.0, size=(1, 16))
    kwargs = dict(segment_frames=32, overlap=0.5, batch_size=3, mean=mean, std=std)
    both = predict_and_embed_segments(model, clips, **kwargs)
    probs = predict_segments(model, clips, reduce="mean", **kwargs)
    emb = embed_segments(model, clips, **kwargs)
    assert both.shape == (4, 5 + emb.shape[1])
    np.testing.assert_allclose(both[:, :5], probs, atol=1e-6)
    np.testing.assert_allclose(both[:, 5:], emb, atol=1e-6)


def test_tta_passes_cut_only_segments_training_could_have_made():
    """A short clip is looped whole in every pass (never one frame repeated); a clip a little
    longer than a segment gets windows inside it (never a loop seam)."""
    from raytag.training.inference import clip_segments

    short = np.arange(30, dtype=np.float32)[None, None, :]  # frame value = frame index
    segs, _ = clip_segments([short], 128, overlap=0.5, tta=2)
    assert len(segs) == 3
    for seg in segs:
        assert sorted(set(seg[0, 0].tolist())) == list(range(30))  # every frame of the clip, looped
    longer = np.arange(140, dtype=np.float32)[None, None, :]
    segs, _ = clip_segments([longer], 128, overlap=0.5, tta=1)
    for seg in segs:
        assert np.all(np.diff(seg[0, 0]) == 1)  # contiguous frames: no wrap from 139 back to the start


@pytest.mark.parametrize("overlap,hop", [(0.0, 128), (0.5, 64), (0.75, 32)])
def test_tta_passes_shift_segments_by_a_fraction_of_the_hop(overlap, hop):
    """With tta=3 the passes start a quarter of the hop between segments apart, at any overlap:
    together their segments start every hop/4 frames (none repeats another pass's start)."""
    from raytag.training.inference import clip_segments

    clip = np.arange(1000, dtype=np.float32)[None, None, :]  # frame value = frame index
    segs, _ = clip_segments([clip], 128, overlap=overlap, tta=3)
    starts = segs[:, 0, 0, 0].astype(int)
    inner = np.unique(starts[starts < 1000 - 128])  # the last segment of each pass ends at the clip's end
    assert inner[0] == 0 and np.all(np.diff(inner) == hop // 4)
    assert len(starts) == len(np.unique(starts))  # that last segment once, not once per pass


@pytest.mark.parametrize("tta", [1, 2, 3])
def test_tta_scores_each_segment_once_and_a_clip_of_one_segment_is_never_looped(tta):
    """Each shifted pass clamps its last segment to the clip's end, where pass 0 has one: it is
    kept once (not tta+1 times, which weighed the end more in the mean). A clip exactly one
    segment long is that one window, as training's crop of it (no loop seam)."""
    from raytag.training.inference import clip_segments

    for n in range(10, 40):
        clip = np.arange(n, dtype=np.float32)[None, None, :]  # frame value = frame index
        segs, _ = clip_segments([clip], 10, overlap=0.5, tta=tta)
        starts = segs[:, 0, 0, 0].astype(int).tolist()
        assert len(starts) == len(set(starts)), (n, starts)
        assert np.all(np.diff(segs[..., 0, 0, :], axis=-1) == 1), n  # windows inside the clip
    segs, _ = clip_segments([np.arange(10, dtype=np.float32)[None, None, :]], 10, overlap=0.5, tta=tta)
    assert segs.shape[0] == 1 and segs[0, 0, 0].tolist() == list(range(10))
