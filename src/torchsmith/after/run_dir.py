"""Reading a finished run directory back: its config, its preprocessing, its weights, its data.

`evaluate`, `predict` and `export` all start here, so each rebuilds exactly what training
saw: the same model from `config.yaml`, the normalisation saved in `preprocessing.json`,
and the weights of the chosen checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from torchsmith.config import RunConfig
from torchsmith.data.bundle import DataBundle, DataInfo
from torchsmith.errors import UsageError
from torchsmith.io.checkpoint import CheckpointCorrupt, load_checkpoint
from torchsmith.io.checkpoint_format import WEIGHTS_CHOICES
from torchsmith.io.files import safe_load_yaml
from torchsmith.io.run_lock import held_by_other

FINAL_WEIGHTS = "model.safetensors"
READ_RETRIES, READ_RETRY_S = 20, 0.1  # reading a checkpoint that training is replacing: up to 2 s


@dataclass
class Run:
    """A run directory as written by `torchsmith train`.

    Example:
        >>> run = Run.open("runs/simplenet-mnist-sample")  # doctest: +SKIP
        >>> model, used = run.build_model("best")  # doctest: +SKIP
    """

    path: Path
    config: RunConfig
    info: DataInfo
    preprocessing: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | Path) -> Run:
        """Read `config.yaml` (safe YAML) and `preprocessing.json`; UsageError if not a run."""
        path = Path(path)
        if not path.is_dir():
            raise UsageError(
                f"run directory {path} does not exist; pass the folder `torchsmith train` "
                f"wrote (its path is printed after training, e.g. runs/simplenet-mnist-sample-...)"
            )
        missing = [name for name in ("config.yaml", "preprocessing.json") if not (path / name).is_file()]
        if missing:
            raise UsageError(
                f"{path} is not a torchsmith run directory: it has no {' or '.join(missing)}. "
                f"Pass a folder written by `torchsmith train` (--run-dir)."
            )
        values = safe_load_yaml(path / "config.yaml") or {}
        if not isinstance(values, dict):
            raise UsageError(f"{path / 'config.yaml'} must hold a mapping, got {type(values).__name__}")
        config = RunConfig.from_dict(values, source="config")
        saved = _read_preprocessing(path / "preprocessing.json")
        info = DataInfo(
            modality=saved["modality"],
            num_classes=int(saved["num_classes"]),
            input_shape=tuple(int(v) for v in saved["input_shape"]),
            class_names=[str(n) for n in saved.get("class_names") or []],
            task=saved.get("task", "classification"),
            preprocessing=dict(saved.get("preprocessing") or {}),
        )
        return cls(path, config, info, info.preprocessing)

    def available_checkpoints(self) -> list[str]:
        """The names among best/last/final this run has files for."""
        found = [name for name in ("best", "last") if (self.path / "checkpoints" / name).is_dir()]
        return found + (["final"] if (self.path / FINAL_WEIGHTS).is_file() else [])

    def default_checkpoint(self) -> str:
        """`best` when the run saved one, else the final weights."""
        available = self.available_checkpoints()
        if "best" in available:
            return "best"
        if "final" in available:
            return "final"
        raise UsageError(
            f"run {self.path} has no weights to load: no checkpoints/best and no {FINAL_WEIGHTS} "
            f"(did training fail or is it still running?)" + ("; try --checkpoint last" if "last" in available else "")
        )

    def load_state_dict(self, checkpoint: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
        """The weights of `checkpoint` (best, last or final; None = default) and a label for them."""
        name = checkpoint or self.default_checkpoint()
        if name not in WEIGHTS_CHOICES:
            raise UsageError(f"--checkpoint must be one of {', '.join(WEIGHTS_CHOICES)}, got '{name}'")
        available = ", ".join(self.available_checkpoints()) or "none"
        if name == "final":
            file = self.path / FINAL_WEIGHTS
            if not file.is_file():
                raise UsageError(
                    f"run {self.path} has no final weights ({FINAL_WEIGHTS}): training did not "
                    f"finish. Available: {available}; choose one with --checkpoint."
                )
            return load_file(str(file)), "final"
        folder = self.path / "checkpoints" / name
        for attempt in range(READ_RETRIES + 1):
            # While training runs here, a save may be replacing this folder: read again shortly.
            retry = attempt < READ_RETRIES and held_by_other(self.path)
            if not folder.is_dir() and not retry:
                raise UsageError(
                    f"run {self.path} has no complete checkpoint '{name}'. Available: {available}; "
                    f"choose one with --checkpoint."
                )
            try:
                loaded = load_checkpoint(folder)  # verifies the manifest; training state is not used here
            except (CheckpointCorrupt, OSError) as error:
                if retry:
                    time.sleep(READ_RETRY_S)
                    continue
                raise CheckpointCorrupt(f"{error} Choose another with --checkpoint (available: {available}).") from None
            return loaded.model_state, f"{name} (step {loaded.step})"
        raise AssertionError("unreachable: the last attempt returns or raises")

    def build_model(self, checkpoint: str | None = None, trust_model_code: bool = False) -> tuple[nn.Module, str]:
        """The run's model in eval mode on the CPU with the checkpoint's weights loaded.

        A model from user code (`file.py:Class`) is imported only with `trust_model_code`."""
        from torchsmith.models import trust
        from torchsmith.models.registry import build_model

        trust.require_trust(self.config.model.name, trust_model_code, f"run {self.path} (config.yaml)")
        trust.check_recorded_hash(self.config.model.name, self.path)
        state_dict, label = self.load_state_dict(checkpoint)
        model = build_model(self.config.model.name, self.info, self.config.model.args)
        try:
            model.load_state_dict(state_dict)
        except RuntimeError as error:
            first = str(error).splitlines()[0]
            raise UsageError(
                f"the weights of run {self.path} ({label}) do not fit the model its config.yaml "
                f"builds ({self.config.model.name}): {first}. Was config.yaml edited?"
            ) from None
        return model.eval(), label

    def load_data(self, name: str | None = None, data_dir: str | None = None) -> DataBundle:
        """The run's dataset (or `name`), split with the run's seed, normalised and tokenised as the run was."""
        from torchsmith.data.registry import load_data

        data_config = self.config.data
        if name is not None or data_dir is not None:
            same = name in (None, data_config.name)  # another dataset does not inherit the run's folder
            data_config = dataclasses.replace(
                data_config,
                name=name or data_config.name,
                dir=data_dir if data_dir is not None else (data_config.dir if same else None),
            )
        if isinstance(self.preprocessing.get("tokenizer"), dict):
            # Text reads through the run's own tokenizer: the ids its weights learnt, on any data.
            options = {**data_config.options, "tokenizer": self.preprocessing["tokenizer"]}
            data_config = dataclasses.replace(data_config, options=options)
        bundle = load_data(data_config, self.config.train.seed)
        info = bundle.info
        if tuple(info.input_shape) != tuple(self.info.input_shape) or info.num_classes != self.info.num_classes:
            raise UsageError(
                f"data '{data_config.name}' gives inputs of shape {tuple(info.input_shape)} in "
                f"{info.num_classes} classes, but run {self.path} was trained on "
                f"{tuple(self.info.input_shape)} in {self.info.num_classes} classes"
            )
        for split in (bundle.train, bundle.val, bundle.test):
            if split is not None:
                apply_run_normalisation(split, self.preprocessing)
        return bundle


def apply_run_normalisation(source: Any, preprocessing: dict[str, Any]) -> None:
    """Use the run's saved mean/std on an in-memory image split (other data is left as built).

    Another dataset's own statistics would shift every input the model sees.
    """
    if preprocessing.get("kind") != "image" or not callable(getattr(source, "set_normalization", None)):
        return
    source.set_normalization(preprocessing["mean"], preprocessing["std"])


def data_split(bundle: DataBundle, split: str) -> Any:
    """One split of a bundle by name; UsageError naming the splits there are."""
    if split not in ("train", "val", "test"):
        raise UsageError(f"--split must be test, val or train, got '{split}'")
    source = getattr(bundle, split)
    if source is None:
        present = [s for s in ("train", "val", "test") if getattr(bundle, s) is not None]
        raise UsageError(f"this dataset has no {split} split; choose one of {', '.join(present)} with --split")
    return source


def _read_preprocessing(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read {path}: {error}") from None
    required = ("modality", "num_classes", "input_shape")
    if not isinstance(value, dict) or any(key not in value for key in required):
        raise UsageError(f"{path} is damaged: it must be a JSON object with {', '.join(required)}")
    return value
