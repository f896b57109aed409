"""Speech data: WAV reading, resampling, log-mel features (cached on disk), FSDD and WAV folders.

torchaudio has no build for the torch version we support, so decoding uses the stdlib
`wave` module (PCM only) and features use `torch.stft` plus a mel filterbank written
here; both are a few lines and match torchaudio's HTK mel scale with `norm=None`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
import wave
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from torchsmith.data.bundle import DataBundle, DataInfo
from torchsmith.errors import UsageError

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
        raise UsageError(
            f"{path} is a zero-length recording; remove it or record it again."
        )
    return _pcm_to_float(raw, width, path), rate


def _pcm_to_float(raw: bytes, width: int, path: str | Path) -> torch.Tensor:
    if width == 3:  # 24-bit: place the 3 bytes in the top of an int32
        bytes3 = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3)
        padded = np.zeros((len(bytes3), 4), dtype=np.uint8)
        padded[:, 1:] = bytes3
        values = padded.view("<i4")[:, 0].astype(np.float32) / 2.0**31
    elif width in _PCM_DTYPES:
        values = np.frombuffer(raw, dtype=_PCM_DTYPES[width]).astype(np.float32)
        values = (
            (values - 128.0) / 128.0 if width == 1 else values / 2.0 ** (8 * width - 1)
        )
    else:
        raise UsageError(
            f"{path} uses {8 * width}-bit samples; expected 8, 16, 24 or 32."
        )
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
    kernel, width = _sinc_kernel(
        orig, new, waveform.dtype
    )  # (new, 1, 2 * width + orig)
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
    t = (
        torch.arange(0, -new, -1, dtype=torch.float64)[:, None, None] / new + taps
    ) * cutoff
    t = t.clamp(-zeros, zeros)
    window = torch.cos(t * math.pi / zeros / 2) ** 2
    sinc = torch.where(
        t == 0, torch.ones_like(t), torch.sin(t * math.pi) / (t * math.pi)
    )
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
                raise UsageError(
                    f"LogMel.{name} must be a positive integer, got {getattr(self, name)!r}."
                )
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise UsageError(
                f"LogMel needs 0 <= f_min < f_max <= sample_rate / 2 = {self.sample_rate / 2}, "
                f"got f_min={self.f_min}, f_max={self.f_max}."
            )
        if self.duration_s <= 0:
            raise UsageError(
                f"LogMel.duration_s must be positive, got {self.duration_s}."
            )

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


def _hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_frequencies(settings: LogMel) -> torch.Tensor:
    """Edge and centre frequencies in Hz of the mel bands, shape (n_mels + 2,)."""
    low, high = _hz_to_mel(
        torch.tensor([settings.f_min, settings.f_max], dtype=torch.float64)
    )
    return _mel_to_hz(torch.linspace(float(low), float(high), settings.n_mels + 2))


def mel_filterbank(settings: LogMel) -> torch.Tensor:
    """Triangular HTK mel filters, shape (n_mels, n_fft // 2 + 1)."""
    freqs = torch.linspace(
        0, settings.sample_rate / 2, settings.n_fft // 2 + 1, dtype=torch.float64
    )
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


def default_cache_dir() -> Path:
    return (
        Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "torchsmith"
    )


def logmel_features(
    paths: list[Path], settings: LogMel, cache_dir: str | Path | None = None
) -> torch.Tensor:
    """Log-mel features of every file, float16 (N, n_mels, frames), cached on disk.

    The cache key hashes each file's path, size and modification time together with
    the settings, so editing, adding or removing a file recomputes the features.

    Example:
        >>> logmel_features(sorted(Path("recordings").glob("*.wav")), LogMel()).shape
        torch.Size([3000, 40, 51])
    """
    from safetensors.torch import load_file, save_file

    key = _cache_key(paths, settings)
    cache_file = (
        Path(cache_dir or default_cache_dir()) / "audio" / f"logmel-{key}.safetensors"
    )
    if cache_file.exists():
        return load_file(cache_file)["features"]
    waves = torch.stack(
        [_fixed_waveform(path, settings) for path in paths]
    )  # (N, samples)
    # float16 halves memory and disk; log-mel values lie in about [-14, 15], where
    # float16 keeps about 3 significant digits, far finer than the augmentation noise
    features = torch.cat(
        [log_mel(chunk, settings) for chunk in waves.split(256)]
    ).half()
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        partial = cache_file.with_suffix(f".{os.getpid()}.tmp")
        save_file({"features": features}, partial)
        os.replace(
            partial, cache_file
        )  # atomic: a concurrent reader never sees half a file
    except OSError as error:
        warnings.warn(
            f"could not write the feature cache {cache_file}: {error}", stacklevel=2
        )
    return features


def _cache_key(paths: list[Path], settings: LogMel) -> str:
    digest = hashlib.sha256(json.dumps([FEATURE_VERSION, asdict(settings)]).encode())
    for path in paths:
        stat = Path(path).stat()
        digest.update(
            f"{Path(path).resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
        )
    return digest.hexdigest()[:24]


def _fixed_waveform(path: Path, settings: LogMel) -> torch.Tensor:
    samples, rate = read_wav(path)
    return fix_length(resample(samples, rate, settings.sample_rate), settings.samples)


@dataclass(frozen=True)
class AudioAugment:
    """Train-time augmentation of whole batches of log-mel spectrograms.

    Every amount is a maximum, drawn per sample: `shift` moves the clip in time by up
    to that fraction of its length (silence fills the gap); `tempo` stretches time by
    up to that relative amount; `warp` scales frequencies (vocal tract length
    perturbation: a longer or shorter vocal tract, i.e. another speaker); the masks
    are SpecAugment's, each up to `*_width` frames or mel bands wide.

    Example:
        >>> AudioAugment(shift=0.1, warp=0.1, time_masks=2, time_mask_width=10)
    """

    shift: float = 0.1
    tempo: float = 0.1
    warp: float = 0.1
    time_masks: int = 2
    time_mask_width: int = 5
    freq_masks: int = 2
    freq_mask_width: int = 6


def _uniform(
    generator: torch.Generator | None, shape: tuple[int, ...], device: torch.device
) -> torch.Tensor:
    # draw on the generator's own device (a CPU generator may drive a CUDA batch)
    source = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=source).to(device)


def warp_spectrograms(
    x: torch.Tensor,
    settings: LogMel,
    augment: AudioAugment,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Per-sample time shift, tempo and frequency warp of (B, n_mels, frames), one grid_sample."""
    batch, n_mels, frames = x.shape
    amount = (_uniform(generator, (batch, 3), x.device) * 2 - 1).to(
        x.dtype
    )  # (B, 3) in [-1, 1)
    shift = torch.round(amount[:, :1] * augment.shift * frames)  # (B, 1) whole frames
    rate, alpha = 1 + amount[:, 1:2] * augment.tempo, 1 + amount[:, 2:3] * augment.warp
    centre = (frames - 1) / 2
    time = torch.arange(frames, device=x.device, dtype=x.dtype)
    source_time = (
        centre + (time - centre) * rate - shift
    )  # (B, frames), frame read by each output frame
    # output band centred at f reads the input at f / alpha, as a fractional band index
    edges = _hz_to_mel(mel_frequencies(settings)).to(x)  # (n_mels + 2,), evenly spaced
    centres_hz = _mel_to_hz(edges[1:-1])
    source_band = (_hz_to_mel(centres_hz / alpha) - edges[1]) / (
        edges[2] - edges[1]
    )  # (B, n_mels)
    grid = torch.stack(
        [
            (2 * source_time / max(frames - 1, 1) - 1)[:, None, :].expand(
                -1, n_mels, -1
            ),
            (2 * source_band / max(n_mels - 1, 1) - 1)[:, :, None].expand(
                -1, -1, frames
            ),
        ],
        dim=-1,
    )  # (B, n_mels, frames, 2) as (x=time, y=band) in [-1, 1]
    # sample above the per-recording floor so what moves in from outside is silence
    floor = x.amin(dim=(1, 2), keepdim=True)
    moved = F.grid_sample(
        (x - floor)[:, None], grid, padding_mode="zeros", align_corners=True
    )
    return moved[:, 0] + floor


def mask_spectrograms(
    x: torch.Tensor, augment: AudioAugment, generator: torch.Generator | None
) -> torch.Tensor:
    """SpecAugment: zero (the normalised mean) random band and frame ranges, per sample."""
    batch, n_mels, frames = x.shape
    keep = torch.ones_like(x, dtype=torch.bool)
    axes = (
        (augment.freq_masks, augment.freq_mask_width, n_mels, 1),
        (augment.time_masks, augment.time_mask_width, frames, 2),
    )
    for count, width, size, axis in axes:
        if count <= 0 or width <= 0:
            continue
        draw = _uniform(generator, (batch, count, 2), x.device)
        widths = torch.floor(
            draw[..., 0] * (min(width, size) + 1)
        )  # (B, count) in [0, width]
        starts = torch.floor(draw[..., 1] * (size - widths + 1))
        position = torch.arange(size, device=x.device)
        hit = (position >= starts[..., None]) & (
            position < (starts + widths)[..., None]
        )
        keep &= ~hit.any(1).unsqueeze(3 - axis)  # (B, n_mels, 1) or (B, 1, frames)
    return x.masked_fill(~keep, 0.0)


def normalize_spectrograms(
    x: torch.Tensor, normalize: str | tuple[float, float]
) -> torch.Tensor:
    """ "recording": each clip to zero mean, unit std (removes loudness and level);
    (mean, std): dataset-wide constants."""
    if normalize == "recording":
        mean, std = x.mean(dim=(1, 2), keepdim=True), x.std(dim=(1, 2), keepdim=True)
        return (x - mean) / (std + 1e-5)
    mean, std = normalize
    return (x - mean) / std


class SpectrogramBatches:
    """A split of log-mel spectrograms held in memory (a `MemorySource`).

    Features are float16 (N, n_mels, frames); `get_batch` returns float32
    (B, 1, n_mels, frames) normalised inputs and int64 labels, augmented with
    `augment` (all randomness from `generator`) when `train` is true.

    Example:
        >>> source = SpectrogramBatches(features, labels, LogMel(), AudioAugment())
        >>> x, y = source.get_batch(torch.arange(64), torch.Generator().manual_seed(0), train=True)
    """

    def __init__(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        settings: LogMel,
        augment: AudioAugment | None = None,
        normalize: str | tuple[float, float] = "recording",
    ) -> None:
        if normalize != "recording" and not (
            isinstance(normalize, tuple) and len(normalize) == 2
        ):
            raise UsageError(
                f"normalize must be 'recording' or (mean, std), got {normalize!r}."
            )
        self.features, self.labels = features, labels
        self.settings, self.augment, self.normalize = settings, augment, normalize

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> SpectrogramBatches:
        moved = (self.features.to(device), self.labels.to(device))
        return SpectrogramBatches(*moved, self.settings, self.augment, self.normalize)

    def get_batch(
        self, indices: torch.Tensor, generator: torch.Generator | None, train: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        indices = indices.to(self.features.device)
        x = self.features[indices].float()  # (B, n_mels, frames)
        augment = self.augment if train else None
        if augment is not None and (augment.shift or augment.tempo or augment.warp):
            x = warp_spectrograms(x, self.settings, augment, generator)
        x = normalize_spectrograms(x, self.normalize)
        if augment is not None:
            x = mask_spectrograms(x, augment, generator)
        return x.unsqueeze(1), self.labels[indices]


@dataclass(frozen=True)
class AudioOptions:
    """How a reader turns recordings into batches.

    `normalize` is "recording" (each clip on its own: removes loudness and level,
    which differ by speaker and microphone) or "dataset" (train mean and std).
    Validation is a seeded `val_fraction` of the training recordings. Features are
    cached under `cache_dir` (default `~/.cache/torchsmith`).

    Example:
        >>> AudioOptions(features=LogMel(n_mels=32), augment=None, seed=1)
    """

    features: LogMel = field(default_factory=LogMel)
    augment: AudioAugment | None = field(default_factory=AudioAugment)
    normalize: str = "recording"
    val_fraction: float = 0.1
    seed: int = 0
    cache_dir: str | None = None


def load_fsdd(
    data_dir: str | Path, split: str = "standard", options: AudioOptions | None = None
) -> DataBundle:
    """The Free Spoken Digit Dataset as log-mel spectrograms, classes "0".."9".

    `split="standard"`: takes 0-4 of every speaker are the test set, 5-49 train;
    `split="speaker:NAME"`: all of NAME's recordings, and only those, are the test set.

    Example:
        >>> load_fsdd("../shared/data/fsdd", "speaker:theo").info.input_shape
        (1, 40, 51)
    """
    root = Path(data_dir)
    folder = root / "recordings" if (root / "recordings").is_dir() else root
    if not folder.is_dir():
        raise UsageError(
            f"FSDD folder {root} does not exist; expected fsdd/recordings/*.wav."
        )
    records = _match_files(folder, FSDD_PATTERN)
    if split == "standard":
        test = [int(record["take"]) < 5 for record in records]
    elif split.startswith("speaker:"):
        test = _speaker_mask(records, split)
    else:
        raise UsageError(
            f"FSDD split must be 'standard' or 'speaker:NAME', got {split!r}."
        )
    return _bundle(
        records, test, [str(d) for d in range(10)], options or AudioOptions()
    )


def load_wavfolder(
    path: str | Path,
    pattern: str | None = None,
    split: str | None = None,
    options: AudioOptions | None = None,
) -> DataBundle:
    """WAV files as log-mel spectrograms, labelled by folder or by file name.

    Without `pattern`: `path/<class>/*.wav`, or `path/train/<class>/` plus an optional
    `path/test/<class>/`. With `pattern`: a regex that must match each file name under
    `path`, with a named group `label` and optionally `speaker`; `split="speaker:NAME"`
    then holds that speaker out as the test set.

    Example:
        >>> load_wavfolder("clips", r"(?P<label>[a-z]+)_(?P<speaker>[a-z]+)_\\d+\\.wav")
    """
    root = Path(path)
    if not root.is_dir():
        raise UsageError(f"WAV folder {root} does not exist or is not a folder.")
    if pattern is not None:
        records = _match_files(root, pattern)
        test = _speaker_mask(records, split) if split else [False] * len(records)
    elif split is not None:
        raise UsageError(
            "split='speaker:NAME' needs a pattern with a (?P<speaker>...) group."
        )
    else:
        records, test = _tree_records(root)
    names = sorted(
        {r["label"] for r in records}, key=lambda n: (not n.isdigit(), n.zfill(12))
    )
    return _bundle(records, test, names, options or AudioOptions())


def _match_files(folder: Path, pattern: str) -> list[dict[str, Any]]:
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise UsageError(
            f"file-name pattern {pattern!r} is not a valid regex: {error}."
        ) from None
    if "label" not in regex.groupindex:
        raise UsageError(
            f"file-name pattern {pattern!r} needs a named group (?P<label>...)."
        )
    matches = [
        (file, regex.fullmatch(file.name)) for file in sorted(folder.rglob("*.wav"))
    ]
    if not matches:
        raise UsageError(f"no .wav files under {folder}; check the data directory.")
    unmatched = [file.name for file, match in matches if match is None]
    if unmatched:
        raise UsageError(
            f"{len(unmatched)} files under {folder} do not match {pattern!r}, e.g. "
            f"{unmatched[:3]}; fix the pattern or move those files."
        )
    return [
        {"path": file, "speaker": None, **match.groupdict()} for file, match in matches
    ]


def _speaker_mask(records: list[dict[str, Any]], split: str) -> list[bool]:
    speakers = sorted({r["speaker"] for r in records if r["speaker"] is not None})
    if not split.startswith("speaker:") or not speakers:
        raise UsageError(
            f"split={split!r}: expected 'speaker:NAME' and a file-name pattern "
            "with a (?P<speaker>...) group."
        )
    name = split.removeprefix("speaker:")
    if name not in speakers:
        raise UsageError(
            f"unknown speaker {name!r}; the speakers are: {', '.join(speakers)}."
        )
    return [record["speaker"] == name for record in records]


def _tree_records(root: Path) -> tuple[list[dict[str, Any]], list[bool]]:
    split_trees = [(root / "train", False), (root / "test", True)]
    records, test = [], []
    for tree, is_test in split_trees if (root / "train").is_dir() else [(root, False)]:
        folders = (
            sorted(p for p in tree.iterdir() if p.is_dir()) if tree.is_dir() else []
        )
        for folder in folders:
            files = sorted(folder.rglob("*.wav"))
            records += [
                {"path": f, "label": folder.name, "speaker": None} for f in files
            ]
            test += [is_test] * len(files)
    if not records:
        raise UsageError(
            f"no .wav files in class folders under {root}; expected <class>/*.wav."
        )
    return records, test


def _split(
    test: list[bool], val_fraction: float, seed: int
) -> tuple[torch.Tensor, ...]:
    """(train, val, test) indices; val is a seeded carve of the non-test recordings."""
    is_test = torch.tensor(test, dtype=torch.bool)
    pool = (~is_test).nonzero().flatten()
    pool = pool[
        torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))
    ]
    num_val = round(len(pool) * val_fraction)
    train, val = pool[num_val:].sort().values, pool[:num_val].sort().values
    if len(train) == 0:
        raise UsageError(
            "no training recordings are left after the test and validation splits."
        )
    return train, val, is_test.nonzero().flatten()


def _bundle(
    records: list[dict[str, Any]],
    test: list[bool],
    names: list[str],
    options: AudioOptions,
) -> DataBundle:
    if options.normalize not in ("recording", "dataset"):
        raise UsageError(
            f"normalize must be 'recording' or 'dataset', got {options.normalize!r}."
        )
    settings = options.features
    features = logmel_features(
        [r["path"] for r in records], settings, options.cache_dir
    )
    labels = torch.tensor([names.index(record["label"]) for record in records])
    train, val, test_indices = _split(test, options.val_fraction, options.seed)
    stats: Any = "recording"
    if options.normalize == "dataset":  # one mean and std over the training features
        stats = (
            float(features[train].float().mean()),
            float(features[train].float().std()),
        )

    def source(indices: torch.Tensor, augment: AudioAugment | None) -> Any:
        if len(indices) == 0:
            return None
        return SpectrogramBatches(
            features[indices], labels[indices], settings, augment, stats
        )

    normalize = stats if stats == "recording" else {"mean": stats[0], "std": stats[1]}
    info = DataInfo(
        "audio", len(names), (1, settings.n_mels, settings.frames), names,
        preprocessing={"kind": "logmel", **asdict(settings), "normalize": normalize},
    )  # fmt: skip
    splits = (
        source(train, options.augment),
        source(val, None),
        source(test_indices, None),
    )
    return DataBundle(*splits, info)


def preprocess_files(
    paths: list[str | Path], preprocessing: dict[str, Any]
) -> torch.Tensor:
    """Model inputs (B, 1, n_mels, frames) for WAV files, exactly as training built them.

    Example:
        >>> preprocess_files(["one.wav"], bundle.info.preprocessing).shape
        torch.Size([1, 1, 40, 51])
    """
    settings = LogMel.from_dict(preprocessing)
    waves = torch.stack([_fixed_waveform(Path(path), settings) for path in paths])
    features = (
        log_mel(waves, settings).half().float()
    )  # the float16 rounding of the cache
    normalize = preprocessing["normalize"]
    if normalize != "recording":
        normalize = (normalize["mean"], normalize["std"])
    return normalize_spectrograms(features, normalize).unsqueeze(1)
