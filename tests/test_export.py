"""``xdc export`` and ``hubconf.py`` on a real (tiny) run: the files, the sidecar, features
reproduced in fresh processes that import only torch (TorchScript) or torch, safetensors and xdc's
builder (safetensors), ONNX through onnxruntime when installed, and ``torch.hub.load`` of a
checkout on small weight files made here."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from xdc import cli
from xdc.checkpoint import CHECKPOINT_NAME
from xdc.config import config_from_dict
from xdc.data.datasets import fixed_keys
from xdc.data.manifest import read_manifest
from xdc.errors import CheckpointError
from xdc.evaluation.encoders import run_config
from xdc.evaluation.extract import EvalClips
from xdc.export import load_export
from xdc.models import R2Plus1D18, build_video_encoder

ROOT = Path(__file__).resolve().parents[1]
CLIPS = 2


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def exported(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run exported in every format, through the real CLI."""
    out = tmp_path_factory.mktemp("export")
    assert cli.main(["export", str(tiny_run), "--to", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def run_features(
    tiny_run: Path, demo_manifest: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The run's clip features (``xdc extract --keep-clips``) of the test videos, and the clips
    they came from, saved as tensors for processes that have no xdc."""
    out = tmp_path_factory.mktemp("features")
    saved: dict[str, torch.Tensor] = {}
    manifest = read_manifest(demo_manifest)
    rows = [i for i, r in enumerate(manifest.rows) if r["split"] == "test"]
    for modality in ("video", "audio"):
        npz = out / f"{modality}.npz"
        argv = f"extract --checkpoint {tiny_run} --data {demo_manifest} --split test "
        argv += f"--modality {modality} --clips {CLIPS} --keep-clips --no-progress -o {npz}"
        assert cli.main(argv.split()) == 0
        saved[f"{modality}_features"] = torch.from_numpy(np.load(npz)["features"])
        reader = EvalClips(manifest, run_config(tiny_run).data, (modality,), 4)
        batches = reader.loader(modality, fixed_keys(rows, CLIPS))
        saved[f"{modality}_input"] = torch.cat([b[modality] for b in batches])
    torch.save(saved, out / "clips.pt")
    return out / "clips.pt"


def fresh_python(code: str) -> dict:
    """Run ``code`` in a new interpreter (one thread) and return the JSON it prints last."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_export_writes_each_encoder_in_three_formats_with_a_sidecar(
    exported: Path, tiny_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = run_config(tiny_run)
    for modality in ("video", "audio"):
        sidecar = json.loads((exported / f"{modality}.json").read_text())
        files = sidecar["files"]
        assert sorted(files) == ["onnx", "safetensors", "torchscript"]
        for fmt, check in files.items():
            if fmt == "onnx" and check["skipped"]:
                assert "pip install onnx" in check["skipped"]
                continue
            assert check["sha256"] == sha256(exported / check["file"])
            if check["max_abs_diff"] is not None:  # ONNX without onnxruntime: not compared
                assert 0 <= check["max_abs_diff"] <= 1e-4
            assert check["input"].startswith("random")
        assert sidecar["source"]["sha256"] == sha256(tiny_run / CHECKPOINT_NAME)
        assert config_from_dict(sidecar["config"]) == config
        assert sidecar["xdc_version"] and sidecar["torch_version"] == torch.__version__
    video = json.loads((exported / "video.json").read_text())
    assert video["architecture"] == config.model.video == "mixed2d3d"
    assert video["model_config"]["width"] == config.model.video_width
    contract = video["input"]
    d = config.data
    assert contract["shape"] == ["batch", 3, d.num_frames, d.crop_size, d.crop_size]
    assert (contract["dtype"], contract["fps"]) == ("uint8", d.fps)
    assert contract["clip_seconds"] == pytest.approx(d.num_frames / d.fps)
    assert contract["normalisation"]["mean"] == pytest.approx([0.43216, 0.394666, 0.37645])
    log_mel = json.loads((exported / "audio.json").read_text())["input"]["log_mel"]
    assert (log_mel["sample_rate"], log_mel["n_mels"]) == (d.sample_rate, d.n_mels)
    assert (log_mel["win_length"], log_mel["hop_length"]) == (256, 160)  # 16 ms, 10 ms at 16 kHz


def test_torchscript_alone_reproduces_the_run_features_in_a_torch_only_process(
    exported: Path, run_features: Path
) -> None:
    result = fresh_python(
        f"""
        import json, sys, torch
        saved = torch.load({str(run_features)!r})
        diffs = {{}}
        for m in ("video", "audio"):
            model = torch.jit.load({str(exported)!r} + f"/{{m}}.torchscript.pt")
            with torch.no_grad():
                features = model(saved[m + "_input"])
            diffs[m] = float((features - saved[m + "_features"]).abs().max())
        try:
            model(saved["video_input"])  # the audio file refuses a clip
            refused = ""
        except Exception as err:
            refused = str(err)
        others = sorted(n for n in sys.modules if n.split(".")[0] in ("xdc", "safetensors", "av"))
        print(json.dumps({{"diffs": diffs, "others": others, "refused": refused}}))
        """
    )
    assert result["others"] == []
    assert all(d <= 1e-4 for d in result["diffs"].values()), result["diffs"]
    assert (
        "expected a float32 tensor of shape (batch, 1, 40, 48), got another dtype"
        in (result["refused"])
    )


def test_safetensors_load_into_xdcs_builder_in_a_fresh_process(
    exported: Path, run_features: Path
) -> None:
    result = fresh_python(
        f"""
        import json, sys, torch
        from safetensors.torch import load_file
        from xdc.models import build_audio_encoder, build_video_encoder
        saved = torch.load({str(run_features)!r})
        diffs = {{}}
        for m, build in (("video", build_video_encoder), ("audio", build_audio_encoder)):
            sidecar = json.load(open({str(exported)!r} + f"/{{m}}.json"))
            model = build(sidecar["architecture"], **sidecar["model_config"]).eval()
            model.load_state_dict(load_file({str(exported)!r} + f"/{{m}}.safetensors"))
            with torch.no_grad():
                diffs[m] = float((model(saved[m + "_input"]) - saved[m + "_features"]).abs().max())
        print(json.dumps({{"diffs": diffs, "data": "xdc.data" in sys.modules}}))
        """
    )
    # ``xdc extract`` runs the run's 2D convolutions in channels_last (``train.channels_last``),
    # the fresh model in the default layout: the same weights, features equal to float rounding.
    assert all(d <= 1e-5 for d in result["diffs"].values()), result["diffs"]
    assert not result["data"]  # the weights need the model code only


def test_onnx_reproduces_the_run_features_in_onnxruntime(
    exported: Path, run_features: Path
) -> None:
    pytest.importorskip("onnxruntime")
    result = fresh_python(
        f"""
        import json, numpy as np, onnxruntime, torch
        saved = torch.load({str(run_features)!r})
        diffs = {{}}
        for m in ("video", "audio"):
            session = onnxruntime.InferenceSession({str(exported)!r} + f"/{{m}}.onnx",
                                                   providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            (features,) = session.run(None, {{name: saved[m + "_input"].numpy()}})
            diffs[m] = float(np.abs(features - saved[m + "_features"].numpy()).max())
        print(json.dumps(diffs))
        """
    )
    assert all(d <= 1e-4 for d in result.values()), result


def test_an_export_folder_loads_back_as_the_runs_encoders(exported: Path, tiny_run: Path) -> None:
    from xdc.encoders import load_encoders

    original, config, _ = load_encoders(tiny_run)
    loaded, loaded_config = load_export(exported)
    assert loaded_config == config
    for m in ("video", "audio"):
        a, b = original[m].state_dict(), loaded[m].state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_export_refuses_unknown_formats_and_missing_runs(
    tmp_path: Path, tiny_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["export", str(tiny_run), "--to", str(tmp_path), "--formats", "tflite"]) == 2
    assert "--formats tflite: choose from safetensors,torchscript,onnx" in capsys.readouterr().err
    assert cli.main(["export", str(tmp_path / "nope"), "--to", str(tmp_path)]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# ---- torch.hub ---------------------------------------------------------------------------------


def released_style_file(folder: Path, stem: str = "tiny_r2plus1d_18") -> tuple[Path, R2Plus1D18]:
    """A narrow R(2+1)D-18 saved as the XDC release saves its weights (a plain state dict), named
    ``<stem>-<sha256 prefix>.pth`` as torch.hub names files."""
    model = R2Plus1D18(width=4, bn_eps=1e-3).eval()
    with torch.no_grad():  # stored statistics that are not the identity
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    tmp = folder / "weights.pth"
    torch.save(model.state_dict(), tmp)
    return tmp.rename(folder / f"{stem}-{sha256(tmp)[:8]}.pth"), model


def hub_load(entry: str, **kwargs: object) -> torch.nn.Module:
    return torch.hub.load(str(ROOT), entry, source="local", **kwargs)


def test_hub_loads_a_released_style_file_hash_checked(tmp_path: Path) -> None:
    path, original = released_style_file(tmp_path)
    model = hub_load("xdc_r2plus1d_18", weights=str(path))
    clip = torch.randint(0, 256, (2, 3, 4, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(model(clip), original(clip))
    assert not model.training and model.width == 4
    altered = path.with_name("tiny_r2plus1d_18-00000000.pth")
    path.rename(altered)
    with pytest.raises(CheckpointError, match="sha256 is .* but the name expects"):
        hub_load("xdc_r2plus1d_18", weights=str(altered))


def test_hub_reads_released_names_from_its_cache_and_downloads_nothing(tmp_path: Path) -> None:
    before = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        with pytest.raises(CheckpointError, match="not in torch.hub's cache .*downloads nothing"):
            hub_load("xdc_r2plus1d_18", weights="r2plus1d_18_xdc_ig65m_kinetics")
        (tmp_path / "checkpoints").mkdir()
        path, _ = released_style_file(tmp_path / "checkpoints")
        path.rename(path.with_name("r2plus1d_18_xdc_ig65m_kinetics-f24f6ffb.pth"))
        with pytest.raises(CheckpointError, match="expects a digest starting with f24f6ffb"):
            hub_load("xdc_r2plus1d_18", weights="r2plus1d_18_xdc_ig65m_kinetics")
    finally:
        torch.hub.set_dir(before)


def test_hub_loads_an_export_and_a_run_and_names_the_right_entry_point(
    exported: Path, tiny_run: Path
) -> None:
    from xdc.encoders import load_encoders

    original, _, _ = load_encoders(tiny_run)
    video = hub_load("xdc_mixed2d3d", weights=str(exported / "video.safetensors"))
    audio = hub_load("xdc_audio_resnet18", weights=str(tiny_run))
    clip = torch.randint(0, 256, (2, 3, 4, 32, 32), dtype=torch.uint8)
    log_mel = torch.randn(2, 1, 40, 48)
    with torch.no_grad():
        assert torch.equal(video(clip), original["video"](clip))
        assert torch.equal(audio(log_mel), original["audio"](log_mel))
    with pytest.raises(CheckpointError, match="holds a mixed2d3d encoder.*xdc_mixed2d3d"):
        hub_load("xdc_r2plus1d_18", weights=str(exported))


def test_hub_refuses_an_export_whose_weights_changed(exported: Path, tmp_path: Path) -> None:
    copy = tmp_path / "export"
    copy.mkdir()
    for name in ("video.json", "video.safetensors"):
        (copy / name).write_bytes((exported / name).read_bytes())
    weights = copy / "video.safetensors"
    other = build_video_encoder("mixed2d3d", width=4, video_input="rgb_diff")
    from safetensors.torch import save_file

    save_file(other.state_dict(), str(weights))
    with pytest.raises(CheckpointError, match="sha256 is .* but video.json recorded"):
        hub_load("xdc_mixed2d3d", weights=str(copy))
