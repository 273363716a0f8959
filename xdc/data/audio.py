"""Log-mel spectrogram in torch: batched, on the device of its input, no torchaudio or librosa.

Defaults follow the audio-visual convention the XDC paper builds on: 16 kHz mono, a 16 ms periodic
Hann window (256 samples), a 10 ms hop (160 samples), 40 mel bands on the HTK mel scale, and
``log(mel + 1e-6)``. Frames lie fully inside the signal (no centring or padding): frame ``i``
covers samples ``[i * hop, i * hop + win)``, so 100 frames need ``160 * 99 + 256 = 16096`` samples.
"""

from __future__ import annotations

import torch
from torch import Tensor


def hz_to_mel(freq: Tensor | float) -> Tensor:
    """HTK mel scale: ``2595 * log10(1 + f / 700)``."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(freq, dtype=torch.float64) / 700.0)


def mel_to_hz(mel: Tensor) -> Tensor:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (torch.pow(10.0, mel / 2595.0) - 1.0)


def mel_edges(n_mels: int, f_min: float, f_max: float) -> Tensor:
    """(n_mels + 2,) float64 filter edges (Hz), equally spaced in mel from f_min to f_max."""
    mels = torch.linspace(
        float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2, dtype=torch.float64
    )
    return mel_to_hz(mels)


def mel_centers(n_mels: int, f_min: float, f_max: float) -> Tensor:
    """(n_mels,) float64 centre frequencies (Hz) of the filters (where each triangle peaks)."""
    return mel_edges(n_mels, f_min, f_max)[1:-1]


def mel_filterbank(
    n_freqs: int, n_mels: int, sample_rate: int, f_min: float, f_max: float
) -> Tensor:
    """Triangular filters on the HTK mel scale.

    Filter ``k`` rises linearly from 0 at edge ``k`` to 1 at edge ``k + 1`` (its centre) and falls to
    0 at edge ``k + 2``, where the ``n_mels + 2`` edges are equally spaced in mel from ``f_min`` to
    ``f_max``. Peaks are 1 (no area normalisation).

    Args:
        n_freqs: FFT bins, ``n_fft // 2 + 1``, equally spaced from 0 to ``sample_rate / 2``.

    Returns:
        (n_freqs, n_mels) float32, non-negative.
    """
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(
            f"need 0 <= f_min < f_max <= sample_rate / 2, got f_min={f_min}, f_max={f_max}, "
            f"sample_rate={sample_rate}"
        )
    bin_freqs = torch.linspace(0.0, sample_rate / 2, n_freqs, dtype=torch.float64)
    edges = mel_edges(n_mels, f_min, f_max)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]  # (n_mels,) each
    freqs = bin_freqs[:, None]  # (n_freqs, 1)
    rising = (freqs - lower) / (center - lower)
    falling = (upper - freqs) / (upper - center)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).to(torch.float32)


class LogMel(torch.nn.Module):
    """Waveform (..., N) -> log-mel spectrogram (..., n_mels, n_frames), float32.

    Args:
        sample_rate: of the input waveform (Hz).
        n_mels: mel bands.
        win_ms: window length; ``round(sample_rate * win_ms / 1000)`` samples, periodic Hann.
        hop_ms: hop between frames, rounded to samples the same way.
        n_fft: FFT size; default the window length rounded up to a power of two. A larger FFT
            zero-pads each windowed frame (finer bins), it does not widen the frame.
        f_min, f_max: frequency range of the filterbank; ``f_max`` defaults to ``sample_rate / 2``.
        log_eps: added to the mel energies before the natural log (silence -> ``log(log_eps)``).

    Frame ``i`` is ``wave[..., i * hop : i * hop + win]`` times the window (what ``torch.stft``
    with ``center=False`` computes), its power spectrum goes through the filterbank, then the log.
    The window and the filterbank are non-persistent buffers: ``.to(device)`` moves them, and
    they stay out of state dicts (they are derived from the arguments).
    """

    window: Tensor
    filterbank: Tensor

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 40,
        win_ms: float = 16.0,
        hop_ms: float = 10.0,
        n_fft: int | None = None,
        f_min: float = 0.0,
        f_max: float | None = None,
        log_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.n_mels = n_mels
        self.signature = (sample_rate, n_mels, win_ms, hop_ms, n_fft, f_min, f_max, log_eps)
        """The arguments: two LogMels of one signature compute the same spectrogram (a RAM cache
        keeps log-mels of one, ``xdc.data.cache``)."""
        self.win_length = round(sample_rate * win_ms / 1000)
        self.hop_length = round(sample_rate * hop_ms / 1000)
        self.n_fft = n_fft if n_fft is not None else 1 << max(0, self.win_length - 1).bit_length()
        self.log_eps = log_eps
        if self.win_length < 1 or self.hop_length < 1:
            raise ValueError(f"win_ms={win_ms} and hop_ms={hop_ms} must be >= 1 sample each")
        if self.n_fft < self.win_length:
            raise ValueError(f"n_fft={self.n_fft} is shorter than the window ({self.win_length})")
        if n_mels < 1 or not log_eps > 0:
            raise ValueError(f"need n_mels >= 1 and log_eps > 0, got {n_mels} and {log_eps}")
        f_max = sample_rate / 2 if f_max is None else f_max
        window = torch.hann_window(self.win_length, periodic=True, dtype=torch.float32)
        self.register_buffer("window", window, persistent=False)
        filterbank = mel_filterbank(self.n_fft // 2 + 1, n_mels, sample_rate, f_min, f_max)
        self.register_buffer("filterbank", filterbank, persistent=False)

    def num_frames(self, num_samples: int) -> int:
        """Frames that ``num_samples`` samples give (0 when shorter than one window)."""
        if num_samples < self.win_length:
            return 0
        return 1 + (num_samples - self.win_length) // self.hop_length

    def num_samples(self, num_frames: int) -> int:
        """Samples that give exactly ``num_frames`` frames: ``hop * (num_frames - 1) + win``."""
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        return self.hop_length * (num_frames - 1) + self.win_length

    def forward(self, wave: Tensor) -> Tensor:
        """(..., N) float waveform -> (..., n_mels, num_frames(N)) float32 log-mel.

        Floating inputs of any precision are computed in float32 (float64 is cast down);
        integer PCM is rejected, since its scale is ambiguous.
        """
        if not wave.is_floating_point():
            raise TypeError(
                f"LogMel expects a floating-point waveform in [-1, 1], got {wave.dtype} "
                "(convert integer PCM first, e.g. int16 / 32768)"
            )
        num_samples = wave.shape[-1] if wave.dim() else 0
        if num_samples < self.win_length:
            raise ValueError(
                f"LogMel needs at least {self.win_length} samples (one window), got {num_samples}"
            )
        leading = wave.shape[:-1]
        flat = wave.reshape(-1, num_samples).to(torch.float32)
        # The short-time transform of torch.stft(center=False), written out: on CPU it is about
        # twice as fast, because the power and the filterbank product then run on contiguous
        # (frames, freqs) rows rather than on stft's transposed output. A longer n_fft zero-pads
        # each windowed frame at its end.
        frames = flat.unfold(-1, self.win_length, self.hop_length) * self.window  # (B, T, win)
        spectrum = torch.fft.rfft(frames, n=self.n_fft)  # (B, T, n_freqs)
        power = spectrum.real.square() + spectrum.imag.square()
        mel = torch.matmul(self.filterbank.T, power.mT)  # (B, n_mels, T)
        logmel = torch.log(mel + self.log_eps)
        return logmel.reshape(*leading, self.n_mels, logmel.shape[-1])

    def extra_repr(self) -> str:
        return (
            f"sample_rate={self.sample_rate}, n_mels={self.n_mels}, win={self.win_length}, "
            f"hop={self.hop_length}, n_fft={self.n_fft}"
        )
