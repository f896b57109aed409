"""Datasets by name (`mnist`, `cifar10`, ...) or by `kind:PATH` (`imagefolder:photos/`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torchsmith.config import DataConfig
from torchsmith.data.bundle import DataBundle
from torchsmith.errors import UsageError, did_you_mean, short
from torchsmith.io.rank import writer_first

if TYPE_CHECKING:
    from torchsmith.data.audio import AudioOptions

Loader = Callable[[DataConfig, str | None, int], DataBundle]


@dataclass(frozen=True)
class DataEntry:
    name: str
    description: str
    load: Loader  # (config, path from "kind:PATH" or None, seed) -> DataBundle
    takes_path: bool = False


def _mnist_sample(config: DataConfig, path: str | None, seed: int) -> DataBundle:
    from torchsmith.data.vision import load_mnist_sample

    return load_mnist_sample(config.val_fraction, seed, config.augment)


def _digits(name: str) -> Loader:
    def load(config: DataConfig, path: str | None, seed: int) -> DataBundle:
        from torchsmith.data.vision import load_torchvision_digits

        return load_torchvision_digits(name, config.dir, config.val_fraction, seed, config.augment)

    return load


def _cifar10(config: DataConfig, path: str | None, seed: int) -> DataBundle:
    from torchsmith.data.vision import load_cifar10

    return load_cifar10(config.dir, config.val_fraction, seed, config.augment)


def _imagefolder(config: DataConfig, path: str | None, seed: int) -> DataBundle:
    from torchsmith.data.image_store import ImageOptions
    from torchsmith.data.vision import load_imagefolder

    folder = path or config.dir
    if not folder:
        raise UsageError("imagefolder needs a path: --data imagefolder:PATH")
    options = ImageOptions.from_options(config.options)
    return load_imagefolder(folder, config.val_fraction, seed, config.augment, options=options)


def _imagecsv(config: DataConfig, path: str | None, seed: int) -> DataBundle:
    from torchsmith.data.image_table import load_imagecsv

    if not path:
        raise UsageError("imagecsv needs a path: --data imagecsv:labels.csv (columns: image path, label)")
    return load_imagecsv(path, config.options, val_fraction=config.val_fraction, seed=seed, augment=config.augment)


def _audio_options(config: DataConfig, seed: int) -> AudioOptions:
    from torchsmith.data.audio import AudioAugment, AudioOptions

    augment = None if config.augment == "none" else AudioAugment()
    return AudioOptions(
        augment=augment,
        val_fraction=config.val_fraction,
        seed=seed,
        normalize=config.options.get("normalize", "recording"),
    )


def _fsdd(config: DataConfig, path: str | None, seed: int) -> DataBundle:
    from torchsmith.data.audio import load_fsdd

    if not config.dir:
        raise UsageError(
            "fsdd needs --data-dir: the folder holding recordings/<digit>_<speaker>_<n>.wav "
            "(see https://github.com/Jakobovski/free-spoken-digit-dataset)"
        )
    return load_fsdd(config.dir, config.split or "standard", _audio_options(config, seed))


def _wavfolder(config: DataConfig, path: str | None, seed: int) -> DataBundle:
    from torchsmith.data.audio import load_wavfolder

    folder = path or config.dir
    if not folder:
        raise UsageError("wavfolder needs a path: --data wavfolder:PATH")
    return load_wavfolder(folder, config.options.get("pattern"), config.split, _audio_options(config, seed))


def _textfile(config: DataConfig, path: str | None, seed: int) -> DataBundle:
    from torchsmith.data.text import load_textfile

    target = path or (f"{config.dir}/input.txt" if config.dir else None)
    if not target:
        raise UsageError("textfile needs a path: --data textfile:PATH (one UTF-8 text file)")
    options = config.options
    return load_textfile(
        target,
        block_size=int_option(options, "block_size", 128),
        val_fraction=config.val_fraction,
        tokenizer=options.get("tokenizer", "chars"),
        vocab_size=int_option(options, "vocab_size", 2000),
    )


def int_option(options: dict[str, Any], name: str, default: int) -> int:
    """A positive integer from `data.options`; a UsageError naming the key for anything else."""
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UsageError(
            f"data.options.{name} must be a positive integer, got {short(value)}; "
            f"e.g. --set data.options.{name}={default}"
        )
    return value


def _table(kind: str) -> Loader:
    def load(config: DataConfig, path: str | None, seed: int) -> DataBundle:
        from torchsmith.data.text import TokenizerOptions, load_table_dataset

        target = path or config.dir
        if not target:
            raise UsageError(f"{kind} needs a path: --data {kind}:PATH (a file, or a folder with train/dev files)")
        options = config.options
        return load_table_dataset(
            target,
            kind=kind,
            max_len=int_option(options, "max_len", 64),
            val_fraction=config.val_fraction,
            seed=seed,
            text_column=options.get("text_column"),
            label_column=options.get("label_column"),
            tokenizer=TokenizerOptions.from_options(options),
        )

    return load


def _csv_table(config: DataConfig, path: str | None, seed: int) -> DataBundle:
    from torchsmith.data.tables import load_table

    if not path:
        raise UsageError("table needs a path: --data table:PATH.csv (feature columns and a target column)")
    return load_table(path, config.options, config.val_fraction, seed)


def _sst2(config: DataConfig, path: str | None, seed: int) -> DataBundle:
    from torchsmith.data.text import TokenizerOptions, load_sst2

    if not config.dir:
        raise UsageError("sst2 needs --data-dir: the folder holding GLUE's SST-2 train.tsv and dev.tsv")
    return load_sst2(
        config.dir,
        max_len=int_option(config.options, "max_len", 64),
        val_fraction=config.val_fraction,
        seed=seed,
        tokenizer=TokenizerOptions.from_options(config.options),
    )


DATASETS: dict[str, DataEntry] = {
    entry.name: entry
    for entry in [
        DataEntry(
            "mnist-sample", "16,000 + 2,000 real MNIST digits shipped inside the package (offline)", _mnist_sample
        ),
        DataEntry("mnist", "MNIST handwritten digits, 60,000 + 10,000, 1x28x28", _digits("mnist")),
        DataEntry("fashion-mnist", "Fashion-MNIST clothing images, 60,000 + 10,000, 1x28x28", _digits("fashion-mnist")),
        DataEntry("cifar10", "CIFAR-10, 50,000 + 10,000 colour images, 3x32x32 (download or image tree)", _cifar10),
        DataEntry(
            "imagefolder",
            "imagefolder:PATH, one folder per class (with train/ and test/, or split); any size (--image-size)",
            _imagefolder,
            takes_path=True,
        ),
        DataEntry(
            "imagecsv",
            "imagecsv:labels.csv, image paths and labels from a table (several labels per row: multi-label)",
            _imagecsv,
            takes_path=True,
        ),
        DataEntry(
            "textfile",
            "textfile:PATH, one UTF-8 text for language models: characters, or tokenizer=bpe",
            _textfile,
            takes_path=True,
        ),
        DataEntry(
            "tinyshakespeare", "Tiny Shakespeare (--data-dir holds input.txt): characters, or tokenizer=bpe", _textfile
        ),
        DataEntry(
            "tsv",
            "tsv:PATH, text classification (any language) from a TSV file or a folder with train/dev files",
            _table("tsv"),
            takes_path=True,
        ),
        DataEntry(
            "csv",
            "csv:PATH, text classification (any language) from a CSV file or a folder with train/dev files",
            _table("csv"),
            takes_path=True,
        ),
        DataEntry(
            "table",
            "table:PATH.csv, numeric and categorical columns and a target (--set data.options.target=NAME)",
            _csv_table,
            takes_path=True,
        ),
        DataEntry("sst2", "SST-2 sentiment (GLUE layout: train.tsv, dev.tsv as the test split)", _sst2),
        DataEntry("fsdd", "Free Spoken Digit Dataset (WAV), log-mel features; --split standard|speaker:NAME", _fsdd),
        DataEntry(
            "wavfolder",
            "wavfolder:PATH, WAV files per class folder (or labels from --set data.options.pattern=REGEX)",
            _wavfolder,
            takes_path=True,
        ),
    ]
}


def load_data(config: DataConfig, seed: int) -> DataBundle:
    """Load the dataset a DataConfig names; `kind:PATH` names carry their path."""
    kind, sep, path = config.name.partition(":")
    entry = DATASETS.get(kind)
    if entry is None:
        hint = did_you_mean(kind, DATASETS)
        raise UsageError(f"unknown dataset '{config.name}'.{hint} Known: {', '.join(DATASETS)}")
    if sep and not entry.takes_path:
        raise UsageError(f"dataset '{kind}' takes no path; use --data-dir for its location")
    bundle = writer_first(lambda: entry.load(config, path or None, seed))  # under torchrun: built once
    for split in ("train", "val", "test"):
        source = getattr(bundle, split)
        if source is not None and len(source) == 0:
            raise UsageError(f"the {split} split of '{config.name}' is empty")
    return bundle
