"""A run's encoders in standard formats: ``xdc export RUN --to DIR``.

For each encoder (``video``, ``audio``) the export folder holds:

- ``<modality>.safetensors``: the weights alone (the state dict, no code; ``safetensors``
  package, ``pip install 'xdc[export]'``);
- ``<modality>.json``: the sidecar that says how to use them: the builder name and keyword arguments
  (``architecture``, ``model_config``: ``build_video_encoder(architecture, **model_config)``), the
  input contract (``input``: shape, dtype, frames, crop, fps, normalisation mean/std, clip seconds,
  log-mel parameters), the run's resolved config, the xdc and torch versions, the source
  checkpoint's SHA-256, each file's SHA-256 and what was checked;
- ``<modality>.torchscript.pt``: the traced encoder behind a scripted guard that checks the input's
  dtype and shape; ``torch.jit.load`` is all it needs;
- ``<modality>.onnx``: the same graph for ONNX runtimes (when the ``onnx`` package is installed),
  batch size dynamic.

The traced files (TorchScript, ONNX) take what the encoders take from xdc's loaders: the video
encoder a uint8 RGB clip (B, 3, T, H, W), normalised inside; the audio encoder a float32 log-mel
(B, 1, n_mels, n_frames). The log-mel itself is not in the graph: the sidecar gives its parameters
(``xdc.data.audio.LogMel``).

Every file is read back and its features compared with the original encoder's on a random input
(``max_abs_diff``; the export fails above ``tolerance``). ONNX outputs are compared when
``onnxruntime`` is installed; without it the model is checked by ``onnx.checker`` only, and the
sidecar says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import xdc
from xdc import atomic
from xdc.checkpoint import resolve_checkpoint
from xdc.config import PretrainConfig, config_from_dict
from xdc.data.datasets import BatchTransform
from xdc.data.decode import ClipSpec, clip_duration
from xdc.encoders import encoder_specs, load_encoders
from xdc.errors import CheckpointError, XdcError
from xdc.methods import MODALITIES
from xdc.models import build_audio_encoder, build_video_encoder, load_encoder_state
from xdc.models.video import VIDEO_MEAN, VIDEO_STD
from xdc.models.weights import sha256_of_file

EXPORT_FORMAT = "xdc-export"
EXPORT_FORMAT_VERSION = 1
FORMATS = ("safetensors", "torchscript", "onnx")
DEFAULT_TOLERANCE = 1e-4
ONNX_OPSET = 17
_SUFFIX = {"safetensors": ".safetensors", "torchscript": ".torchscript.pt", "onnx": ".onnx"}
_INPUT_NAME = {"video": "video", "audio": "log_mel"}


class ExportError(XdcError):
    """An exported file that does not reproduce its encoder, or a missing export package."""


class _Unsupported(Exception):
    """The format cannot express this encoder (the message says why)."""


@dataclass
class FileCheck:
    """What was done to one exported file: written and checked, or skipped and why."""

    format: str
    file: str = ""
    sha256: str = ""
    checked_with: str = ""
    input: str = ""
    max_abs_diff: float | None = None
    skipped: str = ""


@dataclass
class ExportedEncoder:
    """One encoder's export: its sidecar file and the checks of its files."""

    modality: str
    sidecar: Path
    checks: list[FileCheck] = field(default_factory=list)


def export_run(
    run: str | Path,
    out: str | Path,
    formats: Sequence[str] = FORMATS,
    modalities: Sequence[str] = MODALITIES,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
) -> list[ExportedEncoder]:
    """Export the encoders of ``run`` (a run folder or checkpoint) to the folder ``out``.

    Raises:
        CheckpointError: ``run`` is not a readable run.
        ExportError: an unknown format, ``safetensors`` asked for but not installed, or a file
            whose features differ from the encoder's by more than ``tolerance``.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"--formats {','.join(formats)}: choose from {','.join(FORMATS)}")
    wrong = [m for m in modalities if m not in MODALITIES]
    if wrong or not modalities:
        raise ExportError(f"--modality {','.join(modalities)}: choose video, audio or both")
    if "safetensors" in formats:
        _require_safetensors()
    checkpoint = resolve_checkpoint(run)
    encoders, config, _meta = load_encoders(checkpoint)
    source = {"checkpoint": str(checkpoint), "sha256": sha256_of_file(checkpoint)}
    source |= {"method": config.method, "preset": config.preset}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    specs = encoder_specs(config.model, config.data.n_mels)
    exported = []
    for modality in modalities:
        name, kwargs = specs[modality]
        encoder = encoders[modality].eval()
        example = example_input(modality, config, batch=2, seed=seed)
        # another batch size than the traced one: the files must not have fixed it
        check_input = example_input(modality, config, batch=3, seed=seed + 1)
        checks = [
            _export_one(
                fmt, modality, encoder, (name, kwargs), example, check_input, out, tolerance
            )
            for fmt in formats
        ]
        sidecar = {
            "format": EXPORT_FORMAT,
            "format_version": EXPORT_FORMAT_VERSION,
            "modality": modality,
            "architecture": name,
            "model_config": kwargs,
            "num_features": int(getattr(encoder, "num_features", 0)),
            "input": input_contract(modality, config),
            "output": {"shape": ["batch", int(getattr(encoder, "num_features", 0))]},
            "config": config.to_dict(),
            "xdc_version": xdc.__version__,
            "torch_version": torch.__version__,
            "source": source,
            "files": {c.format: dataclasses.asdict(c) for c in checks},
            "tolerance": tolerance,
        }
        path = atomic.write_json(out / f"{modality}.json", sidecar)
        exported.append(ExportedEncoder(modality, path, checks))
    return exported


def example_input(modality: str, config: PretrainConfig, batch: int, seed: int = 0) -> Tensor:
    """A random input of the shape and dtype the encoder of ``modality`` takes: a uint8 clip
    (B, 3, T, crop, crop), or a log-mel (B, 1, n_mels, n_frames) at the scale of real ones."""
    gen = torch.Generator().manual_seed(seed)
    d = config.data
    if modality == "video":
        shape = (batch, 3, d.num_frames, d.crop_size, d.crop_size)
        return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    # log(mel + 1e-6) of real audio spans roughly -14 (silence) to +5
    return torch.randn(batch, 1, d.n_mels, d.audio_frames, generator=gen) * 4.0 - 4.0


def input_contract(modality: str, config: PretrainConfig) -> dict[str, Any]:
    """What the encoder of ``modality`` expects, as the evaluation loaders make it."""
    d = config.data
    logmel = BatchTransform(d).logmel  # the log-mel the datasets compute
    audio_samples = logmel.num_samples(d.audio_frames)
    if modality == "video":
        spec = ClipSpec(num_frames=d.num_frames, fps=d.fps, resize_short=d.resize_short)
        return {
            "shape": ["batch", 3, d.num_frames, d.crop_size, d.crop_size],
            "dtype": "uint8",
            "layout": "RGB, (batch, channel, time, height, width)",
            "frames": d.num_frames,
            "fps": d.fps,
            "clip_seconds": clip_duration(spec),
            "resize_short": d.resize_short,
            "crop_size": d.crop_size,
            "crop": "centre crop after resizing the short side to resize_short",
            "video_input": config.model.video_input,
            "normalisation": {
                "mean": list(VIDEO_MEAN),
                "std": list(VIDEO_STD),
                "formula": "(x / 255 - mean) / std per channel, inside the encoder for uint8 "
                "input (float input to the xdc module is taken as normalised already)",
            },
        }
    return {
        "shape": ["batch", 1, d.n_mels, d.audio_frames],
        "dtype": "float32",
        "layout": "(batch, 1, mel band, frame)",
        "frames": d.audio_frames,
        "clip_seconds": audio_samples / d.sample_rate,
        "audio_samples": audio_samples,
        "audio_align": d.audio_align,
        "log_mel": {
            "sample_rate": logmel.sample_rate,
            "channels": "mono",
            "n_mels": logmel.n_mels,
            "win_length": logmel.win_length,
            "hop_length": logmel.hop_length,
            "n_fft": logmel.n_fft,
            "window": "periodic Hann",
            "mel_scale": "HTK, triangular filters of peak 1, 0 Hz to sample_rate / 2",
            "power": 2,
            "log": "natural log(mel + log_eps)",
            "log_eps": logmel.log_eps,
            "framing": "no padding: frame i covers samples [i * hop, i * hop + win)",
        },
    }


def _export_one(
    fmt: str,
    modality: str,
    encoder: nn.Module,
    spec: tuple[str, dict[str, object]],
    example: Tensor,
    check_input: Tensor,
    out: Path,
    tolerance: float,
) -> FileCheck:
    """Write one format of one encoder, read it back and compare it with the encoder."""
    path = out / f"{modality}{_SUFFIX[fmt]}"
    if fmt == "onnx" and not _importable("onnx"):
        return FileCheck(fmt, skipped="the onnx package is not installed (pip install onnx)")
    with torch.no_grad():
        expected = encoder(check_input)
    writer, reader = _FORMATS[fmt]
    try:
        with atomic.atomic_path(path, suffix=_SUFFIX[fmt]) as tmp:
            try:
                writer(encoder, example, tmp, modality)
            except Exception as err:
                if fmt == "safetensors":  # weights can always be written: a real failure
                    raise
                # an architecture the format cannot express: say why, export the others
                raise _Unsupported(f"{type(err).__name__}: {_first_line(err)}") from err
            loaded_with, run = reader(tmp, spec, modality)
            check = FileCheck(
                fmt,
                file=path.name,
                checked_with=loaded_with,
                input=f"random {_describe(check_input)}",
            )
            if run is not None:
                diff = float((run(check_input) - expected).abs().max())
                check.max_abs_diff = diff
                if not diff <= tolerance:
                    raise ExportError(
                        f"{path}: its {modality} features differ from the run's encoder by "
                        f"{diff:.3g} (> {tolerance:g}); the file was not kept"
                    )
    except _Unsupported as why:
        return FileCheck(fmt, skipped=str(why))
    check.sha256 = sha256_of_file(path)
    return check


# ---- the formats: a writer (encoder, example, path, modality) and a reader (path, spec) -----------


def _write_safetensors(encoder: nn.Module, example: Tensor, path: Path, modality: str) -> None:
    from safetensors.torch import save

    state = {k: v.detach().contiguous() for k, v in encoder.state_dict().items()}
    # bytes written here, into the file atomic_path made (its permissions, not 0600)
    path.write_bytes(save(state, metadata={"format": "pt", "xdc_sidecar": f"{modality}.json"}))


def _read_safetensors(
    path: Path, spec: tuple[str, dict[str, object]], modality: str
) -> tuple[str, Callable[[Tensor], Tensor] | None]:
    model = build_encoder(modality, spec[0], spec[1])
    load_encoder_state(model, read_safetensors(path), ignore_prefixes=(), source=str(path))
    model.eval()
    return "safetensors.torch.load_file into xdc's builder (strict)", _no_grad(model)


class _Guarded(nn.Module):
    """A traced encoder behind checks of its input's dtype and shape: a trace fixes the branch its
    example took (uint8 clips are normalised inside) and may fix sizes, so other input would be
    computed wrong. Only the batch size is free."""

    def __init__(self, traced: nn.Module, dtype: torch.dtype, dims: list[int]) -> None:
        super().__init__()
        self.traced = traced
        self.dtype = dtype
        self.dims = dims  # the sizes of dims 1.. the trace was made and checked with
        self.expected = (
            f"expected a {str(dtype).removeprefix('torch.')} tensor of shape "
            f"(batch, {', '.join(str(d) for d in dims)})"
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype != self.dtype:
            raise ValueError(self.expected + ", got another dtype")
        if x.dim() != len(self.dims) + 1 or x.shape[1:] != self.dims:
            raise ValueError(self.expected + ", got shape " + str(x.shape))
        return self.traced(x)


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    """torch.jit warns that it is deprecated in favour of torch.export, and of the shape checks a
    trace freezes; the guard re-checks those, and every file is compared with its encoder."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def _trace(encoder: nn.Module, example: Tensor) -> torch.jit.ScriptModule:
    with _quiet_jit():
        traced = torch.jit.trace(encoder, example, check_trace=False)
        return torch.jit.script(_Guarded(traced, example.dtype, list(example.shape[1:])))


def _write_torchscript(encoder: nn.Module, example: Tensor, path: Path, modality: str) -> None:
    module = _trace(encoder, example)
    with _quiet_jit():
        torch.jit.save(module, str(path))


def _read_torchscript(
    path: Path, spec: tuple[str, dict[str, object]], modality: str
) -> tuple[str, Callable[[Tensor], Tensor] | None]:
    with _quiet_jit():
        module = torch.jit.load(str(path), map_location="cpu")
    return "torch.jit.load", _no_grad(module)


def _write_onnx(encoder: nn.Module, example: Tensor, path: Path, modality: str) -> None:
    import onnx

    name = _INPUT_NAME[modality]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message=r".*feature will be removed")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            encoder,
            (example,),
            str(path),
            input_names=[name],
            output_names=["features"],
            dynamic_axes={name: {0: "batch"}, "features": {0: "batch"}},
            opset_version=ONNX_OPSET,
            **_legacy_onnx_exporter(),
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def _legacy_onnx_exporter() -> dict[str, Any]:
    """The TorchScript-based exporter: from torch 2.9 on ``dynamo=True`` is the default, which
    needs the onnxscript package; torch before 2.5 has only the TorchScript-based one."""
    return {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


def _read_onnx(
    path: Path, spec: tuple[str, dict[str, object]], modality: str
) -> tuple[str, Callable[[Tensor], Tensor] | None]:
    if not _importable("onnxruntime"):
        return "onnx.checker only (outputs not compared: pip install onnxruntime)", None
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = _INPUT_NAME[modality]

    def run(x: Tensor) -> Tensor:
        return torch.from_numpy(session.run(None, {name: x.numpy()})[0])

    return f"onnxruntime {onnxruntime.__version__} (CPU)", run


_FORMATS: dict[str, tuple[Callable[..., None], Callable[..., Any]]] = {
    "safetensors": (_write_safetensors, _read_safetensors),
    "torchscript": (_write_torchscript, _read_torchscript),
    "onnx": (_write_onnx, _read_onnx),
}


# ---- reading exports back ------------------------------------------------------------------------


def build_encoder(modality: str, name: str, kwargs: Mapping[str, object]) -> nn.Module:
    """The encoder a sidecar names, randomly initialised."""
    if modality == "video":
        return build_video_encoder(name, **kwargs)
    return build_audio_encoder(name, **kwargs)


def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file (CPU)."""
    _require_safetensors()
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """An export's ``<modality>.json``; ``CheckpointError`` when it is not one."""
    path = Path(path)
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not a readable xdc export sidecar ({err})") from err
    if not isinstance(sidecar, dict) or sidecar.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{path}: not an xdc export sidecar (no format {EXPORT_FORMAT!r})")
    if sidecar.get("format_version") != EXPORT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: export format {sidecar.get('format_version')!r}; this xdc reads "
            f"{EXPORT_FORMAT_VERSION}: use the xdc version that wrote it ({sidecar.get('xdc_version')})"
        )
    return sidecar


def is_export(path: str | Path) -> bool:
    """Whether ``path`` is an export folder (holds a ``video.json`` or ``audio.json`` sidecar)."""
    path = Path(path)
    return path.is_dir() and any((path / f"{m}.json").is_file() for m in MODALITIES)


def load_exported_encoder(folder: str | Path, modality: str) -> tuple[nn.Module, dict[str, Any]]:
    """The ``modality`` encoder of an export folder, from its safetensors file (whose SHA-256 must
    be the one its sidecar recorded), strictly loaded into the architecture the sidecar names, in
    eval mode; and the sidecar.

    Raises:
        CheckpointError: no such sidecar, no safetensors file, a file that changed since the
            export, or weights that do not fit the architecture.
    """
    folder = Path(folder)
    sidecar_path = folder / f"{modality}.json"
    if not sidecar_path.is_file():
        raise CheckpointError(
            f"{folder}: the export has no {modality} encoder ({sidecar_path.name})"
        )
    sidecar = read_sidecar(sidecar_path)
    weights = folder / f"{modality}.safetensors"
    recorded = sidecar.get("files", {}).get("safetensors", {}).get("sha256", "")
    if not weights.is_file() or not recorded:
        raise CheckpointError(f"{weights}: missing; export again with safetensors among --formats")
    actual = sha256_of_file(weights)
    if actual != recorded:
        raise CheckpointError(
            f"{weights}: sha256 is {actual} but {sidecar_path.name} recorded {recorded}; the file "
            "was altered or belongs to another export: export the run again"
        )
    model = build_encoder(modality, sidecar["architecture"], sidecar["model_config"])
    load_encoder_state(model, read_safetensors(weights), ignore_prefixes=(), source=str(weights))
    return model.eval(), sidecar


def load_export(path: str | Path) -> tuple[dict[str, nn.Module], PretrainConfig]:
    """The encoders of an export folder (:func:`load_exported_encoder`) and the run config they
    were trained with. An export of one modality gives one encoder.

    Raises:
        CheckpointError: not an export folder, or as :func:`load_exported_encoder`.
    """
    folder = Path(path)
    if not is_export(folder):
        raise CheckpointError(
            f"{folder}: not an xdc export folder (no video.json or audio.json); "
            "make one with `xdc export RUN --to DIR`"
        )
    encoders: dict[str, nn.Module] = {}
    config: PretrainConfig | None = None
    for modality in MODALITIES:
        if (folder / f"{modality}.json").is_file():
            encoders[modality], sidecar = load_exported_encoder(folder, modality)
            config = config_from_dict(sidecar["config"])
    assert config is not None
    return encoders, config


# ---- helpers -------------------------------------------------------------------------------------


def _require_safetensors() -> None:
    if not _importable("safetensors"):
        raise ExportError(
            "the safetensors package is not installed: pip install 'xdc[export]' "
            "(or pip install safetensors), or pass --formats torchscript,onnx"
        )


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _no_grad(model: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    def run(x: Tensor) -> Tensor:
        with torch.no_grad():
            return model(x)

    return run


def _describe(x: Tensor) -> str:
    return f"{str(x.dtype).removeprefix('torch.')} tensor {tuple(x.shape)}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


__all__ = [
    "DEFAULT_TOLERANCE",
    "EXPORT_FORMAT",
    "FORMATS",
    "ExportError",
    "ExportedEncoder",
    "FileCheck",
    "build_encoder",
    "example_input",
    "export_run",
    "input_contract",
    "is_export",
    "load_export",
    "load_exported_encoder",
    "read_safetensors",
    "read_sidecar",
]
