"""Loading weight files into encoders: safe unpickling, hash checks, strict loads that explain.

The released XDC video weights (github HumamAlwassel/XDC, file names like
``r2plus1d_18_xdc_ig65m_kinetics-f24f6ffb.pth``) are plain state dicts in torchvision's VideoResNet
key layout, without ``fc``, built with the "xdc" mid-channel rule and BatchNorm eps 1e-3. The
release itself loads them with ``strict=False``; here every key must match, except the
classifier keys, which are ignored and reported.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from xdc.errors import CheckpointError
from xdc.models.video import MidRule, R2Plus1D18, mid_channels

# torch.hub convention: "<name>-<first hex digits of the file's sha256>.<ext>".
_HASH_SUFFIX = re.compile(r"-([0-9a-f]{8,64})$")
_WRAPPER_KEYS = ("state_dict", "model")
_DDP_PREFIX = "module."
# Released BatchNorm eps per convention: XDC's Caffe2-trained nets use 1e-3, torchvision 1e-5.
_DEFAULT_BN_EPS: dict[str, float] = {"xdc": 1e-3, "torchvision": 1e-5}


@dataclass
class LoadReport:
    """What a load did not match one-to-one.

    Attributes:
        missing: model keys the file did not fill: keys under the ignored prefixes (e.g. a fresh
            ``fc`` of a model that has one), BatchNorm ``num_batches_tracked`` counters (absent
            from files converted from Caffe2; they only count batches), and, with
            ``strict=False`` only, any other missing key.
        unexpected: file keys the model has no place for (only ever non-empty with
            ``strict=False``; keys under ignored prefixes are listed in ``ignored`` instead).
        ignored: file keys under the ignored prefixes, not loaded (e.g. ``fc.weight``).
    """

    missing: list[str]
    unexpected: list[str]
    ignored: list[str]


def _preview(keys: Iterable[str], limit: int = 5) -> str:
    ordered = sorted(keys)
    shown = ", ".join(repr(key) for key in ordered[:limit])
    more = f", ... ({len(ordered)} in all)" if len(ordered) > limit else ""
    return shown + more


def state_dict_from(obj: object, source: str = "state dict") -> dict[str, Tensor]:
    """Return the tensor dict inside ``obj``: unwrap ``{"state_dict": ...}`` / ``{"model": ...}``
    and strip a leading ``module.`` (DDP) from every key.

    Raises CheckpointError, naming ``source``, when no dict of tensors is found.
    """
    for _ in range(3):  # a wrapper inside a wrapper at most, e.g. {"model": {"state_dict": ...}}
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")
        if obj and all(isinstance(value, Tensor) for value in obj.values()):
            break
        wrapper = next((key for key in _WRAPPER_KEYS if isinstance(obj.get(key), Mapping)), None)
        if wrapper is None:
            not_tensors = [str(key) for key, value in obj.items() if not isinstance(value, Tensor)]
            detail = f"non-tensor entries {_preview(not_tensors)}" if obj else "it is empty"
            raise CheckpointError(
                f"{source}: holds no state dict ({detail}); expected a dict of tensors, "
                f"or one under the key 'state_dict' or 'model'"
            )
        obj = obj[wrapper]
    else:
        raise CheckpointError(f"{source}: state dict nested too deeply under {_WRAPPER_KEYS}")
    result: dict[str, Tensor] = {}
    for key, tensor in obj.items():
        name = str(key)
        name = name[len(_DDP_PREFIX) :] if name.startswith(_DDP_PREFIX) else name
        if name in result:
            raise CheckpointError(f"{source}: key {name!r} appears with and without 'module.'")
        result[name] = tensor
    return result


def _shape(tensor: Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def _mismatch_hint(
    mismatched: list[str], shapes: list[tuple[tuple[int, ...], tuple[int, ...]]]
) -> str:
    """A likely cause for the mismatched keys; ``shapes``: (file, model) shape of each key."""
    if len(shapes) == 1 and _differ_in_input_channels(*shapes[0], {3, 6}):
        saved = "rgb_diff" if shapes[0][0][1] == 6 else "rgb"
        return (
            f" Only the first conv's input channels differ: the file was trained with "
            f"model.video_input={saved}; build the encoder with the same video input."
        )
    if any(".conv2.0." in key for key in mismatched):
        return (
            " The (2+1)D mid channels differ: the file uses the other mid-channel convention "
            "(build R2Plus1D18 with the other mid_rule, or use load_pretrained_video, which "
            "detects it)."
        )
    return " The file was saved from another architecture or width."


def _differ_in_input_channels(a: tuple[int, ...], b: tuple[int, ...], values: set[int]) -> bool:
    """Conv weights equal but for their input channels, which are ``values`` (e.g. {3, 6})."""
    return len(a) == len(b) >= 4 and a[:1] + a[2:] == b[:1] + b[2:] and {a[1], b[1]} == values


def load_encoder_state(
    model: nn.Module,
    state_dict: Mapping[str, object],
    ignore_prefixes: tuple[str, ...] = ("fc.",),
    *,
    strict: bool = True,
    source: str = "state dict",
) -> LoadReport:
    """Load ``state_dict`` into ``model``; every key must match except those under ``ignore_prefixes``.

    Accepts a plain state dict, one wrapped as ``{"state_dict": ...}`` or ``{"model": ...}``, and
    DDP's ``module.`` prefix. Keys under ``ignore_prefixes`` are never loaded, on either side.
    A shape mismatch always raises; missing or unexpected keys raise unless ``strict=False``,
    which lists them in the report instead. ``source`` names the file in error messages.

    Raises:
        CheckpointError: naming the offending keys (first few and their count) and shapes.
    """
    tensors = state_dict_from(state_dict, source)
    model_state = model.state_dict()

    def is_ignored(key: str) -> bool:
        return key.startswith(ignore_prefixes)

    ignored = sorted(key for key in tensors if is_ignored(key))
    file_keys = {key for key in tensors if not is_ignored(key)}
    model_keys = {key for key in model_state if not is_ignored(key)}
    missing = model_keys - file_keys
    tolerated = {key for key in missing if key.endswith("num_batches_tracked")}
    unexpected = file_keys - model_keys
    mismatched = sorted(
        key for key in file_keys & model_keys if _shape(tensors[key]) != _shape(model_state[key])
    )

    problems = []
    if mismatched:
        pairs = "; ".join(
            f"{key}: file {_shape(tensors[key])} vs model {_shape(model_state[key])}"
            for key in mismatched[:5]
        )
        more = f" ({len(mismatched)} in all)" if len(mismatched) > 5 else ""
        shapes = [(_shape(tensors[key]), _shape(model_state[key])) for key in mismatched]
        hint = _mismatch_hint(mismatched, shapes)
        problems.append(f"shape mismatch {pairs}{more}.{hint}")
    if strict and missing - tolerated:
        problems.append(f"missing keys {_preview(missing - tolerated)}")
    if strict and unexpected:
        problems.append(f"unexpected keys {_preview(unexpected)}")
    if problems:
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__}: " + " | ".join(problems)
        )

    to_load = {key: tensors[key] for key in file_keys & model_keys}
    model.load_state_dict(to_load, strict=False)
    return LoadReport(
        missing=sorted(missing | {key for key in model_state if is_ignored(key)}),
        unexpected=sorted(unexpected),
        ignored=ignored,
    )


def detect_mid_rule(state_dict: Mapping[str, object]) -> MidRule:
    """Tell the mid-channel convention of an R(2+1)D-18 state dict, at any width.

    Reads conv2 of the first block of stage 2: "xdc" recomputes its mid channels from
    (planes, planes) (288 at full width), "torchvision" reuses conv1's (in_planes, planes) (230).

    Raises:
        CheckpointError: if the keys are absent or the shape fits neither convention.
    """
    tensors = state_dict_from(state_dict)
    needed = ("layer2.0.conv1.0.0.weight", "layer2.0.conv2.0.0.weight", "layer2.0.conv2.0.3.weight")
    absent = [key for key in needed if key not in tensors]
    if absent:
        raise CheckpointError(
            f"not an R(2+1)D-18 state dict in VideoResNet layout: no {_preview(absent)}"
        )
    in_planes = tensors[needed[0]].shape[1]
    mid = tensors[needed[1]].shape[0]
    planes = tensors[needed[2]].shape[0]
    if mid == mid_channels(planes, planes):
        return "xdc"
    if mid == mid_channels(in_planes, planes):
        return "torchvision"
    raise CheckpointError(
        f"layer2.0.conv2 has {mid} mid channels for {in_planes}->{planes} planes: neither the xdc "
        f"rule ({mid_channels(planes, planes)}) nor the torchvision rule "
        f"({mid_channels(in_planes, planes)})"
    )


def expected_hash_prefix(path: str | Path) -> str | None:
    """The sha256 prefix a torch.hub-style name carries (``name-f24f6ffb.pth`` -> ``f24f6ffb``)."""
    match = _HASH_SUFFIX.search(Path(path).stem)
    return match.group(1) if match else None


def sha256_of_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def load_weights_file(path: str | Path, verify_hash: bool = True) -> dict[str, Tensor]:
    """Read a weight file safely and return its state dict (unwrapped, ``module.`` stripped).

    Uses ``torch.load(weights_only=True)``, so no pickled code runs: a file holding other objects
    is rejected. When the name carries a hash prefix (``name-<hex>.pth``, torch.hub's convention)
    and ``verify_hash`` is set, the file's sha256 must start with it. A name such as
    ``epoch-00000010.pth`` also looks like one: load it with ``verify_hash=False``.

    Raises:
        CheckpointError: missing file, hash mismatch, unsafe or unreadable content, no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weight file")
    prefix = expected_hash_prefix(path) if verify_hash else None
    if prefix is not None:
        actual = sha256_of_file(path)
        if not actual.startswith(prefix):
            raise CheckpointError(
                f"{path}: sha256 is {actual} but the name expects a digest starting with {prefix}; "
                f"the file is corrupt or was altered (download it again)"
            )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types here; all mean "not a safe weight file"
        hint = (
            " Caffe2 .pkl files are not supported: use the .pth release."
            if path.suffix == ".pkl"
            else ""
        )
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(
            f"{path}: not a safe weight file ({type(exc).__name__}: {first_line}). Only tensors "
            f"in plain containers are accepted (torch.load weights_only=True).{hint}"
        ) from exc
    return state_dict_from(obj, str(path))


def load_pretrained_video(
    path: str | Path,
    mid_rule: MidRule | None = None,
    *,
    width: int | None = None,
    bn_eps: float | None = None,
    bn_momentum: float = 0.1,
    verify_hash: bool = True,
) -> tuple[R2Plus1D18, LoadReport]:
    """Build the R(2+1)D-18 that a weight file was saved from, and load it strictly.

    ``mid_rule`` and ``width`` default to what the file shows; ``bn_eps`` defaults to the
    convention's (1e-3 for "xdc", as in the XDC release; 1e-5 for "torchvision").

    Raises:
        CheckpointError: as :func:`load_weights_file` and :func:`load_encoder_state`.
    """
    tensors = load_weights_file(path, verify_hash=verify_hash)
    rule: MidRule = mid_rule if mid_rule is not None else detect_mid_rule(tensors)
    if width is None:
        if "stem.3.weight" not in tensors:
            raise CheckpointError(
                f"{path}: no 'stem.3.weight': not an R(2+1)D-18 in VideoResNet layout"
            )
        width = int(tensors["stem.3.weight"].shape[0])
    eps = bn_eps if bn_eps is not None else _DEFAULT_BN_EPS[rule]
    model = R2Plus1D18(mid_rule=rule, width=width, bn_eps=eps, bn_momentum=bn_momentum)
    report = load_encoder_state(model, tensors, source=str(path))
    return model, report


__all__ = [
    "LoadReport",
    "detect_mid_rule",
    "expected_hash_prefix",
    "load_encoder_state",
    "load_pretrained_video",
    "load_weights_file",
    "sha256_of_file",
    "state_dict_from",
]
