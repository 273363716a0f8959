"""Log-mel front-end: framing, filterbank, tone placement, batching, dtypes, devices, and the
alignment of a tone burst decoded from a lossy file with the log-mel frames that should hold it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.media import numbered_frames, write_video
from xdc.data.audio import LogMel, hz_to_mel, mel_centers, mel_filterbank
from xdc.data.decode import ClipSpec, decode_clip

SR = 16000


def test_defaults_give_100_frames_from_16096_samples() -> None:
    logmel = LogMel()
    assert (logmel.win_length, logmel.hop_length, logmel.n_fft) == (256, 160, 256)
    assert logmel.num_samples(100) == 16096 and logmel.num_frames(16096) == 100
    assert logmel.num_frames(16095) == 99 and logmel.num_frames(255) == 0
    for n in (256, 415, 416, 1000, 16096):
        assert logmel(torch.randn(n)).shape == (40, logmel.num_frames(n))
    assert LogMel(win_ms=25.0).n_fft == 512  # 400 samples round up to a power of two


def test_frame_i_covers_samples_i_hop_to_i_hop_plus_win() -> None:
    logmel = LogMel()
    wave = torch.zeros(3000)
    wave[1000:1040] = torch.randn(40)  # a short noise burst
    frames = logmel(wave).max(dim=0).values  # loudest band per frame
    silent = float(np.log(logmel.log_eps))
    for i, value in enumerate(frames.tolist()):
        first, last = i * 160, i * 160 + 256  # frame i sees wave[first:last]
        overlap = max(0, min(last, 1040) - max(first, 1000))
        if overlap == 0:
            assert value == pytest.approx(silent, abs=1e-6), f"frame {i} sees the burst"
        elif overlap >= 8:
            assert value > silent + 5.0, f"frame {i} misses the burst"


@pytest.mark.parametrize("win_ms", [16.0, 25.0])
def test_matches_torch_stft_without_centring(win_ms: float) -> None:
    """The written-out transform equals torch.stft(center=False) on frames of win samples."""
    logmel = LogMel(win_ms=win_ms)
    wave = torch.randn(2, 4000, dtype=torch.float64)
    win, hop, n_fft = logmel.win_length, logmel.hop_length, logmel.n_fft
    # a window zero-padded at its end, and the signal padded likewise, keep frames at i * hop
    window = torch.nn.functional.pad(
        torch.hann_window(win, periodic=True, dtype=torch.float64), (0, n_fft - win)
    )
    padded = torch.nn.functional.pad(wave, (0, n_fft - win))
    spectrum = torch.stft(padded, n_fft, hop, window=window, center=False, return_complex=True)
    fb = logmel.filterbank.double()
    reference = torch.log(torch.matmul(fb.T, spectrum.abs() ** 2) + logmel.log_eps)
    torch.testing.assert_close(logmel(wave), reference.float(), atol=1e-4, rtol=1e-4)


def test_filterbank_triangles_peak_at_htk_centres() -> None:
    n_freqs = 8001  # 1 Hz bins, so that each peak is resolved
    fb = mel_filterbank(n_freqs, 40, SR, 0.0, SR / 2)
    assert fb.shape == (n_freqs, 40) and fb.dtype == torch.float32
    assert (fb >= 0).all() and fb.max() <= 1.0
    centres = mel_centers(40, 0.0, SR / 2)
    assert torch.allclose(fb.argmax(dim=0).double(), centres, atol=1.0)
    # HTK scale, equally spaced in mel
    mels = hz_to_mel(centres)
    assert torch.allclose(mels.diff(), mels.diff()[0].expand(39), atol=1e-6)
    assert float(hz_to_mel(1000.0)) == pytest.approx(2595 * np.log10(1 + 1000 / 700))
    # filter k is zero outside (centre k-1, centre k+1) and linear in between
    k = 20
    freqs = torch.arange(n_freqs, dtype=torch.float64)
    support = (fb[:, k] > 0).nonzero().squeeze(1)
    assert freqs[support[0]] > centres[k - 1] and freqs[support[-1]] < centres[k + 1]
    rising = fb[support[0] : fb[:, k].argmax(), k].double().diff()
    assert torch.allclose(rising, rising.mean().expand_as(rising), rtol=1e-3)


def test_filterbank_respects_f_min_and_f_max() -> None:
    fb = mel_filterbank(129, 20, SR, 300.0, 4000.0)
    freqs = torch.linspace(0, SR / 2, 129)
    assert not fb[freqs <= 300.0].any() and not fb[freqs >= 4000.0].any()
    with pytest.raises(ValueError, match="f_max"):
        mel_filterbank(129, 20, SR, 0.0, 9000.0)


@pytest.mark.parametrize("band", [5, 12, 20, 30, 38])
def test_pure_tone_peaks_in_the_band_centred_nearest_to_it(band: int) -> None:
    logmel = LogMel()
    freq = float(mel_centers(40, 0.0, SR / 2)[band]) * 1.02  # near, not exactly at, the centre
    t = torch.arange(SR, dtype=torch.float32) / SR
    spectrum = logmel(0.5 * torch.sin(2 * np.pi * freq * t))
    nearest = int((mel_centers(40, 0.0, SR / 2) - freq).abs().argmin())
    assert nearest == band
    assert int(spectrum.mean(dim=1).argmax()) == band


def test_batched_equals_per_item() -> None:
    logmel = LogMel()
    waves = torch.randn(2, 3, 5000)
    batched = logmel(waves)
    assert batched.shape == (2, 3, 40, logmel.num_frames(5000))
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(batched[i, j], logmel(waves[i, j]), atol=1e-5, rtol=1e-5)


def test_float64_is_computed_in_float32_and_integers_are_rejected() -> None:
    logmel = LogMel()
    wave = torch.randn(4000, dtype=torch.float64)
    out = logmel(wave)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, logmel(wave.float()))
    with pytest.raises(TypeError, match="floating-point"):
        logmel((wave * 1000).to(torch.int16))
    with pytest.raises(ValueError, match="at least 256 samples"):
        logmel(torch.zeros(100))


def test_buffers_follow_the_module_and_stay_out_of_the_state_dict() -> None:
    logmel = LogMel().to(torch.float64)  # .to moves buffers; forward still works
    assert logmel.state_dict() == {}
    assert logmel(torch.randn(1000)).shape == (40, 5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    logmel = LogMel()
    wave = torch.randn(4, 16096)
    on_gpu = logmel.to("cuda")(wave.to("cuda"))
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), LogMel()(wave), atol=1e-3, rtol=1e-4)


def test_decoded_tone_burst_lands_in_the_expected_logmel_frames(tmp_path: Path) -> None:
    """A 1 kHz burst at 1.1237 s in an AAC (44.1 kHz stereo) mp4, decoded as a centred window,
    gives the log-mel of an ideal burst placed at the expected sample: the best-matching shift
    of the ideal burst is within 1 ms."""
    onset = 1.1237
    t = np.arange(2 * 44100) / 44100
    burst = np.where(
        (t >= onset) & (t < onset + 0.2), 0.6 * np.sin(2 * np.pi * 1000 * (t - onset)), 0
    )
    path = write_video(
        tmp_path / "burst.mp4",
        numbered_frames(50),
        25.0,
        np.stack([burst, burst]).astype(np.float32),
        44100,
        lossless=False,
    )
    clip = decode_clip(path, 0.8, ClipSpec())
    assert clip.audio is not None
    logmel = LogMel()
    decoded = logmel(torch.from_numpy(clip.audio))
    expected_sample = round((onset - clip.audio_start_sec) * SR)
    band = int((mel_centers(40, 0.0, SR / 2) - 1000.0).abs().argmin())

    def ideal(shift: int) -> torch.Tensor:
        n = torch.arange(16096, dtype=torch.float64)
        start = expected_sample + shift
        wave = torch.where(n >= start, 0.6 * torch.sin(2 * np.pi * 1000 * (n - start) / SR), 0.0)
        return logmel(wave)

    onset_frame = expected_sample // 160
    rows = slice(onset_frame - 3, onset_frame + 3)  # the frames the onset passes through
    errors = {
        shift: float((decoded[band, rows] - ideal(shift)[band, rows]).abs().mean())
        for shift in range(-80, 81, 4)
    }
    best = min(errors, key=errors.__getitem__)
    assert abs(best) <= SR // 1000, f"burst found {best} samples from where it should be"
    # the frames before the onset are quiet, the frames well inside the burst are loud
    quiet, loud = (
        decoded[band, : onset_frame - 2],
        decoded[band, onset_frame + 2 : onset_frame + 15],
    )
    assert quiet.max() < loud.min() - 5.0
