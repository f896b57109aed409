"""Speech features: WAV reading, resampling, fixed length, log-mel spectrograms cached on disk.

torchaudio has no build for the torch version we support, so decoding uses the stdlib
`wave` module (PCM only) and features use `torch.stft` plus a mel filterbank written
here; both are a few lines and match torchaudio's HTK mel scale with `norm=None`.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
import wave
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from torchsmith.data.disk_cache import FILE_MODE, cache_root, private_folder
from torchsmith.errors import TorchsmithError, UsageError
from torchsmith.io.files import DiskFull, save_safetensors

FEATURE_VERSION = 1  # bump when the feature computation changes, to invalidate caches
FSDD_PATTERN = r"(?P<label>\d)_(?P<speaker>[A-Za-z]+)_(?P<take>\d+)\.wav"
_PCM_DTYPES = {1: np.uint8, 2: np.int16, 4: np.int32}


def read_wav(path: str | Path) -> tuple[torch.Tensor, int]:
    """Read a mono PCM WAV file (8, 16, 24 or 32 bit) as float32 samples in [-1, 1].

    Stereo files are refused rather than silently mixed down, because which channel
    holds the speech is a choice the user should make.

    Example:
        >>> samples, rate = read_wav("0_george_0.wav")  # (samples,), 8000
    """
    try:
        with wave.open(str(path), "rb") as handle:
            channels, width = handle.getnchannels(), handle.getsampwidth()
            rate, raw = handle.getframerate(), handle.readframes(handle.getnframes())
    except (wave.Error, EOFError, OSError) as error:
        raise UsageError(
            f"{path} is not a readable PCM WAV file ({error}); convert it with "
            "`ffmpeg -i INPUT -acodec pcm_s16le OUTPUT.wav`."
        ) from error
    if channels != 1:
        raise UsageError(
            f"{path} has {channels} channels; torchsmith reads mono recordings only. "
            "Convert it with `ffmpeg -i INPUT -ac 1 OUTPUT.wav`."
        )
    if len(raw) < width:
        raise UsageError(f"{path} is a zero-length recording; remove it or record it again.")
    return _pcm_to_float(raw, width, path), rate


def _pcm_to_float(raw: bytes, width: int, path: str | Path) -> torch.Tensor:
    if width == 3:  # 24-bit: place the 3 bytes in the top of an int32
        bytes3 = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3)
        padded = np.zeros((len(bytes3), 4), dtype=np.uint8)
        padded[:, 1:] = bytes3
        values = padded.view("<i4")[:, 0].astype(np.float32) / 2.0**31
    elif width in _PCM_DTYPES:
        values = np.frombuffer(raw, dtype=_PCM_DTYPES[width]).astype(np.float32)
        values = (values - 128.0) / 128.0 if width == 1 else values / 2.0 ** (8 * width - 1)
    else:
        raise UsageError(f"{path} uses {8 * width}-bit samples; expected 8, 16, 24 or 32.")
    return torch.from_numpy(values)


def resample(waveform: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Resample (..., samples) from `orig_rate` to `new_rate` with a windowed-sinc filter.

    Why not `F.interpolate`: linear interpolation does not low-pass, so downsampling
    folds energy above the new Nyquist back into the speech band (aliasing). A
    polyphase Hann-windowed sinc (as in torchaudio) costs one conv1d and avoids it.

    Example:
        >>> resample(torch.randn(16000), 16000, 8000).shape
        torch.Size([8000])
    """
    if orig_rate == new_rate:
        return waveform
    divisor = math.gcd(orig_rate, new_rate)
    orig, new = orig_rate // divisor, new_rate // divisor
    kernel, width = _sinc_kernel(orig, new, waveform.dtype)  # (new, 1, 2 * width + orig)
    shape, length = waveform.shape[:-1], waveform.shape[-1]
    padded = F.pad(waveform.reshape(-1, 1, length), (width, width + orig))
    phases = F.conv1d(padded, kernel, stride=orig)  # (B, new, length // orig + 1)
    out = phases.transpose(1, 2).reshape(len(padded), -1)
    return out[:, : math.ceil(new * length / orig)].reshape(*shape, -1)


def _sinc_kernel(orig: int, new: int, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    zeros, rolloff = 6, 0.99  # sinc zero crossings each side; cutoff just under Nyquist
    cutoff = min(orig, new) * rolloff
    width = math.ceil(zeros * orig / cutoff)
    taps = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    t = (torch.arange(0, -new, -1, dtype=torch.float64)[:, None, None] / new + taps) * cutoff
    t = t.clamp(-zeros, zeros)
    window = torch.cos(t * math.pi / zeros / 2) ** 2
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t * math.pi) / (t * math.pi))
    return (sinc * window * cutoff / orig).to(dtype), width


def fix_length(waveform: torch.Tensor, length: int) -> torch.Tensor:
    """Centre-pad with zeros, or crop to the loudest window, to exactly `length` samples.

    Example:
        >>> fix_length(torch.ones(3), 5)
        tensor([0., 1., 1., 1., 0.])
    """
    size = waveform.shape[-1]
    if size <= length:
        left = (length - size) // 2
        return F.pad(waveform, (left, length - size - left))
    # crop where the energy is highest, so leading or trailing silence is dropped first
    energy = F.pad(torch.cumsum(waveform.double() ** 2, -1), (1, 0))
    start = int(torch.argmax(energy[length:] - energy[:-length]))
    return waveform[start : start + length]


@dataclass(frozen=True)
class LogMel:
    """Log-mel feature settings; clips are resampled and fixed to `duration_s` first.

    Example:
        >>> LogMel(n_mels=40).frames
        51
    """

    sample_rate: int = 8000
    n_fft: int = 256
    hop_length: int = 160  # 20 ms: as accurate as 10 ms on FSDD, at half the compute
    n_mels: int = 40
    f_min: float = 20.0
    f_max: float = 4000.0
    duration_s: float = 1.0

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) > 0):
                raise UsageError(f"LogMel.{name} must be a positive integer, got {getattr(self, name)!r}.")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise UsageError(
                f"LogMel needs 0 <= f_min < f_max <= sample_rate / 2 = {self.sample_rate / 2}, "
                f"got f_min={self.f_min}, f_max={self.f_max}."
            )
        if self.duration_s <= 0:
            raise UsageError(f"LogMel.duration_s must be positive, got {self.duration_s}.")

    @property
    def samples(self) -> int:
        return round(self.duration_s * self.sample_rate)

    @property
    def frames(self) -> int:
        return self.samples // self.hop_length + 1

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LogMel:
        """Rebuild the settings from `DataInfo.preprocessing` (extra keys are ignored)."""
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_frequencies(settings: LogMel) -> torch.Tensor:
    """Edge and centre frequencies in Hz of the mel bands, shape (n_mels + 2,)."""
    low, high = hz_to_mel(torch.tensor([settings.f_min, settings.f_max], dtype=torch.float64))
    return mel_to_hz(torch.linspace(float(low), float(high), settings.n_mels + 2))


def mel_filterbank(settings: LogMel) -> torch.Tensor:
    """Triangular HTK mel filters, shape (n_mels, n_fft // 2 + 1)."""
    freqs = torch.linspace(0, settings.sample_rate / 2, settings.n_fft // 2 + 1, dtype=torch.float64)
    edges = mel_frequencies(settings)[:, None]  # (n_mels + 2, 1)
    rising = (freqs - edges[:-2]) / (edges[1:-1] - edges[:-2])
    falling = (edges[2:] - freqs) / (edges[2:] - edges[1:-1])
    bank = torch.clamp(torch.minimum(rising, falling), min=0)
    empty = (bank.sum(1) == 0).nonzero().flatten().tolist()
    if empty:
        raise UsageError(
            f"LogMel(n_mels={settings.n_mels}, n_fft={settings.n_fft}) leaves mel bands {empty} "
            "without any FFT bin; use fewer mels, a larger n_fft or a higher f_min."
        )
    return bank.float()


def log_mel(waveforms: torch.Tensor, settings: LogMel) -> torch.Tensor:
    """Natural-log mel power spectrogram: (B, samples) -> (B, n_mels, frames).

    Example:
        >>> log_mel(torch.zeros(2, 8000), LogMel()).shape
        torch.Size([2, 40, 51])
    """
    window = torch.hann_window(settings.n_fft, device=waveforms.device)
    spec = torch.stft(
        waveforms,
        settings.n_fft,
        settings.hop_length,
        window=window,
        center=True,
        return_complex=True,
    )  # (B, n_fft // 2 + 1, frames)
    power = spec.real**2 + spec.imag**2
    mel = mel_filterbank(settings).to(waveforms.device) @ power  # (B, n_mels, frames)
    return torch.log(mel + 1e-6)  # floor: exact silence maps to log(1e-6), about -13.8


def logmel_features(paths: list[Path], settings: LogMel, cache_dir: str | Path | None = None) -> torch.Tensor:
    """Log-mel features of every file, float16 (N, n_mels, frames), cached on disk.

    The cache key hashes each file's resolved path, size and modification time together
    with the settings, so editing, adding or removing a file recomputes the features. A
    cache file that cannot be read, or holds the wrong shape, is recomputed and replaced.

    Example:
        >>> logmel_features(sorted(Path("recordings").glob("*.wav")), LogMel()).shape
        torch.Size([3000, 40, 51])
    """
    key = _cache_key(paths, settings)
    cache_file = Path(cache_dir or cache_root()).resolve() / "audio" / f"logmel-{key}.safetensors"
    cached = _read_cache(cache_file, (len(paths), settings.n_mels, settings.frames))
    if cached is not None:
        return cached
    waves = torch.stack([fixed_waveform(path, settings) for path in paths])  # (N, samples)
    # float16 halves memory and disk; log-mel values lie in about [-14, 15], where
    # float16 keeps about 3 significant digits, far finer than the augmentation noise
    features = torch.cat([log_mel(chunk, settings) for chunk in waves.split(256)]).half()
    try:
        private_folder(cache_file.parent)
        save_safetensors({"features": features}, cache_file, mode=FILE_MODE)  # atomic, unique temporary
    except DiskFull:
        raise  # the run would fail at its first checkpoint anyway: say so now, clearly
    except (OSError, TorchsmithError) as error:  # a read-only cache folder: the features still serve
        warnings.warn(f"could not write the feature cache {cache_file}: {error}", stacklevel=2)
    return features


def _read_cache(cache_file: Path, shape: tuple[int, ...]) -> torch.Tensor | None:
    """The cached features, or None when the file is absent, damaged or of another shape."""
    from safetensors.torch import load_file

    if not cache_file.exists():
        return None
    try:
        features = load_file(cache_file)["features"]
    except Exception:  # truncated, overwritten, not safetensors: recomputed, never trusted
        return None
    return features if tuple(features.shape) == shape and features.dtype == torch.float16 else None


def _cache_key(paths: list[Path], settings: LogMel) -> str:
    digest = hashlib.sha256(json.dumps([FEATURE_VERSION, asdict(settings)]).encode())
    for path in paths:
        stat = Path(path).stat()
        digest.update(f"{Path(path).resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def fixed_waveform(path: Path, settings: LogMel) -> torch.Tensor:
    samples, rate = read_wav(path)
    return fix_length(resample(samples, rate, settings.sample_rate), settings.samples)
