"""Loading released weights: the documented key layout, both conventions, hashes, safety, errors.

The state dicts here are built from the released layout (VideoResNet keys, both mid-channel rules),
not from the model code, so that a drift of the model away from that layout fails these tests.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import pytest
import torch
from torch import Tensor

from xdc.errors import CheckpointError
from xdc.models import (
    R2Plus1D18,
    detect_mid_rule,
    load_encoder_state,
    load_pretrained_video,
    load_weights_file,
)
from xdc.models.weights import expected_hash_prefix

# ---- the released layout, written from the documented rules -------------------------------------


def documented_mid(in_planes: int, out_planes: int) -> int:
    return (in_planes * out_planes * 27) // (in_planes * 9 + 3 * out_planes)


def add_batchnorm(shapes: dict[str, tuple[int, ...]], prefix: str, channels: int) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{prefix}.{name}"] = (channels,)
    shapes[f"{prefix}.num_batches_tracked"] = ()


def released_layout(
    rule: str, width: int = 64, num_classes: int | None = None
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an R(2+1)D-18 state dict in VideoResNet naming."""
    shapes: dict[str, tuple[int, ...]] = {}
    stem_mid = max(1, 45 * width // 64)
    shapes["stem.0.weight"] = (stem_mid, 3, 1, 7, 7)
    add_batchnorm(shapes, "stem.1", stem_mid)
    shapes["stem.3.weight"] = (width, stem_mid, 3, 1, 1)
    add_batchnorm(shapes, "stem.4", width)
    in_planes = width
    for stage, planes in enumerate([width, 2 * width, 4 * width, 8 * width], start=1):
        for block in (0, 1):
            block_in = in_planes if block == 0 else planes
            mid1 = documented_mid(block_in, planes)
            mid2 = documented_mid(planes, planes) if rule == "xdc" else mid1
            for conv, conv_in, mid in (("conv1", block_in, mid1), ("conv2", planes, mid2)):
                prefix = f"layer{stage}.{block}.{conv}"
                shapes[f"{prefix}.0.0.weight"] = (mid, conv_in, 1, 3, 3)
                add_batchnorm(shapes, f"{prefix}.0.1", mid)
                shapes[f"{prefix}.0.3.weight"] = (planes, mid, 3, 1, 1)
                add_batchnorm(shapes, f"{prefix}.1", planes)
            if block == 0 and stage > 1:
                shapes[f"layer{stage}.0.downsample.0.weight"] = (planes, block_in, 1, 1, 1)
                add_batchnorm(shapes, f"layer{stage}.0.downsample.1", planes)
        in_planes = planes
    if num_classes is not None:
        shapes["fc.weight"] = (num_classes, 8 * width)
        shapes["fc.bias"] = (num_classes,)
    return shapes


def is_buffer(key: str) -> bool:
    return key.endswith(("running_mean", "running_var", "num_batches_tracked"))


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 1) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, Tensor] = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(12345, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[key] = torch.randn(shape, generator=generator)
    return state


def save_with_hash_name(obj: object, folder: Path, stem: str) -> Path:
    """Save like a torch.hub release: ``<stem>-<first 8 hex of sha256>.pth``."""
    plain = folder / f"{stem}.pth"
    torch.save(obj, plain)
    digest = hashlib.sha256(plain.read_bytes()).hexdigest()
    return plain.rename(folder / f"{stem}-{digest[:8]}.pth")


SPOT_CHECK_KEYS = [
    "stem.0.weight",
    "layer2.0.conv2.0.0.weight",
    "layer3.0.downsample.0.weight",
    "layer4.1.conv2.1.running_var",
    "layer4.1.conv1.0.1.bias",
]


# ---- the documented layout itself ----------------------------------------------------------------


def test_documented_layout_has_the_documented_parameter_counts() -> None:
    def parameters(shapes: dict[str, tuple[int, ...]]) -> int:
        return sum(torch.Size(shape).numel() for key, shape in shapes.items() if not is_buffer(key))

    assert parameters(released_layout("xdc")) == 33_165_639
    assert parameters(released_layout("xdc", num_classes=400)) == 33_370_839
    assert parameters(released_layout("torchvision", num_classes=400)) == 31_505_325


@pytest.mark.parametrize("rule", ["xdc", "torchvision"])
@pytest.mark.parametrize("width", [64, 8, 12])
def test_model_state_dict_has_exactly_the_documented_keys_and_shapes(rule, width) -> None:
    model = R2Plus1D18(mid_rule=rule, width=width)
    model_shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert model_shapes == released_layout(rule, width)


# ---- loading files in the released layouts -------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "width", "num_classes"),
    [("xdc", 64, None), ("xdc", 64, 400), ("torchvision", 64, 400), ("xdc", 16, 7)],
)
def test_released_file_loads_strictly_and_values_land(tmp_path, rule, width, num_classes) -> None:
    state = random_state(released_layout(rule, width, num_classes))
    path = save_with_hash_name(state, tmp_path, f"r2plus1d_18_{rule}_test")

    model, report = load_pretrained_video(path)

    assert model.mid_rule == rule and model.width == width
    assert model.stem[1].eps == (1e-3 if rule == "xdc" else 1e-5)
    assert report.missing == [] and report.unexpected == []
    assert report.ignored == ([] if num_classes is None else ["fc.bias", "fc.weight"])
    loaded = model.state_dict()
    for key in SPOT_CHECK_KEYS:
        assert torch.equal(loaded[key], state[key]), key
    assert sum(p.numel() for p in model.parameters()) == sum(
        value.numel() for key, value in state.items() if not is_buffer(key) and "fc." not in key
    )


def test_legacy_serialisation_of_pytorch_1_4_loads(tmp_path) -> None:
    # The release's environment pins PyTorch 1.4, which wrote the pre-zip pickle format.
    state = random_state(released_layout("xdc", 8))
    plain = tmp_path / "legacy.pth"
    torch.save(state, plain, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(plain)
    digest = hashlib.sha256(plain.read_bytes()).hexdigest()
    path = plain.rename(tmp_path / f"legacy-{digest[:8]}.pth")
    model, report = load_pretrained_video(path)
    assert report.missing == [] and report.ignored == []
    assert torch.equal(
        model.state_dict()["layer2.0.conv2.0.0.weight"], state["layer2.0.conv2.0.0.weight"]
    )


@pytest.mark.parametrize("rule", ["xdc", "torchvision"])
@pytest.mark.parametrize("width", [64, 16, 8])
def test_detect_mid_rule_reads_the_layout(rule, width) -> None:
    assert detect_mid_rule(random_state(released_layout(rule, width))) == rule


def test_detect_mid_rule_rejects_a_dict_that_is_not_r2plus1d() -> None:
    with pytest.raises(CheckpointError, match="layer2.0.conv2.0.0.weight"):
        detect_mid_rule({"conv1.weight": torch.zeros(64, 3, 7, 7)})


def test_explicit_wrong_mid_rule_fails_with_a_hint(tmp_path) -> None:
    path = save_with_hash_name(random_state(released_layout("torchvision", 8)), tmp_path, "tv")
    with pytest.raises(CheckpointError, match="layer2.0.conv2.0.0.weight") as error:
        load_pretrained_video(path, mid_rule="xdc")
    assert "mid-channel convention" in str(error.value)


def test_xdc_weights_do_not_fit_the_torchvision_convention() -> None:
    state = random_state(released_layout("xdc", 8))
    with pytest.raises(CheckpointError, match=r"layer2\.0\.conv2\.0\.0\.weight: file \(36, 16"):
        load_encoder_state(R2Plus1D18(mid_rule="torchvision", width=8), state)


# ---- hashes, wrappers, prefixes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "prefix"),
    [
        ("r2plus1d_18_xdc_ig65m_kinetics-f24f6ffb.pth", "f24f6ffb"),
        ("r2plus1d_18_xdc_ig65m_random-189d23f4.pth", "189d23f4"),
        ("r2plus1d_18_xdc_audioset-f29ffe8f.pth", "f29ffe8f"),
        ("r2plus1d_18_fs_kinetics-622bdad9.pth", "622bdad9"),
        ("r2plus1d_18_fs_imagenet-ff446670.pth", "ff446670"),
        ("encoder.pth", None),
        ("video-encoder-final.pth", None),
    ],
)
def test_hash_prefix_is_read_from_torch_hub_style_names(name, prefix) -> None:
    assert expected_hash_prefix(name) == prefix


def test_tampered_file_is_rejected_by_the_hash_check(tmp_path) -> None:
    path = save_with_hash_name(random_state(released_layout("xdc", 8)), tmp_path, "xdc_small")
    assert set(load_weights_file(path)) == set(released_layout("xdc", 8))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    actual = hashlib.sha256(bytes(data)).hexdigest()

    with pytest.raises(CheckpointError) as error:
        load_weights_file(path)
    message = str(error.value)
    prefix = expected_hash_prefix(path)
    assert prefix is not None and not actual.startswith(prefix)
    assert path.name in message and prefix in message and actual in message


def test_a_name_without_hash_loads_without_check(tmp_path) -> None:
    path = tmp_path / "encoder.pth"
    torch.save(random_state(released_layout("xdc", 4)), path)
    model, report = load_pretrained_video(path)
    assert model.width == 4 and report.ignored == []


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_wrapped_and_ddp_prefixed_state_dicts_load(tmp_path, wrapper) -> None:
    state = random_state(released_layout("xdc", 8, num_classes=5))
    ddp_state = {f"module.{key}": value for key, value in state.items()}
    path = tmp_path / "ddp_checkpoint.pth"
    torch.save({wrapper: ddp_state, "epoch": 3}, path)

    model, report = load_pretrained_video(path)

    assert report.ignored == ["fc.bias", "fc.weight"]
    for key in SPOT_CHECK_KEYS:
        assert torch.equal(model.state_dict()[key], state[key])


# ---- strictness: every other key must match -----------------------------------------------------


def test_missing_key_raises_naming_it() -> None:
    state = random_state(released_layout("xdc", 8))
    del state["layer3.1.conv1.0.3.weight"]
    with pytest.raises(CheckpointError, match=r"missing keys 'layer3\.1\.conv1\.0\.3\.weight'"):
        load_encoder_state(R2Plus1D18(width=8), state)


def test_unexpected_key_raises_naming_it() -> None:
    state = random_state(released_layout("xdc", 8))
    state["layer5.0.conv1.0.0.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"unexpected keys 'layer5\.0\.conv1\.0\.0\.weight'"):
        load_encoder_state(R2Plus1D18(width=8), state)


def test_shape_mismatch_raises_naming_key_and_both_shapes() -> None:
    state = random_state(released_layout("xdc", 8))
    state["stem.3.weight"] = torch.zeros(8, 5, 3, 3, 3)
    with pytest.raises(CheckpointError) as error:
        load_encoder_state(R2Plus1D18(width=8), state)
    assert "stem.3.weight: file (8, 5, 3, 3, 3) vs model (8, 5, 3, 1, 1)" in str(error.value)


def test_many_missing_keys_are_summarised_with_a_count() -> None:
    state = random_state(released_layout("xdc", 8))
    layer4 = [key for key in state if key.startswith("layer4.")]
    for key in layer4:
        del state[key]
    counted = [key for key in layer4 if not key.endswith("num_batches_tracked")]
    with pytest.raises(CheckpointError, match=rf"\({len(counted)} in all\)"):
        load_encoder_state(R2Plus1D18(width=8), state)


def test_non_strict_load_reports_instead_of_raising() -> None:
    state = random_state(released_layout("xdc", 8))
    del state["layer1.0.conv1.1.bias"]
    state["extra.weight"] = torch.zeros(2)
    report = load_encoder_state(R2Plus1D18(width=8), state, strict=False)
    assert report.missing == ["layer1.0.conv1.1.bias"]
    assert report.unexpected == ["extra.weight"]


def test_missing_batch_counters_are_tolerated_and_reported() -> None:
    # Files converted from Caffe2 may lack num_batches_tracked; they only count batches.
    state = {
        key: value
        for key, value in random_state(released_layout("xdc", 8)).items()
        if not key.endswith("num_batches_tracked")
    }
    report = load_encoder_state(R2Plus1D18(width=8), state)
    assert report.missing and all(key.endswith("num_batches_tracked") for key in report.missing)


def test_model_with_its_own_fc_keeps_it_and_reports_it_missing() -> None:
    class WithHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = R2Plus1D18(width=4)
            self.fc = torch.nn.Linear(32, 3)

    model = WithHead()
    state = {f"encoder.{k}": v for k, v in random_state(released_layout("xdc", 4, 400)).items()}
    state["fc.weight"], state["fc.bias"] = (
        state.pop("encoder.fc.weight"),
        state.pop("encoder.fc.bias"),
    )
    fc_before = model.fc.weight.clone()
    report = load_encoder_state(model, state)
    assert report.missing == ["fc.bias", "fc.weight"] and report.ignored == ["fc.bias", "fc.weight"]
    assert torch.equal(model.fc.weight, fc_before)


# ---- safety: no pickled code runs ----------------------------------------------------------------


class MakesDirectoryWhenUnpickled:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.target),))


def test_pickled_custom_object_is_rejected_without_running_it(tmp_path) -> None:
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    state = random_state(released_layout("xdc", 4))
    torch.save({"state_dict": state, "payload": MakesDirectoryWhenUnpickled(marker)}, path)

    with pytest.raises(CheckpointError, match="not a safe weight file"):
        load_weights_file(path)
    assert not marker.exists()
    # The payload is live: an unsafe load does run it, so the check above could have failed.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_file_of_plain_objects_is_rejected(tmp_path) -> None:
    path = tmp_path / "notes.pth"
    torch.save({"epoch": 3, "notes": ["not", "weights"]}, path)
    with pytest.raises(CheckpointError, match="holds no state dict"):
        load_weights_file(path)


def test_missing_and_garbage_files_are_rejected(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="no such weight file"):
        load_weights_file(tmp_path / "absent.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        load_weights_file(garbage)
