"""The demo data families: each carries its class where it says, and its nuisances vary.

Class cues are checked with simple hand-made features and a nearest-class-mean rule on clips the
rule has not seen; nuisances by their spread within one class.
"""

from __future__ import annotations

import numpy as np
import pytest

from xdc.data.demo import (
    FAMILIES,
    class_names,
    clip_seed,
    generate_demo_data,
    max_classes,
    render_clip,
    split_of,
)
from xdc.data.demo_families import DTMF_HZ, plan_digits
from xdc.data.manifest import read_manifest
from xdc.errors import ConfigError

RATE = 16000
ARGS = dict(duration_sec=1.0, size=64, fps=12.0, sample_rate=RATE, audio_channels=1)


def _clip(family: str, class_id: int, index: int, seed: int = 0):
    return render_clip(
        class_id, clip_seed(seed, class_id, index), family=family, index=index,
        dataset_seed=seed, **ARGS,
    )  # fmt: skip


def _spectrum(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    power = np.abs(np.fft.rfft(audio[0])) ** 2
    return np.fft.rfftfreq(audio.shape[1], 1 / RATE), power


def _nearest_mean_accuracy(features: np.ndarray, labels: np.ndarray, train: np.ndarray) -> float:
    classes = np.unique(labels)
    means = np.stack([features[train & (labels == c)].mean(0) for c in classes])
    test = ~train
    guess = classes[((features[test, None] - means[None]) ** 2).sum(-1).argmin(1)]
    return float((guess == labels[test]).mean())


def test_digit_sound_is_the_keys_dtmf_pair() -> None:
    for digit, (low, high) in DTMF_HZ.items():
        for index in range(2):
            hz, power = _spectrum(_clip("digits", digit, index)[1])
            power[hz < 500] = 0
            low_peak = hz[np.argmax(np.where(hz < 1100, power, 0))]
            high_peak = hz[np.argmax(np.where(hz > 1100, power, 0))]
            assert abs(low_peak / low - 1) < 0.02, (digit, low_peak)
            assert abs(high_peak / high - 1) < 0.02, (digit, high_peak)


def test_digit_clips_show_distinct_handwritten_scans() -> None:
    scans = [
        plan_digits(3, clip_seed(0, 3, i), i, 0, 0.5, 32, 4.0, RATE, 1).template for i in range(40)
    ]
    distinct = {s.tobytes() for s in scans}  # type: ignore[union-attr]
    assert len(distinct) == 40
    other_seed = plan_digits(3, 1, 0, 1, 0.5, 32, 4.0, RATE, 1).template
    assert other_seed is not None and other_seed.shape == (8, 8)


def test_appearance_vowel_names_the_class_across_voices() -> None:
    """The log spectrum envelope tells the vowels apart on voices the classifier has not heard."""
    from sklearn.linear_model import LogisticRegression

    bands = np.geomspace(150, 4000, 25)
    features, labels = [], []
    for class_id in range(10):
        for index in range(10):
            hz, power = _spectrum(_clip("appearance", class_id, index)[1])
            energy = [
                power[(hz >= lo) & (hz < hi)].mean()
                for lo, hi in zip(bands[:-1], bands[1:], strict=True)
            ]
            envelope = np.log(np.asarray(energy) + 1e-12)
            features.append(envelope - envelope.mean())
            labels.append(class_id)
    x, y = np.stack(features), np.array(labels)
    train = np.tile(np.arange(10) < 7, 10)
    model = LogisticRegression(max_iter=2000).fit(x[train], y[train])
    assert model.score(x[~train], y[~train]) >= 0.5  # chance 0.1


def test_appearance_shape_is_the_only_visual_difference_between_classes() -> None:
    """One clip seed gives the same scene, path and colour in every class: only the object's
    outline changes, so the picture's class cue is the shape."""
    first = render_clip(0, 1234, family="appearance", **ARGS)[0].astype(int)
    for class_id in range(1, 10):
        other = render_clip(class_id, 1234, family="appearance", **ARGS)[0].astype(int)
        changed = np.abs(first - other).max(-1) > 30
        assert 0.003 < changed.mean() < 0.2, (class_id, changed.mean())


@pytest.mark.parametrize("family", FAMILIES)
def test_stereo_clips_have_two_channels_of_the_same_sound(family: str) -> None:
    frames, audio = render_clip(2, 99, family=family, **(ARGS | {"audio_channels": 2}))
    assert frames.shape == (12, 64, 64, 3) and audio.shape == (2, RATE)
    assert np.corrcoef(audio)[0, 1] > 0.5 and np.abs(audio).max() <= 1.0


@pytest.mark.parametrize("family", FAMILIES)
def test_nuisances_vary_within_every_class(family: str) -> None:
    clips = [_clip(family, 1, i) for i in range(8)]
    corners = np.stack([frames[0, :6, :6].reshape(-1, 3).mean(0) for frames, _ in clips])
    assert corners.std(0).max() > 20, "background colour should vary within a class"
    motion = [np.abs(np.diff(frames.astype(int), axis=0)).mean() for frames, _ in clips]
    assert np.std(motion) > 0.05 * np.mean(motion), "how much the picture moves should vary"
    level = [20 * np.log10(np.sqrt(np.mean(audio**2))) for _, audio in clips]
    assert np.std(level) > 1.5, "loudness should vary within a class"


@pytest.mark.parametrize("family", ["appearance", "digits"])
def test_sound_timing_says_nothing_about_the_class(family: str) -> None:
    """Where the sound is on and off is drawn from the clip's own stream, the same in every
    class: the sounding fraction of a clip does not depend on the class."""
    on = np.zeros((4, 6))
    for class_id in range(4):
        for index in range(6):
            audio = _clip(family, class_id, index)[1][0]
            frames = audio[: len(audio) // 160 * 160].reshape(-1, 160)
            rms = np.sqrt((frames**2).mean(1))
            on[class_id, index] = (rms > 0.3 * rms.max()).mean()
    between = on.mean(1).std()
    within = on.std(1).mean()
    assert between < within, (between, within)


def test_generate_writes_train_val_test_for_a_family(tmp_path) -> None:
    manifest = generate_demo_data(
        tmp_path, classes=3, per_class=5, family="digits", workers=1, progress=False,
        val_fraction=0.2, test_fraction=0.2, duration_sec=0.5, size=32, fps=8.0,
        sample_rate=RATE, audio_channels=1,
    )  # fmt: skip
    rows = read_manifest(manifest).rows
    splits = [r["split"] for r in rows]
    assert (splits.count("train"), splits.count("val"), splits.count("test")) == (9, 3, 3)
    assert sorted({r["label"] for r in rows}) == sorted(class_names(3, "digits"))


def test_split_of_keeps_test_compatible_and_leaves_training_videos() -> None:
    before = {i for i, s in split_of(7, 2, 20, 0.2, 0.0).items() if s == "test"}
    after = split_of(7, 2, 20, 0.2, 0.2)
    assert {i for i, s in after.items() if s == "test"} == before
    assert list(after.values()).count("val") == 4
    assert list(split_of(0, 0, 2, 0.5, 0.5).values()).count("train") == 1


def test_family_errors_name_the_flag(tmp_path) -> None:
    with pytest.raises(ConfigError, match="--family"):
        generate_demo_data(tmp_path, family="cartoons", progress=False)
    with pytest.raises(ConfigError, match="--classes"):
        class_names(11, "digits")
    with pytest.raises(ConfigError, match="--per-class"):
        generate_demo_data(tmp_path, family="digits", per_class=500, progress=False)
    with pytest.raises(ConfigError, match="--val-fraction"):
        generate_demo_data(tmp_path, val_fraction=0.9, progress=False)
    assert max_classes("appearance") == 10 and max_classes("motion") == 20


def test_hue_turn_keeps_greys_and_luma_and_changes_colour() -> None:
    import math

    import torch

    from xdc.data.transforms import hue_rotation, strong_augment

    assert torch.allclose(hue_rotation(0.0), torch.eye(3, dtype=torch.float64), atol=1e-9)
    turn = hue_rotation(math.pi / 2)
    grey = torch.tensor([0.3, 0.3, 0.3], dtype=torch.float64)
    assert torch.allclose(turn @ grey, grey, atol=1e-9)
    colour = torch.tensor([0.6, 0.3, 0.2], dtype=torch.float64)
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)
    assert torch.isclose(luma @ (turn @ colour), luma @ colour, atol=1e-6)
    assert (turn @ colour - colour).abs().max() > 0.1
    clip = torch.rand(2, 3, 8, 8)
    hues = [strong_augment(clip, np.random.default_rng(s), hue=True) for s in range(4)]
    plain = [strong_augment(clip, np.random.default_rng(s)) for s in range(4)]
    assert all((h - p).abs().max() > 0.01 for h, p in zip(hues, plain, strict=True))
