"""The pretraining loop: every method runs, routes the right pseudo-labels, resumes, and refuses bad
input before doing any work."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from tests.conftest import TINY_OVERRIDES, tiny_config
from xdc import optim
from xdc.checkpoint import load_checkpoint
from xdc.cli import main
from xdc.config import ClusterConfig, TrainConfig
from xdc.deep_clustering import DeepClusteringModel
from xdc.errors import ConfigError
from xdc.methods import METHODS, get_method
from xdc.pseudolabels import balanced_weights, make_pseudo_labels
from xdc.run import deterministic_algorithms, use_cudnn_benchmark
from xdc.runlog import read_metrics
from xdc.training import pretrain, pretraining_lr


def _planted_features(
    n: int = 120, seed: int = 0
) -> tuple[dict[str, torch.Tensor], np.ndarray, np.ndarray]:
    """Video features in 3 tight blobs by partition A, audio features in 2 blobs by partition B."""
    rng = np.random.default_rng(seed)
    part_a = np.arange(n) % 3
    part_b = (np.arange(n) // 3) % 2
    centres_v = rng.normal(size=(3, 16)) * 10
    centres_a = rng.normal(size=(2, 16)) * 10
    video = centres_v[part_a] + rng.normal(size=(n, 16)) * 0.1
    audio = centres_a[part_b] + rng.normal(size=(n, 16)) * 0.1
    feats = {
        "video": torch.tensor(video, dtype=torch.float32),
        "audio": torch.tensor(audio, dtype=torch.float32),
    }
    return feats, part_a, part_b


@pytest.mark.parametrize("name", ["sdc", "mdc", "cdc", "xdc"])
def test_each_method_routes_the_right_clusters_to_each_head(name: str) -> None:
    feats, part_a, part_b = _planted_features()
    method = get_method(name)
    k = {"video": 3, "audio": 2, "joint": 6}
    config = ClusterConfig(
        k=3, k_video=3, k_audio=2, k_joint=6, pca_dim=0, whiten=False, kmeans_iters=10
    )
    result = make_pseudo_labels(method, feats, np.arange(120), 120, config, seed=0)
    expected = {"video": part_a, "audio": part_b, "joint": part_a * 2 + part_b}
    for _encoder, clustering in method.heads():
        labels = result.labels[clustering].numpy()
        assert labels.max() + 1 == k[clustering]
        assert adjusted_rand_score(expected[clustering], labels) == pytest.approx(1.0)
    # What each encoder learns to predict, as the paper defines the methods.
    targets = {enc: set(names) for enc, names in method.targets}
    assert (
        targets
        == {
            "sdc": {"video": {"video"}, "audio": {"audio"}},
            "mdc": {"video": {"video", "audio"}, "audio": {"video", "audio"}},
            "cdc": {"video": {"joint"}, "audio": {"joint"}},
            "xdc": {"video": {"audio"}, "audio": {"video"}},
        }[name]
    )


def test_model_has_one_head_per_target_sized_by_its_clustering() -> None:
    enc = {"video": torch.nn.Linear(4, 5), "audio": torch.nn.Linear(4, 7)}
    for e in enc.values():
        e.num_features = e.out_features  # type: ignore[attr-defined]
    model = DeepClusteringModel(enc, METHODS["xdc"], {"video": 3, "audio": 2})
    out = model({"video": torch.randn(2, 4), "audio": torch.randn(2, 4)})
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "video_to_audio": (2, 2),
        "audio_to_video": (2, 3),
    }


def test_balanced_weights_draw_every_cluster_equally() -> None:
    labels = {"audio": torch.tensor([0, 0, 0, 0, 1, 1, -1])}
    w = balanced_weights(labels, np.arange(7))
    assert w[:4].sum() == pytest.approx(w[4:6].sum()) and w[6] == 0


@pytest.mark.parametrize("method", ["xdc", "sdc", "mdc", "cdc", "supervised"])
def test_one_iteration_of_each_method(method: str, demo_manifest: Path, tmp_path: Path) -> None:
    state = pretrain(tiny_config(method), demo_manifest, tmp_path / "run", progress=False)
    assert state.finished and state.iteration == 1
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["loop"]["finished"] and set(ckpt["encoders"]) == {"video", "audio"}
    events = {r["event"] for r in read_metrics(tmp_path / "run")}
    assert {"train", "epoch", "finished"} <= events
    if method != "supervised":
        clusters = read_metrics(tmp_path / "run", "cluster")
        assert {c["clustering"] for c in clusters} == {c.name for c in METHODS[method].clusterings}
        assert all(c["n_empty"] == 0 for c in clusters)


def test_finished_run_says_so_and_changes_nothing(
    tiny_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (tiny_run / "checkpoint.pt").stat().st_mtime_ns
    state = pretrain(
        tiny_config("xdc"), json.loads((tiny_run / "run.json").read_text())["data"], tiny_run
    )
    assert state.finished
    assert "nothing to do" in capsys.readouterr().out
    assert (tiny_run / "checkpoint.pt").stat().st_mtime_ns == before


def test_a_finished_run_is_not_silently_extended(demo_manifest: Path, tmp_path: Path) -> None:
    """A run of 1 iteration, re-run asking for 2 without ``extend``: refused, naming the key that
    differs and the flag that would allow it."""
    pretrain(tiny_config("xdc"), demo_manifest, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match=r"train\.iterations.*--extend"):
        pretrain(
            tiny_config("xdc", train__iterations=2), demo_manifest, tmp_path / "run", progress=False
        )


def test_an_extended_run_is_the_longer_run(demo_manifest: Path, tmp_path: Path) -> None:
    """``extend``: a finished 1-iteration run taken on to 2 iterations ends with the weights,
    step count and pseudo-labels of a 2-iteration run made from scratch (constant rate);
    the log says so. Shorter runs, and other schedules, are refused."""
    two = tiny_config("xdc", train__iterations=2)
    pretrain(two, demo_manifest, tmp_path / "scratch", progress=False)
    pretrain(tiny_config("xdc"), demo_manifest, tmp_path / "run", progress=False)
    state = pretrain(two, demo_manifest, tmp_path / "run", progress=False, extend=True)
    assert state.finished and state.iteration == 2
    ours, ref = load_checkpoint(tmp_path / "run"), load_checkpoint(tmp_path / "scratch")
    for name in ("video", "audio"):
        for key, value in ref["encoders"][name].items():
            assert torch.equal(ours["encoders"][name][key], value), f"{name}.{key}"
    assert ours["loop"]["step"] == ref["loop"]["step"]
    for name, labels in ref["loop"]["labels"].items():
        assert torch.equal(torch.as_tensor(ours["loop"]["labels"][name]), torch.as_tensor(labels))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["iterations"] == 2
    notes = [r["message"] for r in read_metrics(tmp_path / "run", "note")]
    assert any("from 1 to 2 iterations" in n for n in notes)
    with pytest.raises(ConfigError, match="cannot be shortened"):
        pretrain(tiny_config("xdc"), demo_manifest, tmp_path / "run", extend=True)
    cosine = tiny_config("xdc", train__schedule="cosine")
    pretrain(cosine, demo_manifest, tmp_path / "cosine", progress=False)
    with pytest.raises(ConfigError, match="train.schedule=cosine"):
        pretrain(
            tiny_config("xdc", train__schedule="cosine", train__iterations=2),
            demo_manifest, tmp_path / "cosine", extend=True,
        )  # fmt: skip


def _cli(*args: str) -> list[str]:
    flags = [f"{k}={v}" for k, v in TINY_OVERRIDES.items()]
    return ["pretrain", *args, "--preset", "tiny", "--no-progress", *flags]


def _rewrite_manifest(src: Path, dst_dir: Path, **column_values: str) -> Path:
    shutil.copytree(src.parent, dst_dir)
    path = dst_dir / "manifest.csv"
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row.update(column_values)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("missing manifest", "manifest not found"),
        ("empty split", "split 'validation' has no rows"),
        ("k too large", "cluster.k=99"),
        ("unknown key", "train.nonsense"),
        ("no audio", "no usable videos"),
        ("supervised without labels", "--method supervised needs a label"),
    ],
)
def test_bad_input_is_one_line_before_any_work(
    case: str, needle: str, demo_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, extra, method = str(demo_manifest), [], "xdc"
    if case == "missing manifest":
        data = str(tmp_path / "nowhere.csv")
    elif case == "empty split":
        extra = ["--split", "validation"]
    elif case == "k too large":
        extra = ["cluster.k=99"]
    elif case == "unknown key":
        extra = ["train.nonsense=1"]
    elif case == "no audio":
        data = str(_rewrite_manifest(demo_manifest, tmp_path / "noaudio", has_audio="0"))
    elif case == "supervised without labels":
        data = str(_rewrite_manifest(demo_manifest, tmp_path / "nolabels", label=""))
        method = "supervised"
    out = tmp_path / "run"
    code = main([*_cli("--data", data, "--out", str(out), "--method", method), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert needle in err and err.count("\n") == 0
    assert not out.exists(), "no run folder is created for invalid input"


def test_other_config_in_existing_run_folder_is_refused(
    tiny_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = json.loads((tiny_run / "run.json").read_text())["data"]
    code = main([*_cli("--data", data, "--out", str(tiny_run)), "train.lr=0.123"])
    assert code == 2 and "train.lr" in capsys.readouterr().err


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    demo_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = _cli("--data", str(demo_manifest), "--out", str(out))
    code = main(
        [*args, "train.lr=1e30", "train.grad_clip=0", "train.warmup_epochs=0", "train.max_epochs=2"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "loss became" in err and "checkpoint" in err
    ckpt = load_checkpoint(out)
    assert ckpt["loop"]["phase"] == "train" and ckpt["loop"]["epoch"] == 0
    assert all(
        torch.isfinite(t).all() for t in ckpt["encoders"]["video"].values() if t.is_floating_point()
    )


def test_learning_rate_warms_up_then_keeps_its_peak_for_the_last_iteration() -> None:
    """The default is constant: the last iteration, with the best pseudo-labels, trains at the peak
    rate; ``cosine`` spends the rate over the whole run and leaves that iteration little."""
    constant = TrainConfig(iterations=3, max_epochs=4, lr=0.1, warmup_epochs=1.0)
    assert pretraining_lr(0, 0, 0, 1, constant) == pytest.approx(0.05)  # mid-step of 1 step
    assert pretraining_lr(0, 0, 0, 100, constant) == pytest.approx(0.0005)  # never 0
    assert [pretraining_lr(i, e, 0, 1, constant) for i, e in ((0, 1), (1, 2), (2, 3))] == [0.1] * 3
    cosine = TrainConfig(iterations=3, max_epochs=4, lr=0.1, warmup_epochs=1.0, schedule="cosine")
    assert pretraining_lr(0, 0, 0, 1, cosine) == pytest.approx(0.05)
    last = [pretraining_lr(2, e, s, 10, cosine) for e, s in ((0, 0), (2, 0), (3, 9))]
    assert last[0] < 0.035 and last[0] > last[1] > last[2] >= 0.0  # under a third of the peak


def test_clustering_on_averaged_augmented_views(demo_manifest: Path, tmp_path: Path) -> None:
    """cluster.views=3: each video's feature is the mean over 3 augmented training-style clips,
    one per video and not the first view alone; a run clusters them."""
    import dataclasses

    from xdc.run import open_run
    from xdc.training import _averaged_views, build_model

    config = tiny_config("xdc", cluster__views=3, data__augment="strong_hue")
    run = open_run(config, demo_manifest, tmp_path / "views", "train", "cpu", progress=False)
    model = build_model(config, run.method, run.num_labels, run.device)
    encoders = {m: model.encoders[m].eval() for m in ("video", "audio")}
    rows = list(run.train_set.rows)
    averaged = _averaged_views(encoders, rows, run, iteration=5)
    assert sorted(averaged.rows.tolist()) == sorted(rows)
    one = dataclasses.replace(run, config=tiny_config("xdc", data__augment="strong_hue"))
    one.view_set = run.view_set
    first = _averaged_views(encoders, rows, one, iteration=5)
    assert first.features["video"].shape == averaged.features["video"].shape
    assert not torch.allclose(first.features["video"], averaged.features["video"])
    pretrain(config, demo_manifest, tmp_path / "run", progress=False)
    assert [r for r in read_metrics(tmp_path / "run") if r.get("event") == "cluster"]
    with pytest.raises(ConfigError, match="cluster.views"):
        tiny_config("xdc", cluster__views=0)


def test_a_run_made_before_a_config_key_existed_resumes(
    demo_manifest: Path, tmp_path: Path
) -> None:
    """A saved config.json without a key added later (here cluster.views) reads as the default."""
    out = tmp_path / "run"
    pretrain(tiny_config("sdc"), demo_manifest, out, progress=False)
    saved = json.loads((out / "config.json").read_text())
    del saved["cluster"]["views"]
    (out / "config.json").write_text(json.dumps(saved))
    pretrain(tiny_config("sdc"), demo_manifest, out, progress=False)  # finished: says so
    with pytest.raises(ConfigError, match="cluster.views"):
        pretrain(tiny_config("sdc", cluster__views=2), demo_manifest, out, progress=False)


def test_patience_without_held_out_videos_is_refused_naming_both_keys(
    demo_manifest: Path, tmp_path: Path
) -> None:
    """train.patience ends an iteration when the held-out loss stops improving: with no held-out
    video that loss is NaN and every iteration would end after `patience` epochs."""
    with pytest.raises(ConfigError) as err:
        tiny_config("xdc", train__val_fraction=0.0, train__patience=2)
    assert "train.patience" in str(err.value) and "train.val_fraction" in str(err.value)
    # A fraction that holds out no video of this data: refused before any work.
    out = tmp_path / "run"
    config = tiny_config("xdc", train__val_fraction=0.01, train__patience=2)
    with pytest.raises(ConfigError, match=r"train.val_fraction=0.01 holds out none of the 15"):
        pretrain(config, demo_manifest, out, progress=False)
    assert not out.exists()
    # No held-out set and no patience: every iteration runs max_epochs.
    config = tiny_config("xdc", train__val_fraction=0.0, train__patience=0, train__max_epochs=2)
    state = pretrain(config, demo_manifest, out, progress=False)
    assert [(r["iteration"], r["epoch"]) for r in state.history] == [(0, 0), (0, 1)]


def test_bf16_only_on_gpus_that_run_it_natively() -> None:
    """V100 (7.0) and T4 (7.5) report bf16 support by emulation, without bf16 3D convolutions:
    they train in fp16 with a grad scaler; A100 (8.0), H100 (9.0) and later in bf16."""
    assert optim.autocast_dtype("cuda", (7, 0)) == torch.float16
    assert optim.autocast_dtype("cuda", (7, 5)) == torch.float16
    assert optim.autocast_dtype("cuda", (8, 0)) == torch.bfloat16
    assert optim.autocast_dtype("cuda", (9, 0)) == torch.bfloat16
    assert optim.autocast_dtype("cpu", None) is None
    assert optim.amp_dtype(torch.device("cpu"), enabled=True) is None


def test_a_grad_scaler_state_loads_whichever_precision_saved_it() -> None:
    """A run saved in bf16/fp32 (a disabled scaler: ``{}``) resumes where fp16 is on, and back."""
    saved_disabled = optim.grad_scaler(None).state_dict()
    assert saved_disabled == {}
    fp16 = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    with pytest.raises(RuntimeError):  # what torch does alone
        fp16.load_state_dict(saved_disabled)
    optim.load_scaler_state(fp16, saved_disabled)
    assert fp16.is_enabled() and fp16.get_scale() == 2.0**8  # starts afresh
    optim.load_scaler_state(optim.grad_scaler(None), fp16.state_dict())  # ignored
    resumed = torch.amp.GradScaler("cpu", init_scale=4.0)
    optim.load_scaler_state(resumed, fp16.state_dict())
    assert resumed.get_scale() == 2.0**8


def test_cudnn_autotunes_on_cuda_unless_deterministic() -> None:
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert use_cudnn_benchmark(cuda, deterministic=False)
    assert not use_cudnn_benchmark(cuda, deterministic=True)
    assert not use_cudnn_benchmark(cpu, deterministic=False)
    before = torch.backends.cudnn.benchmark
    with deterministic_algorithms(False, cuda):
        assert torch.backends.cudnn.benchmark
    assert torch.backends.cudnn.benchmark == before


def test_train_compile_compiles_the_training_model_only(
    demo_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``train.compile=true`` hands the training model to ``torch.compile`` (stood in for here:
    compiling takes minutes on a CPU) and trains through what it returns; checkpoints hold the
    plain model's weights. Off by default."""
    assert not tiny_config("xdc").train.compile
    compiled: list[torch.nn.Module] = []

    def compile_stand_in(model: torch.nn.Module) -> torch.nn.Module:
        compiled.append(model)
        return model

    monkeypatch.setattr(torch, "compile", compile_stand_in)
    out = tmp_path / "run"
    pretrain(tiny_config("xdc", train__compile=True), demo_manifest, out, progress=False)
    assert len(compiled) == 1 and isinstance(compiled[0], DeepClusteringModel)
    assert read_metrics(out, "finished")
    assert not any(k.startswith("_orig_mod") for k in load_checkpoint(out)["encoders"]["video"])


def test_gpu_benchmark_runs_on_a_cpu(demo_manifest: Path) -> None:
    """benchmarks/gpu.py with its smallest settings (on a CPU it measures the tiny preset)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"
    args = ["--batch-size", "4", "--steps", "2", "--warmup", "1", "--workers", "1"]
    args += ["--loader-clips", "12", "--data", str(demo_manifest)]
    # heads of different K (k_audio): each head's targets are drawn from its own K
    args += ["--set", "model.video_width=4", "model.audio_width=4", "cluster.k_audio=5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr
    lines = dict(line.rsplit("  ", 1) for line in done.stdout.splitlines() if "  " in line)
    values = {k.strip(): v.strip() for k, v in lines.items()}
    assert (
        float(values["training clips/s"]) > 0 and float(values["loader clips/s per CPU core"]) > 0
    )
    assert float(values["GFLOPs per clip (fwd+bwd)"]) > 0
    assert values["MFU"].startswith("n/a"), "no peak is known for a CPU"


def test_gpu_benchmark_knows_a_peak_by_whole_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """MFU's peak: "L4" is not read in "L40", "A10" not in "A10G" or "A100"."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"
    monkeypatch.syspath_prepend(str(script.parent))  # as when run: its folder is on the path
    spec = importlib.util.spec_from_file_location("xdc_gpu_benchmark", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    peaks = {
        "NVIDIA A100-SXM4-80GB": 312.0,
        "NVIDIA H100 PCIe": 756.0,
        "NVIDIA H100 80GB HBM3": 989.0,
        "NVIDIA L40": 181.0,
        "NVIDIA L40S": 362.0,
        "NVIDIA L4": 121.0,
        "NVIDIA A10": 125.0,
        "NVIDIA A10G": None,
        "Tesla T4": 65.0,
    }
    assert {name: module.peak_for_name(name) for name in peaks} == peaks


def test_features_clustered_from_disk_give_the_memory_run_labels(
    demo_manifest: Path, tiny_run: Path, tmp_path: Path
) -> None:
    """cluster.feature_store=disk: float16 memmaps in RUN/features/, streamed through PCA and
    k-means, removed after clustering; the pseudo-labels are those of the float32 in-RAM run."""
    out = tmp_path / "run"
    pretrain(tiny_config("xdc", cluster__feature_store="disk"), demo_manifest, out, progress=False)
    on_disk, in_ram = load_checkpoint(out)["loop"], load_checkpoint(tiny_run)["loop"]
    for name in ("video", "audio"):
        a, b = on_disk["labels"][name].numpy(), in_ram["labels"][name].numpy()
        assert adjusted_rand_score(a, b) == 1.0, f"{name} clusters differ"
    assert (out / "features").is_dir() and not any((out / "features").iterdir())
    with pytest.raises(ConfigError, match="cluster.feature_store"):
        tiny_config("xdc", cluster__feature_store="disk", cluster__views=2)


def test_mixup_blends_the_chosen_modality_and_its_labels(
    demo_manifest: Path, tmp_path: Path
) -> None:
    """train.mixup: the video encoder sees λ·x + (1−λ)·x[partner] of real decoded clips, the audio
    encoder its clips unchanged (mixup_on=video), and the loss is λ of each video head's
    cross-entropy on the clip's label plus 1−λ on the partner's; the plan is the step's own
    stream (the same again for the same step, another for the next), and off without mixup."""
    from xdc.data.datasets import epoch_keys
    from xdc.models.video import normalize_video
    from xdc.run import open_run
    from xdc.training import build_model, mixup_plan, train_step

    config = tiny_config("xdc", train__mixup=0.4, train__batch_size=6)
    run = open_run(config, demo_manifest, tmp_path / "mix", "train", "cpu", progress=False)
    model = build_model(config, run.method, run.num_labels, run.device)
    rows = np.asarray(run.train_set.rows)
    loader = run.loader(run.train_set, [])
    loader.set_keys(epoch_keys(rows, 6, np.random.default_rng(0), None))
    batch = next(iter(loader))
    n = len(batch["index"])
    labels = {c.name: torch.arange(len(run.train_set)) % 3 for c in run.method.clusterings}

    plan = mixup_plan(config.train, n, 1, 2, 3)
    assert plan is not None
    partner, share = plan
    assert sorted(partner.tolist()) == list(range(n)) and partner.tolist() != list(range(n))
    assert 0 < share["video"] < 1 and share["audio"] == 1.0
    again = mixup_plan(config.train, n, 1, 2, 3)
    assert again is not None and torch.equal(again[0], partner) and again[1] == share
    other = mixup_plan(config.train, n, 1, 2, 4)
    assert other is not None and other[1]["video"] != share["video"]
    assert mixup_plan(tiny_config("xdc").train, n, 1, 2, 3) is None

    seen: dict[str, object] = {}
    for m in ("video", "audio"):
        model.encoders[m].register_forward_pre_hook(
            lambda _mod, args, m=m: seen.update({m: args[0].detach().clone()})
        )
    model.register_forward_hook(lambda _mod, _args, out: seen.update(logits=out))
    lam = share["video"]
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss, _, size = train_step(model, batch, labels, optimizer, scaler, run, plan)
    assert size == n
    video, audio = batch["video"], batch["audio"]
    video = normalize_video(video)  # blended in the encoder's float input, not in uint8
    assert torch.allclose(seen["video"], lam * video + (1 - lam) * video[partner], atol=1e-5)
    assert torch.equal(seen["audio"], audio)
    # the loss from the logits of the mixed clips
    logits, ce = seen["logits"], torch.nn.functional.cross_entropy
    y = {c: labels[c][batch["index"]] for c in labels}
    expected = 0.0
    with torch.no_grad():
        for e, c in run.method.heads():
            out = logits[run.method.head_name(e, c)].float()
            if e == "video":
                expected += lam * ce(out, y[c]) + (1 - lam) * ce(out, y[c][partner])
            else:
                expected += ce(out, y[c])
    assert float(loss) == pytest.approx(float(expected), rel=1e-4)
    with pytest.raises(ConfigError, match=r"train\.mixup"):
        tiny_config("xdc", train__mixup=-1.0)
    with pytest.raises(ConfigError, match=r"train\.mixup_on"):
        tiny_config("xdc", train__mixup_on="frames")
