"""A run whose clusters track nothing the other modality can predict says so: in its log, in
RUN/warnings.json and in its report. The decision rules are checked on constructed numbers, both
where they must fire and where they must not.

The run built to fail: XDC on videos of three flat colours whose sound is white noise of a random
loudness, drawn independently of the colour. Audio clusters follow the loudness, which no frame
shows; video clusters follow the colour, which no sound carries.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TINY_OVERRIDES, tiny_config
from tests.media import write_video
from xdc.checkpoint import load_checkpoint
from xdc.config import PretrainConfig
from xdc.data.manifest import write_manifest
from xdc.diagnostics import (
    STABLE_NMI,
    RunWarning,
    at_chance,
    chance_level,
    clustering_warnings,
    degenerate_features,
    effective_rank,
    heldout_margin,
    heldout_warnings,
    largest_cluster_limit,
    nmi_collapsed,
    read_warnings,
)
from xdc.evaluation.report import write_report
from xdc.evaluation.report_checks import (
    CACHE_NAME,
    fit_gap_warnings,
    random_init_html,
    random_init_warnings,
)
from xdc.runlog import read_metrics
from xdc.training import pretrain

ROOT = Path(__file__).resolve().parents[1]
COLOURS = ((220, 40, 40), (40, 200, 60), (50, 70, 230))
PER_CLASS = {"train": 20, "test": 2}  # 60 training videos: 18 held out (val_fraction 0.3)
FAILING = {
    "train.iterations": 2,
    "train.max_epochs": 2,
    "train.val_fraction": 0.3,
}


# --- The decision rules on constructed numbers ------------------------------------------------


def test_chance_level_is_the_share_of_the_largest_cluster() -> None:
    assert chance_level([0, 0, 0, 1, 2, 2]) == pytest.approx(0.5)
    assert chance_level(torch.tensor([3, 3, 1, -1])) == pytest.approx(2 / 3)  # -1 is unlabelled
    assert np.isnan(chance_level([-1, -1]))


def test_heldout_margin_is_two_points_or_two_standard_errors() -> None:
    # Many held-out videos: the 2-point floor; few: two binomial standard errors.
    assert heldout_margin(0.25, 100_000) == pytest.approx(0.02)
    assert heldout_margin(0.5, 100) == pytest.approx(2 * np.sqrt(0.25 / 100))
    # A large K: the floor is the chance level itself (double the chance), not 2 points.
    assert heldout_margin(0.001, 1_000_000) == pytest.approx(0.001)


def test_heldout_accuracy_at_chance_fires_only_when_it_can_tell() -> None:
    # Many videos: within 2 points of chance is at chance, beyond is not.
    assert at_chance(0.26, 0.25, 10_000) and not at_chance(0.28, 0.25, 10_000)
    assert at_chance(0.50, 0.40, 50)  # 2 SE = 0.139: 0.50 is within noise of 0.40
    assert not at_chance(0.60, 0.40, 50)
    # Two held-out videos: even 100 % could not clear the bar, so nothing is said.
    assert not at_chance(0.0, 0.5, 2) and not at_chance(0.0, 1.0, 5)
    assert not at_chance(float("nan"), 0.3, 100) and not at_chance(0.3, 0.3, 0)


def test_nmi_collapse_rule() -> None:
    assert nmi_collapsed(0.05)  # below the 0.1 floor
    assert nmi_collapsed(0.15, chance=0.18)  # no better than random partitions of these sizes
    assert nmi_collapsed(0.30, chance=0.05, previous=0.70)  # fell by more than half
    assert not nmi_collapsed(0.40, chance=0.05, previous=0.70)  # fell, but by less than half
    assert not nmi_collapsed(0.60, chance=0.05, previous=0.50)  # stable or rising
    assert not nmi_collapsed(0.30, chance=0.05)  # no previous NMI to compare with
    assert not nmi_collapsed(float("nan"), chance=0.05)


def test_effective_rank_of_constructed_spectra() -> None:
    assert effective_rank([4.0, 0.0, 0.0]) == pytest.approx(1.0)  # one direction
    assert effective_rank([1.0] * 8) == pytest.approx(8.0)  # isotropic in 8 dimensions
    assert 1.0 < effective_rank([1.0, 0.01, 0.01]) < 2.0
    assert effective_rank([0.0, 0.0]) == 0.0 and effective_rank([1e-9, 1e-9]) == 0.0  # one point
    # From real features: a line in 16-D (plus float noise) vs. a spread cloud.
    rng = np.random.default_rng(0)
    line = np.outer(rng.normal(size=500), rng.normal(size=16))
    cloud = rng.normal(size=(500, 16))
    for x, low, high in ((line, 0.99, 1.01), (cloud, 14.0, 16.0)):
        eig = np.linalg.eigvalsh(np.cov(x / np.linalg.norm(x, axis=1, keepdims=True), rowvar=False))
        assert low <= effective_rank(eig) <= high


def test_degenerate_feature_rule() -> None:
    assert degenerate_features(1.5, 0.2, 10)  # collapsed onto 1.5 directions
    assert degenerate_features(12.0, 0.55, 10)  # one cluster of ten holds 55 %
    assert not degenerate_features(12.0, 0.45, 10)
    assert not degenerate_features(2.5, 0.34, 3)
    # K = 2: a 60/40 split is healthy; 80/20 is not (the limit is 1.5 × the fair share 1/K).
    assert largest_cluster_limit(2) == pytest.approx(0.75)
    assert not degenerate_features(9.0, 0.6, 2) and degenerate_features(9.0, 0.8, 2)
    assert not degenerate_features(None, None, 5)


def test_clustering_warnings_from_cluster_statistics() -> None:
    healthy = {"nmi_previous": 0.6, "nmi_previous_chance": 0.02, "effective_rank": 40.0}
    healthy |= {"largest_fraction": 0.1, "k": 32}
    collapsed = {**healthy, "nmi_previous": 0.04}
    # The second iteration (1, 0-based) is never judged on NMI: it compares with random features.
    assert clustering_warnings(1, {"video": collapsed}, {}) == []
    assert clustering_warnings(2, {"video": healthy}, {"video": 0.5}) == []
    (w,) = clustering_warnings(2, {"video": collapsed, "audio": healthy}, {"video": 0.5})
    assert (w.iteration, w.code, w.subject) == (2, "nmi_collapse", "video")
    assert "re-drawn from scratch" in w.message
    flat = {**healthy, "effective_rank": 1.2, "largest_fraction": 0.7}
    (w,) = clustering_warnings(0, {"audio": flat}, {})
    assert w.code == "degenerate_features" and "1.20" in w.message and "70%" in w.message


def test_heldout_warnings_name_the_heads_and_what_to_try() -> None:
    heads = [("video", "audio", "video_to_audio"), ("audio", "video", "audio_to_video")]
    labels = {"audio": np.array([0] * 30 + [1] * 30 + [2] * 40), "video": np.arange(100) % 4}
    epochs = [
        {"val_acc_video_to_audio": 0.38, "val_acc_audio_to_video": 0.50},
        {"val_acc_video_to_audio": 0.41, "val_acc_audio_to_video": 0.62},
    ]
    # Chance 0.40 (audio) and 0.25 (video), 100 videos: the video head (best 0.41) is at chance,
    # the audio head (0.62) is not.
    (w,) = heldout_warnings(3, heads, epochs, labels)
    assert (w.iteration, w.code, w.subject) == (3, "heldout_at_chance", "video_to_audio")
    assert "the video encoder cannot predict the audio clusters" in w.message
    assert "acc 0.410" in w.message and "chance 0.400" in w.message
    for hint in ("train.iterations", "cluster.k", "data.augment=strong", "--method supervised"):
        assert hint in w.advice
    # Unpredictable but stable target clusters (NMI with the previous clustering >= 0.2) are what
    # healthy small runs look like: no warning. Unstable ones (or unknown stability) are reported.
    assert heldout_warnings(3, heads, epochs, labels, {"audio": 0.35}) == []
    (w,) = heldout_warnings(3, heads, epochs, labels, {"audio": 0.05})
    assert w.subject == "video_to_audio"
    sdc = heldout_warnings(0, [("video", "video", "video_to_video")], epochs[:0], labels)
    assert sdc == []  # no epoch records: nothing to judge


def test_random_init_warning_when_training_did_not_help() -> None:
    check = {
        "top1": {
            "video": {"trained": 0.30, "random": 0.29},
            "audio": {"trained": 0.7, "random": 0.3},
        },
        "n_test_videos": {"video": 400, "audio": 400},
    }
    (w,) = random_init_warnings(check)
    assert w["subject"] == "video" and "not clearly above its random init" in w["message"]
    # Two test videos cannot show a gain, but a trained encoder below its init is still said.
    few = {"top1": {"video": {"trained": 0.0, "random": 0.5}}, "n_test_videos": {"video": 2}}
    assert len(random_init_warnings(few)) == 1
    few["top1"]["video"] = {"trained": 1.0, "random": 0.5}
    assert random_init_warnings(few) == []
    assert random_init_warnings({"skipped": "no labels"}) == []


def test_fit_gap_warning_when_the_probe_fits_training_videos_only() -> None:
    """The report's probe check stores the cross-validated top-1 on the training videos; a
    trained encoder 25 points or more above its val top-1 there is flagged as memorising, and
    only that one (random init's own gap, and a small gap, say nothing). The table's verdict
    is still about random init."""
    check = {
        "test_split": "val",
        "train_split": "train",
        "n_train_videos": 320,
        "clips_per_video": 1,
        "chance_top1": 0.1,
        "top1": {
            "video": {"trained": 0.25, "random": 0.10},
            "audio": {"trained": 0.90, "random": 0.40},
        },
        "cv_top1": {
            "video": {"trained": 0.706, "random": 0.13},
            "audio": {"trained": 0.95, "random": 0.90},
        },
        "n_test_videos": {"video": 80, "audio": 80},
    }
    (w,) = fit_gap_warnings(check)
    assert w["code"] == "memorised_training_videos" and w["subject"] == "video"
    assert "70.6%" in w["message"] and "25.0%" in w["message"] and "'val'" in w["message"]
    assert "--method supervised" in w["advice"] and "more" in w["advice"]
    html = random_init_html(check, random_init_warnings(check) + [w])
    assert "not clearly above" not in html and html.count("above its random init") == 2
    assert fit_gap_warnings({"top1": check["top1"], "test_split": "val"}) == []  # older cache
    assert fit_gap_warnings(None) == [] and fit_gap_warnings({"skipped": "no labels"}) == []


# --- A run built to fail ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def noise_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 flat colours × (20 train + 2 test) videos of 1.2 s; the sound is white noise of about
    the same loudness in every video: nothing in it is stable enough to cluster on."""
    root = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(0)
    rows = []
    for c, colour in enumerate(COLOURS):
        for split, n in PER_CLASS.items():
            for i in range(n):
                frames = np.empty((30, 48, 48, 3), np.uint8)
                frames[:] = np.clip(np.asarray(colour) + rng.integers(-15, 16, 3), 0, 255)
                audio = rng.uniform(0.25, 0.3) * rng.standard_normal(19200).clip(-3, 3) / 3
                path = write_video(root / f"c{c}_{split}{i}.mkv", frames, 25.0, audio, 16000)
                rows.append(
                    {"path": path.name, "label": f"colour{c}", "split": split,
                     "duration_sec": 1.2, "has_video": 1, "fps": 25, "width": 48, "height": 48,
                     "has_audio": 1, "sample_rate": 16000, "audio_channels": 1}
                )  # fmt: skip
    return write_manifest(rows, root / "manifest.csv")


class _Printed(logging.Handler):
    """Collects what the loop's logger prints (on stderr, through the CLI's handler)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _failing_config() -> PretrainConfig:
    return tiny_config("xdc", **{k.replace(".", "__"): v for k, v in FAILING.items()})


@pytest.fixture(scope="module")
def failing(noise_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The run built to fail (2 iterations) and what its logger printed."""
    out = tmp_path_factory.mktemp("failing") / "xdc"
    printed = _Printed()
    logger = logging.getLogger("xdc.training")
    logger.addHandler(printed)
    try:
        pretrain(_failing_config(), noise_manifest, out, progress=False)
    finally:
        logger.removeHandler(printed)
    return {"run": out, "printed": printed.messages}


@pytest.fixture(scope="module")
def failing_run(failing: dict) -> Path:
    return failing["run"]


def _keys(warnings: list[dict]) -> list[tuple]:
    return [(w["iteration"], w["code"], w["subject"]) for w in warnings]


def test_failing_run_warns_in_log_file_and_stderr(failing: dict) -> None:
    failing_run = failing["run"]
    logged = read_metrics(failing_run, "warning")
    at_chance_heads = {w["subject"] for w in logged if w["code"] == "heldout_at_chance"}
    assert at_chance_heads, f"no held-out-at-chance warning in {_keys(logged)}"
    # The noise's clusters are neither predictable nor stable: the video encoder is told. A head
    # is reported only when its target clustering was re-drawn (NMI with the previous one below
    # STABLE_NMI): that is the rule that keeps healthy runs quiet.
    assert "video_to_audio" in at_chance_heads
    redrawn = {
        c["clustering"]
        for c in read_metrics(failing_run, "cluster")
        if c.get("nmi_previous", 1.0) < STABLE_NMI
    }
    assert {head.rsplit("_to_", 1)[1] for head in at_chance_heads} <= redrawn
    # Not after the first iteration, whose clusters are of random-init features.
    assert all(w["iteration"] >= 1 for w in logged if w["code"] == "heldout_at_chance")
    for w in logged:
        assert set(RunWarning.__dataclass_fields__) <= set(w) and w["message"] and w["advice"]
    saved = json.loads((failing_run / "warnings.json").read_text())
    assert _keys(saved) == _keys(logged) and len(set(_keys(saved))) == len(saved)
    assert read_warnings(failing_run) == saved
    # The held-out warning names the encoder, the clusters, both numbers and what to try.
    text = next(w for w in saved if w["code"] == "heldout_at_chance")
    assert "cannot predict the" in text["message"] and "vs chance" in text["message"]
    assert "data.augment=strong" in text["advice"] and "--method supervised" in text["advice"]
    # Each warning is printed once, on the loop's logger (stderr), as it arises.
    printed = failing["printed"]
    assert len(printed) == len(saved)
    for w, line in zip(saved, printed, strict=True):
        assert line.startswith(f"warning: iteration {w['iteration'] + 1}: ")
        assert w["message"] in line and w["advice"] in line


def test_failing_run_report_lists_the_warnings_and_compares_with_random_init(
    failing_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(failing_run, run)
    tic = time.perf_counter()
    html = write_report(run, progress=False).read_text(encoding="utf-8")
    first = time.perf_counter() - tic
    top = html.index('<section id="warnings">')
    assert top < html.index('<section id="run">'), "the warnings come first"
    warnings = html[top : html.index("</section>", top)]
    assert "cannot predict the" in warnings and "heldout_at_chance" in warnings
    assert "data.augment=strong" in warnings and "iteration 2" in warnings
    # Linear probe of the trained and of random-init encoders, with the chance level.
    table = html[html.index('<section id="random-init">') :]
    table = table[: table.index("</section>")]
    for word in ("trained", "random init", "chance", "<th>video</th>", "<th>audio</th>"):
        assert word in table
    cache = json.loads((run / "eval" / CACHE_NAME).read_text())
    assert set(cache["top1"]) == {"video", "audio"}
    # Stored for the memorisation warning: C was cross-validated for both modalities.
    assert set(cache["cv_top1"]) == {"video", "audio"}
    assert all(0.0 <= v <= 1.0 for m in cache["cv_top1"].values() for v in m.values())
    assert cache["chance_top1"] == pytest.approx(1 / 3)
    assert CACHE_NAME not in html[html.index('<section id="evaluation">') :]
    # Written again: the probe comes from the cache.
    tic = time.perf_counter()
    again = write_report(run, progress=False).read_text(encoding="utf-8")
    assert time.perf_counter() - tic < first
    assert table in again


def test_healthy_numbers_give_a_clear_no_warnings_line(failing_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(failing_run, run)
    (run / "warnings.json").unlink()
    records = [r for r in read_metrics(run) if r["event"] != "warning"]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    html = write_report(run, progress=False, probe=False).read_text(encoding="utf-8")
    assert "no warnings: training found nothing wrong" in html
    assert "not compared: --no-probe" in html


# --- Resume ---------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _cli(manifest: Path, out: Path) -> list[str]:
    flags = [f"{k}={v}" for k, v in {**TINY_OVERRIDES, **FAILING}.items()]
    return [
        sys.executable, "-m", "xdc.cli", "pretrain", "--data", str(manifest), "--out", str(out),
        "--method", "xdc", "--preset", "tiny", "--no-progress", *flags,
    ]  # fmt: skip


def test_warnings_are_not_duplicated_after_a_resume(
    failing_run: Path, noise_manifest: Path, tmp_path: Path
) -> None:
    """Killed in the second iteration, then resumed with a log and warnings.json that ran ahead of
    the checkpoint (as after a kill between a warning and the next checkpoint): the replayed
    iteration warns again, and every warning is listed once, as in the uninterrupted run."""
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli(noise_manifest, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while not [r for r in read_metrics(out, "train") if r["iteration"] == 1]:
            assert proc.poll() is None, (
                f"the run ended before it was killed: {proc.stderr.read()!r}"
            )
            assert time.monotonic() < deadline, "the run never reached its second iteration"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # The log and warnings.json of the whole run, ahead of the checkpoint of iteration 2.
    for name in ("metrics.jsonl", "warnings.json"):
        shutil.copy(failing_run / name, out / name)
    kept = load_checkpoint(out)["loop"]
    assert kept["iteration"] == 1 and not kept["finished"]
    beyond = [
        r
        for i, r in enumerate(read_metrics(out))
        if i >= kept["log_seq"] and r["event"] == "warning"
    ]
    assert beyond, "the iteration replayed after the resume warns again"
    pretrain(_failing_config(), noise_manifest, out, progress=False)
    expected = _keys(json.loads((failing_run / "warnings.json").read_text()))
    saved = _keys(json.loads((out / "warnings.json").read_text()))
    logged = _keys(read_metrics(out, "warning"))
    assert saved == logged == expected
