"""Speech data: FSDD and WAV folders as in-memory log-mel spectrograms, with batched augmentation.

The features themselves (WAV reading, resampling, log-mel, the disk cache) live in
`torchsmith.data.audio_features`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from torchsmith.data.audio_features import (  # noqa: F401  (re-exported)
    FEATURE_VERSION,
    FSDD_PATTERN,
    LogMel,
    fix_length,
    fixed_waveform,
    hz_to_mel,
    log_mel,
    logmel_features,
    mel_filterbank,
    mel_frequencies,
    mel_to_hz,
    read_wav,
    resample,
)
from torchsmith.data.bundle import DataBundle, DataInfo
from torchsmith.errors import UsageError


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


def _uniform(generator: torch.Generator | None, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
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
    amount = (_uniform(generator, (batch, 3), x.device) * 2 - 1).to(x.dtype)  # (B, 3) in [-1, 1)
    shift = torch.round(amount[:, :1] * augment.shift * frames)  # (B, 1) whole frames
    rate, alpha = 1 + amount[:, 1:2] * augment.tempo, 1 + amount[:, 2:3] * augment.warp
    centre = (frames - 1) / 2
    time = torch.arange(frames, device=x.device, dtype=x.dtype)
    source_time = centre + (time - centre) * rate - shift  # (B, frames), frame read by each output frame
    # output band centred at f reads the input at f / alpha, as a fractional band index
    edges = hz_to_mel(mel_frequencies(settings)).to(x)  # (n_mels + 2,), evenly spaced
    centres_hz = mel_to_hz(edges[1:-1])
    source_band = (hz_to_mel(centres_hz / alpha) - edges[1]) / (edges[2] - edges[1])  # (B, n_mels)
    grid = torch.stack(
        [
            (2 * source_time / max(frames - 1, 1) - 1)[:, None, :].expand(-1, n_mels, -1),
            (2 * source_band / max(n_mels - 1, 1) - 1)[:, :, None].expand(-1, -1, frames),
        ],
        dim=-1,
    )  # (B, n_mels, frames, 2) as (x=time, y=band) in [-1, 1]
    # sample above the per-recording floor so what moves in from outside is silence
    floor = x.amin(dim=(1, 2), keepdim=True)
    moved = F.grid_sample((x - floor)[:, None], grid, padding_mode="zeros", align_corners=True)
    return moved[:, 0] + floor


def mask_spectrograms(x: torch.Tensor, augment: AudioAugment, generator: torch.Generator | None) -> torch.Tensor:
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
        widths = torch.floor(draw[..., 0] * (min(width, size) + 1))  # (B, count) in [0, width]
        starts = torch.floor(draw[..., 1] * (size - widths + 1))
        position = torch.arange(size, device=x.device)
        hit = (position >= starts[..., None]) & (position < (starts + widths)[..., None])
        keep &= ~hit.any(1).unsqueeze(3 - axis)  # (B, n_mels, 1) or (B, 1, frames)
    return x.masked_fill(~keep, 0.0)


def normalize_spectrograms(x: torch.Tensor, normalize: Literal["recording"] | tuple[float, float]) -> torch.Tensor:
    """ "recording": each clip to zero mean, unit std (removes loudness and level);
    (mean, std): dataset-wide constants."""
    if normalize == "recording":
        clip_mean = x.mean(dim=(1, 2), keepdim=True)
        clip_std = x.std(dim=(1, 2), keepdim=True)
        return (x - clip_mean) / (clip_std + 1e-5)
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
        normalize: Literal["recording"] | tuple[float, float] = "recording",
    ) -> None:
        if normalize != "recording" and not (isinstance(normalize, tuple) and len(normalize) == 2):
            raise UsageError(f"normalize must be 'recording' or (mean, std), got {normalize!r}.")
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
    cached under `cache_dir` (default `$TORCHSMITH_CACHE/audio`, else `~/.cache/torchsmith/audio`).

    Example:
        >>> AudioOptions(features=LogMel(n_mels=32), augment=None, seed=1)
    """

    features: LogMel = field(default_factory=LogMel)
    augment: AudioAugment | None = field(default_factory=AudioAugment)
    normalize: str = "recording"
    val_fraction: float = 0.1
    seed: int = 0
    cache_dir: str | None = None


def load_fsdd(data_dir: str | Path, split: str = "standard", options: AudioOptions | None = None) -> DataBundle:
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
        raise UsageError(f"FSDD folder {root} does not exist; expected fsdd/recordings/*.wav.")
    records = _match_files(folder, FSDD_PATTERN)
    if split == "standard":
        test = [int(record["take"]) < 5 for record in records]
    elif split.startswith("speaker:"):
        test = _speaker_mask(records, split)
    else:
        raise UsageError(f"FSDD split must be 'standard' or 'speaker:NAME', got {split!r}.")
    return _bundle(records, test, [str(d) for d in range(10)], options or AudioOptions())


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
        raise UsageError("split='speaker:NAME' needs a pattern with a (?P<speaker>...) group.")
    else:
        records, test = _tree_records(root)
    names = sorted({r["label"] for r in records}, key=lambda n: (not n.isdigit(), n.zfill(12)))
    return _bundle(records, test, names, options or AudioOptions())


def _match_files(folder: Path, pattern: str) -> list[dict[str, Any]]:
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise UsageError(f"file-name pattern {pattern!r} is not a valid regex: {error}.") from None
    if "label" not in regex.groupindex:
        raise UsageError(f"file-name pattern {pattern!r} needs a named group (?P<label>...).")
    matches = [(file, regex.fullmatch(file.name)) for file in sorted(folder.rglob("*.wav"))]
    if not matches:
        raise UsageError(f"no .wav files under {folder}; check the data directory.")
    unmatched = [file.name for file, match in matches if match is None]
    if unmatched:
        raise UsageError(
            f"{len(unmatched)} files under {folder} do not match {pattern!r}, e.g. "
            f"{unmatched[:3]}; fix the pattern or move those files."
        )
    return [
        {"path": file, "speaker": None, **match.groupdict()}
        for file, match in matches
        if match is not None  # all of them: unmatched files were rejected above
    ]


def _speaker_mask(records: list[dict[str, Any]], split: str) -> list[bool]:
    speakers = sorted({r["speaker"] for r in records if r["speaker"] is not None})
    if not split.startswith("speaker:") or not speakers:
        raise UsageError(
            f"split={split!r}: expected 'speaker:NAME' and a file-name pattern with a (?P<speaker>...) group."
        )
    name = split.removeprefix("speaker:")
    if name not in speakers:
        raise UsageError(f"unknown speaker {name!r}; the speakers are: {', '.join(speakers)}.")
    return [record["speaker"] == name for record in records]


def _tree_records(root: Path) -> tuple[list[dict[str, Any]], list[bool]]:
    split_trees = [(root / "train", False), (root / "test", True)]
    records, test = [], []
    for tree, is_test in split_trees if (root / "train").is_dir() else [(root, False)]:
        folders = sorted(p for p in tree.iterdir() if p.is_dir()) if tree.is_dir() else []
        for folder in folders:
            files = sorted(folder.rglob("*.wav"))
            records += [{"path": f, "label": folder.name, "speaker": None} for f in files]
            test += [is_test] * len(files)
    if not records:
        raise UsageError(f"no .wav files in class folders under {root}; expected <class>/*.wav.")
    return records, test


def _split(test: list[bool], val_fraction: float, seed: int) -> tuple[torch.Tensor, ...]:
    """(train, val, test) indices; val is a seeded carve of the non-test recordings."""
    is_test = torch.tensor(test, dtype=torch.bool)
    pool = (~is_test).nonzero().flatten()
    pool = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))]
    num_val = round(len(pool) * val_fraction)
    train, val = pool[num_val:].sort().values, pool[:num_val].sort().values
    if len(train) == 0:
        raise UsageError("no training recordings are left after the test and validation splits.")
    return train, val, is_test.nonzero().flatten()


def _bundle(
    records: list[dict[str, Any]],
    test: list[bool],
    names: list[str],
    options: AudioOptions,
) -> DataBundle:
    if options.normalize not in ("recording", "dataset"):
        raise UsageError(f"normalize must be 'recording' or 'dataset', got {options.normalize!r}.")
    settings = options.features
    features = logmel_features([r["path"] for r in records], settings, options.cache_dir)
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
        return SpectrogramBatches(features[indices], labels[indices], settings, augment, stats)

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


def preprocess_files(paths: Sequence[str | Path], preprocessing: dict[str, Any]) -> torch.Tensor:
    """Model inputs (B, 1, n_mels, frames) for WAV files, exactly as training built them.

    Example:
        >>> preprocess_files(["one.wav"], bundle.info.preprocessing).shape
        torch.Size([1, 1, 40, 51])
    """
    settings = LogMel.from_dict(preprocessing)
    waves = torch.stack([fixed_waveform(Path(path), settings) for path in paths])
    features = log_mel(waves, settings).half().float()  # the float16 rounding of the cache
    normalize = preprocessing["normalize"]
    if normalize != "recording":
        normalize = (normalize["mean"], normalize["std"])
    return normalize_spectrograms(features, normalize).unsqueeze(1)
