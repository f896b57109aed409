"""Predictions from a finished run: `torchsmith.load(run_dir).predict(inputs)`.

Raw inputs become model inputs through the preparer registered for the run's
`preprocessing["kind"]` (see `PREPARERS`); images are implemented here, and text and
audio runs plug in their own preparer under their kind.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from torchsmith.after.prediction_kinds import LabelPrediction, ValuePrediction
from torchsmith.after.preparers import prepare_logmel, prepare_table, prepare_words
from torchsmith.after.run_dir import Run
from torchsmith.data.bundle import DataInfo
from torchsmith.data.image_files import BrokenImage, decode_file, fit_to, read_header
from torchsmith.data.memory import ImageTensors
from torchsmith.data.photo_ops import center_crop
from torchsmith.errors import UsageError
from torchsmith.report.inline import run_html
from torchsmith.train.device import resolve_device
from torchsmith.train.outputs import OutputSelector

# (raw inputs, the run's preprocessing dict, its DataInfo) -> a batch of model inputs
Preparer = Callable[[list[Any], dict[str, Any], DataInfo], torch.Tensor]
CheckpointName = Literal["best", "last", "final"]
OTHER_MODALITY_SUFFIXES = {
    ".wav": "an audio file",
    ".flac": "an audio file",
    ".mp3": "an audio file",
    ".txt": "a text file",
    ".tsv": "a text file",
    ".csv": "a text file",
}


@dataclass
class Prediction:
    """Class probabilities (N, C) for N inputs, with the run's class names.

    Example:
        >>> p = Prediction(torch.tensor([[0.1, 0.9]]), ["cat", "dog"])
        >>> p.labels, p.top_k(2)
        (['dog'], [[('dog', 0.9...), ('cat', 0.1...)]])
    """

    probabilities: torch.Tensor  # (N, C) float32, rows sum to 1
    class_names: list[str]

    @property
    def indices(self) -> torch.Tensor:
        """(N,) int64 index of the most probable class."""
        return self.probabilities.argmax(dim=1)

    @property
    def labels(self) -> list[str]:
        return [self.class_names[i] for i in self.indices.tolist()]

    @property
    def confidence(self) -> torch.Tensor:
        """(N,) probability of the predicted class."""
        return self.probabilities.max(dim=1).values

    def top_k(self, k: int) -> list[list[tuple[str, float]]]:
        """The `k` most probable (label, probability) pairs per input, most probable first."""
        if not 1 <= k <= len(self.class_names):
            raise UsageError(f"--top-k must be between 1 and the number of classes ({len(self.class_names)}), got {k}")
        values, indices = self.probabilities.topk(k, dim=1)
        return [
            [(self.class_names[i], float(v)) for v, i in zip(row_v, row_i, strict=True)]
            for row_v, row_i in zip(values.tolist(), indices.tolist(), strict=True)
        ]


class Predictor:
    """A trained model with the preprocessing it was trained with; built by `torchsmith.load`.

    Example:
        >>> predictor = torchsmith.load("runs/simplenet-mnist-sample")  # doctest: +SKIP
        >>> predictor.predict(["seven.png", "two.jpg"]).labels  # doctest: +SKIP
        ['7', '2']
    """

    def __init__(self, model: nn.Module, run: Run, checkpoint: str, device: str | torch.device = "cpu") -> None:
        self.run = run
        self.checkpoint = checkpoint  # e.g. "best (step 60)" or "final"
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    @property
    def class_names(self) -> list[str]:
        return self.run.info.class_names

    def _repr_html_(self) -> str:  # a notebook shows a loaded run as its results: headline and curves
        return run_html(self.run.path, self.checkpoint)

    @property
    def preprocessing(self) -> dict[str, Any]:
        return self.run.preprocessing

    def prepare(self, inputs: Any) -> torch.Tensor:
        """Raw inputs -> one batch of model inputs (N, *input_shape), as training built them.

        A float tensor is taken as already-prepared model inputs; a uint8 tensor as raw
        image pixels (C, H, W) or (N, C, H, W); strings and paths go to the run's preparer.
        """
        info = self.run.info
        kind = self.preprocessing.get("kind", info.modality)
        if isinstance(inputs, torch.Tensor) and not (kind == "image" and inputs.dtype == torch.uint8):
            return _as_model_inputs(inputs, info, kind)
        items = _as_items(inputs)
        preparer = PREPARERS.get(kind)
        if preparer is None:
            raise UsageError(
                f"predict does not yet support {info.modality} runs (preprocessing kind "
                f"'{kind}'); pass prepared tensors to predict, or use `torchsmith evaluate`, which "
                f"works for every run"
            )
        return preparer(items, self.preprocessing, info)

    def predict(self, inputs: Any, batch_size: int = 256) -> Prediction | ValuePrediction | LabelPrediction:
        """Class probabilities and labels for image paths, texts, WAV paths, table rows or tensors;
        values (regression) or the labels above the threshold (multi-label) for those tasks."""
        task = self.run.info.task
        if task not in ("classification", "regression", "multilabel"):
            raise UsageError(f"predict gives labels or values, but this run's task is '{task}'")
        if isinstance(inputs, torch.Tensor):
            prepared = self.prepare(inputs)
            batches: Iterable[torch.Tensor] = prepared.split(batch_size)
        else:
            items = _as_items(inputs)  # files are decoded a batch at a time
            batches = (self.prepare(items[s : s + batch_size]) for s in range(0, len(items), batch_size))
        with torch.no_grad():
            outputs = torch.cat([self.select(self.model(batch.to(self.device))).float().cpu() for batch in batches])
        if task == "regression":
            return ValuePrediction(self.target_units(outputs), self.class_names)
        if task == "multilabel":
            threshold = float((self.preprocessing.get("task_options") or {}).get("threshold", 0.5))
            return LabelPrediction(outputs.sigmoid(), self.class_names, threshold)
        return Prediction(outputs.softmax(dim=1), self.class_names)  # (N, C)

    def select(self, raw: Any) -> torch.Tensor:
        """The prediction in what the model returns (see `model.output`)."""
        return OutputSelector(self.run.config.model.output, announce=False)(raw)[0]

    def target_units(self, outputs: torch.Tensor) -> torch.Tensor:
        """Regression outputs (N, K) with the run's target standardisation undone."""
        values = outputs.reshape(outputs.shape[0], -1).double()
        scale = self.preprocessing.get("task_options") or {}
        if "mean" in scale:
            values = values * torch.tensor(scale["std"], dtype=torch.float64) + torch.tensor(
                scale["mean"], dtype=torch.float64
            )
        return values


def load(
    run_dir: str | Path,
    checkpoint: CheckpointName | None = None,
    device: str | torch.device = "cpu",
    *,
    trust_model_code: bool = False,
) -> Predictor:
    """The model of a finished run, ready to predict.

    `checkpoint`: "best", "last" (from `checkpoints/`, verified against their manifest) or
    "final" (`model.safetensors`); by default best when the run saved one, else final.
    A run whose model is user code (`file.py:Class`) is built only with `trust_model_code=True`:
    importing that file runs it.

    Example:
        >>> predictor = torchsmith.load("runs/convnet-mnist", checkpoint="final")  # doctest: +SKIP
    """
    run = Run.open(run_dir)
    model, label = run.build_model(checkpoint, trust_model_code)
    target = resolve_device(device) if isinstance(device, str) else device
    return Predictor(model, run, label, target)


# ----------------------------------------------------------------- preparers by kind
def prepare_images(items: list[Any], preprocessing: dict[str, Any], info: DataInfo) -> torch.Tensor:
    """Image files or uint8 (C, H, W) tensors -> (N, C, H, W) float, normalised as in training."""
    pixels = torch.stack([image_pixels(item, preprocessing) for item in items])  # (N, C, H, W) uint8
    # The training split's own batch builder, so the arithmetic is exactly what training did.
    source = ImageTensors(
        pixels, torch.zeros(len(items), dtype=torch.int64), preprocessing["mean"], preprocessing["std"]
    )
    batch, _ = source.get_batch(torch.arange(len(items)), None, train=False)
    return batch


def image_pixels(item: Any, preprocessing: dict[str, Any]) -> torch.Tensor:
    """One image (a file path or a uint8 tensor) as uint8 (C, H, W) in the run's channels and size.

    Runs that stored images at a `storage` size (any-size folders) get exactly the evaluation
    transform: shorter side resized (antialiased) to cover the storage size, centre crop to
    it, then the centre crop of the training size."""
    from torchvision.transforms.v2.functional import resize

    channels, size = int(preprocessing["channels"]), [int(v) for v in preprocessing["size"]]
    if isinstance(item, torch.Tensor):
        if item.dtype != torch.uint8 or item.dim() != 3:
            raise UsageError(
                f"an image tensor must be uint8 (C, H, W), got {item.dtype} of shape "
                f"{tuple(item.shape)}; pass float tensors as prepared model inputs instead"
            )
        image = _convert_channels(item, channels)
    elif isinstance(item, (str, Path)):
        image = read_image(Path(item), channels)
    else:
        raise UsageError(f"this run takes images: pass PNG/JPEG file paths or uint8 tensors, got {type(item).__name__}")
    if "storage" in preprocessing:
        storage = (int(preprocessing["storage"][0]), int(preprocessing["storage"][1]))
        return center_crop(fit_to(image, storage)[None], (size[0], size[1]))[0]
    if list(image.shape[1:]) != size:
        image = resize(image, size, antialias=True)  # (C, H, W) uint8 at the training size
    return image


def read_image(path: Path, channels: int) -> torch.Tensor:
    """Decode a PNG/JPEG/GIF/WebP file into uint8 (C, H, W) with `channels` channels."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    if path.suffix.lower() in OTHER_MODALITY_SUFFIXES:
        raise UsageError(
            f"{path} is {OTHER_MODALITY_SUFFIXES[path.suffix.lower()]}, but this run was trained "
            f"on images; pass PNG or JPEG files"
        )
    if not path.is_file():
        raise UsageError(f"input '{path}' is not a file: this run takes images, as PNG or JPEG file paths")
    if channels not in (1, 3):
        mode = ImageReadMode.UNCHANGED
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torchvision's decoders still work
            return _convert_channels(decode_image(read_file(str(path)), mode=mode), channels)
    try:  # the training store's reader: any format, EXIF orientation, 16-bit, CMYK
        return decode_file(str(path), read_header(str(path)), channels)
    except BrokenImage as error:
        raise UsageError(
            f"could not decode {path} as an image ({error}); pass JPEG, PNG, BMP, GIF, WebP or TIFF files"
        ) from None


def _convert_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    from torchvision.transforms.v2.functional import rgb_to_grayscale

    if image.shape[0] == channels:
        return image
    if image.shape[0] == 3 and channels == 1:
        return rgb_to_grayscale(image)
    if image.shape[0] == 1 and channels == 3:
        return image.expand(3, -1, -1).contiguous()
    raise UsageError(f"the run takes images with {channels} channel(s), got one with {image.shape[0]}")


PREPARERS: dict[str, Preparer] = {
    "image": prepare_images,
    "words": prepare_words,
    "logmel": prepare_logmel,
    "table": prepare_table,
}


def _as_items(inputs: Any) -> list[Any]:
    if isinstance(inputs, (str, Path)):
        return [inputs]
    if isinstance(inputs, torch.Tensor):
        return list(inputs.unbind(0)) if inputs.dim() == 4 else [inputs]
    if isinstance(inputs, Sequence) and len(inputs) > 0:
        return list(inputs)
    if isinstance(inputs, Sequence):
        raise UsageError("predict got no inputs")
    raise UsageError(f"predict takes file paths, strings or tensors, got {type(inputs).__name__}")


def _as_model_inputs(inputs: torch.Tensor, info: DataInfo, kind: str) -> torch.Tensor:
    shape = tuple(info.input_shape)
    if kind != "image":
        return inputs if inputs.dim() > len(shape) else inputs.unsqueeze(0)
    if tuple(inputs.shape) == shape:
        inputs = inputs.unsqueeze(0)  # one sample
    if tuple(inputs.shape[1:]) != shape or not inputs.is_floating_point():
        raise UsageError(
            f"this run's model takes float inputs of shape (N, {', '.join(map(str, shape))}), got "
            f"{inputs.dtype} {tuple(inputs.shape)}; pass uint8 tensors or image files to have them "
            f"resized and normalised"
        )
    return inputs
