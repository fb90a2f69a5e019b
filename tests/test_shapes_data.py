"""The moving-shapes data and its scores: the generator is deterministic and its ground truth is
the pixels'; the scores give real clips full marks and broken clips bad ones."""
import math

import pytest
import torch

from vidgen.shapes import data, scores


def test_the_same_seed_draws_the_same_clips_and_another_seed_others():
    a, b = data.sample_specs(12, seed=3), data.sample_specs(12, seed=3)
    assert a == b
    assert torch.equal(data.render(a), data.render(b))
    assert data.sample_specs(12, seed=4) != a


def test_captions_are_sentences_of_the_grammar_and_every_word_is_in_the_vocabulary():
    for spec in data.sample_specs(40, seed=0):
        caption = str(spec.caption)
        assert data.parse_caption(caption) == spec.caption
        assert set(caption.split()) <= set(data.VOCABULARY)


@pytest.mark.parametrize("shape", data.SHAPES)
def test_the_ground_truth_is_where_the_pixels_are(shape):
    """Area and centroid of the rendered coverage match the truth's size and position (the
    triangle's centroid lies a sixth of its height below its box centre), on every frame."""
    specs = data.sample_specs(6, seed=11, captions=[data.Caption("green", shape, d) for d in data.DIRECTIONS])
    videos = data.render(specs)
    colour = torch.tensor(data.COLOURS["green"])
    for spec, video in zip(specs, videos):
        alpha = (video * colour.view(3, 1, 1)).sum(1) / colour.square().sum()   # (F, H, W)
        for truth, frame in zip(data.ground_truth(spec), alpha):
            area = {"square": truth.size ** 2, "circle": math.pi * truth.size ** 2 / 4,
                    "triangle": truth.size ** 2 / 2}[shape]
            assert float(frame.sum()) == pytest.approx(area, rel=0.03)      # fully inside the frame
            centre = torch.arange(data.SIZE) + 0.5
            x = float((frame.sum(0) * centre).sum() / frame.sum())
            y = float((frame.sum(1) * centre).sum() / frame.sum())
            offset = truth.size / 6 if shape == "triangle" else 0.0
            assert (x, y) == pytest.approx((truth.x, truth.y + offset), abs=0.15)  # 8x8 coverage samples per pixel
            assert (truth.shape, truth.colour) == (shape, "green")


def test_motion_follows_the_caption_and_bounces_off_the_walls_across_it():
    for spec in data.sample_specs(30, seed=5):
        track = data.trajectory(spec)
        dx, dy = data.DIRECTIONS[spec.caption.direction]
        main = track[:, 0] if dx else track[:, 1]
        steps = (main[1:] - main[:-1]) * (dx + dy)
        assert (steps > 0.7).all()                                            # every frame moves as captioned
        low, high = spec.size / 2 + spec.margin, data.SIZE - spec.size / 2 - spec.margin
        assert ((track >= low - 1e-9) & (track <= high + 1e-9)).all()
    spec = data.ClipSpec(data.Caption("red", "circle", "left"), 8.0, 26.0, 6.5, -1.0, -0.6)
    across = data.trajectory(spec)[:, 1]           # reaches the wall at y = 5 between frames 2 and 3
    expected = [6.5, 5.9, 5.3, 5.3, 5.9, 6.5, 7.1, 7.7]
    assert across.tolist() == pytest.approx(expected, abs=1e-9)


def test_unknown_words_and_bad_sentences_are_refused_by_name():
    with pytest.raises(ValueError, match=r"caption: 'a red horse moves left' has words the model does not know "
                                         r"\('horse'\); its vocabulary is a, blue, circle, down"):
        data.parse_caption("a red horse moves left")
    with pytest.raises(ValueError, match="not a sentence of the grammar"):
        data.parse_caption("red a square moves left")
    with pytest.raises(ValueError, match="leaves the 32-pixel frame"):
        data.sample_specs(1, seed=0, motion=data.Motion(size=(20.0, 20.0), speed=(3.0, 3.0)))


@pytest.fixture(scope="module")
def real():
    specs = data.sample_specs(96, seed=21)
    return specs, data.render(specs)


def test_real_clips_score_perfectly(real):
    specs, videos = real
    reports = scores.report_videos(videos)
    assert scores.caption_scores(reports, [s.caption for s in specs]) == \
        {"colour": 1.0, "shape": 1.0, "direction": 1.0, "caption": 1.0}
    consistency = scores.consistency_scores(reports)
    assert consistency["consistency"] == 1.0 and consistency["detected"] == 1.0
    assert consistency["jitter"] < 0.1
    for spec, report in zip(specs, reports):    # the detector reads the ground truth back
        truth = data.trajectory(spec)
        assert report.start == pytest.approx(tuple(truth[0].tolist()), abs=0.15)
        assert report.size == pytest.approx(spec.size, abs=0.3)
    other = scores.track_features(scores.report_videos(data.render(data.sample_specs(96, seed=22))))
    assert scores.frechet_distance(scores.track_features(reports), other) < 2.0


def test_shuffled_and_noise_clips_score_badly(real):
    specs, videos = real
    captions = [s.caption for s in specs]
    reference = scores.track_features(scores.report_videos(videos))
    generator = torch.Generator().manual_seed(0)
    shuffled = torch.stack([v[torch.randperm(data.FRAMES, generator=generator)] for v in videos])
    shuffled_scores = scores.score_videos(shuffled, captions, reference)
    assert shuffled_scores["direction"] < 0.6 and shuffled_scores["jitter"] > 1.0
    assert shuffled_scores["frechet"] > 20
    noise = torch.rand(videos.shape, generator=generator)
    noise_scores = scores.score_videos(noise, captions, reference)
    assert noise_scores["caption"] < 0.15 and noise_scores["consistency"] < 0.8
    assert noise_scores["frechet"] > 100
    black = scores.score_videos(torch.zeros_like(videos), captions, reference)
    assert black["caption"] == 0.0 and black["detected"] == 0.0 and black["frechet"] > 100


def test_frechet_distance_is_zero_for_the_same_set_and_grows_with_a_shift():
    features = torch.randn(400, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    units = torch.ones(5, dtype=torch.float64)
    assert scores.frechet_distance(features, features, units) == pytest.approx(0.0, abs=1e-9)
    shifted = features + torch.tensor([1.0, 0, 0, 0, 0], dtype=torch.float64) * features[:, 0].std()
    assert scores.frechet_distance(features, shifted, units) == pytest.approx(float(features[:, 0].var()), rel=1e-6)
