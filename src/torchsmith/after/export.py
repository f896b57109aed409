"""`torchsmith export`: a run's model as ONNX, an ExportedProgram, TorchScript or safetensors,
checked against the eager model on real inputs from the run's data.

The batch dimension is dynamic, so the parity check runs at the batch size the export
used and at others (5 and 1). The run's preprocessing (class names, mean/std, input
shape) is written beside the file as `<output>.preprocessing.json`, so a deployment can
prepare inputs exactly as training did.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchsmith._version import __version__
from torchsmith.after.run_dir import Run
from torchsmith.data.loaders import make_batches
from torchsmith.errors import TorchsmithError, UsageError
from torchsmith.io.files import write_json

Runner = Callable[[torch.Tensor], Any]
EXPORT_BATCH = 16
CHECK_BATCHES = (EXPORT_BATCH, 5, 1)  # the export's batch size and two others
INPUT_NAME, OUTPUT_NAME = "input", "output"


class ExportError(TorchsmithError):
    """The model could not be exported, or the export does not match the eager model (exit 1)."""


@dataclass(frozen=True)
class ExportFormat:
    name: str
    suffix: str
    packages: tuple[str, ...]  # import names of the optional packages the format needs
    save: Callable[[nn.Module, torch.Tensor, Path], None]
    load: Callable[[Path, Run], Runner]


@dataclass
class ExportResult:
    """What `export_run` wrote and how far the export is from the eager model.

    Example:
        >>> result = export_run("runs/a", "onnx")  # doctest: +SKIP
        >>> result.max_difference < 1e-4  # doctest: +SKIP
        True
    """

    path: Path
    format: str
    preprocessing_path: Path
    differences: dict[int, float]  # batch size -> max |exported - eager|
    tolerance: float
    checkpoint: str

    @property
    def max_difference(self) -> float:
        return max(self.differences.values())


def export_run(
    run_dir: str | Path,
    format: str,
    output: str | Path | None = None,
    *,
    checkpoint: str | None = None,
    tolerance: float = 1e-4,
    data: str | None = None,
    data_dir: str | None = None,
    trust_model_code: bool = False,
) -> ExportResult:
    """Export a run's model (best checkpoint by default, else final) and check it on real inputs."""
    spec = get_format(format)
    if not tolerance > 0:
        raise UsageError(f"--tolerance must be positive, got {tolerance}")
    run = Run.open(run_dir)  # a folder that is no run is said before a missing package
    require_packages(spec)
    model, label = run.build_model(checkpoint, trust_model_code)
    batches = parity_batches(run, data, data_dir)
    path = Path(output) if output else run.path / "export" / f"model{spec.suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    runner = save_and_reload(spec, model, batches[0], path, run)
    differences = check_parity(model, runner, batches)
    result = ExportResult(path, format, Path(f"{path}.preprocessing.json"), differences, tolerance, label)
    write_json(result.preprocessing_path, preprocessing_record(run, result))
    bad = {b: d for b, d in differences.items() if not d <= tolerance}
    if bad:
        listed = ", ".join(f"batch {b}: {d:.3g}" for b, d in bad.items())
        raise ExportError(
            f"the {format} export at {path} does not match the eager model: max abs difference "
            f"{listed} exceeds the tolerance {tolerance:g}. Do not deploy it; a larger "
            f"--tolerance accepts it, another --format may export the model faithfully."
        )
    return result


def save_and_reload(spec: ExportFormat, model: nn.Module, example: torch.Tensor, path: Path, run: Run) -> Runner:
    """Write the export, then load it back the way a deployment would (for the parity check)."""
    try:
        spec.save(model, example, path)
        return spec.load(path, run)
    except TorchsmithError:
        raise
    except Exception as error:  # the exporters raise many types; all mean "this model did not export"
        raise ExportError(
            f"could not export {run.config.model.name} as {spec.name}: {type(error).__name__}: "
            f"{_first_line(error)}. Try another --format (exported-program, torchscript, safetensors)."
        ) from error


def get_format(name: str) -> ExportFormat:
    if name not in FORMATS:
        raise UsageError(f"unknown export format '{name}'; choose one of {', '.join(FORMATS)}")
    return FORMATS[name]


def require_packages(spec: ExportFormat) -> None:
    """UsageError naming the pip command when an optional package of the format is missing."""
    missing = [name for name in spec.packages if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(
            f"--format {spec.name} needs {', '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed: pip install {' '.join(missing)} "
            f"(or pip install 'torchsmith[export]')"
        )


def parity_batches(run: Run, data: str | None, data_dir: str | None) -> list[torch.Tensor]:
    """Real model inputs from the run's data (test split, else val, else train): one batch per
    size in CHECK_BATCHES, each holding different samples."""
    bundle = run.load_data(data, data_dir)
    source = bundle.test if bundle.test is not None else bundle.val if bundle.val is not None else bundle.train
    needed = sum(CHECK_BATCHES)
    if len(source) < needed:
        raise UsageError(f"the parity check needs {needed} samples of the run's data, the split has {len(source)}")
    batches = make_batches(
        source, batch_size=needed, train=False, seed=run.config.train.seed, device=torch.device("cpu")
    )
    inputs, _, _ = next(iter(batches.epoch(0)))  # (needed, *input_shape)
    inputs = inputs.contiguous()
    return list(inputs.split(list(CHECK_BATCHES)))


def check_parity(model: nn.Module, runner: Runner, batches: list[torch.Tensor]) -> dict[int, float]:
    """Max |exported - eager| per batch size; an output of the wrong shape is an ExportError."""
    differences = {}
    with torch.no_grad():
        for inputs in batches:
            eager = model(inputs).float()
            try:
                exported = torch.as_tensor(runner(inputs)).float()
            except Exception as error:  # e.g. a batch size the export fixed, meeting another one
                raise ExportError(
                    f"the exported model failed on a batch of {inputs.shape[0]} real inputs: "
                    f"{type(error).__name__}: {_first_line(error)}. The batch dimension was "
                    f"probably fixed at export (a Python int from x.shape in forward?)"
                ) from error
            if exported.shape != eager.shape:
                raise ExportError(
                    f"the export gives outputs of shape {tuple(exported.shape)} for a batch of "
                    f"{inputs.shape[0]}, the eager model {tuple(eager.shape)}: the batch dimension "
                    f"was not kept dynamic (a reshape with a fixed batch size in forward?)"
                )
            difference = (exported - eager).abs().max().item()
            differences[inputs.shape[0]] = difference if math.isfinite(difference) else math.inf
    return differences


def preprocessing_record(run: Run, result: ExportResult) -> dict[str, Any]:
    """What a deployment needs beside the file: inputs, outputs, classes, normalisation."""
    info = run.info
    return {
        "format": result.format,
        "file": result.path.name,
        "model": run.config.model.name,
        "checkpoint": result.checkpoint,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_shape": ["batch", *info.input_shape],
        "outputs": "logits, (batch, num_classes); softmax gives the class probabilities"
        if info.task == "classification"
        else "model outputs",
        "modality": info.modality,
        "task": info.task,
        "num_classes": info.num_classes,
        "class_names": info.class_names,
        "preprocessing": run.preprocessing,
        "parity": {
            "tolerance": result.tolerance,
            "max_abs_difference": {str(b): d for b, d in result.differences.items()},
        },
        "versions": {"torchsmith": __version__, "torch": torch.__version__},
    }


def _dynamic_batch() -> tuple[dict[int, Any]]:
    return ({0: torch.export.Dim("batch", min=1)},)


# ----------------------------------------------------------------- the formats
def _save_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    large = sum(p.numel() * p.element_size() for p in model.state_dict().values()) > 1.5 * 2**30
    # One self-contained file unless protobuf's 2 GiB limit forces weights into `<file>.data`.
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=True,
        dynamic_shapes=_dynamic_batch(),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        external_data=large,
        verbose=False,
    )


def _load_onnx(path: Path, run: Run) -> Runner:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda inputs: session.run(None, {INPUT_NAME: inputs.numpy()})[0]


def _save_exported_program(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    program = torch.export.export(model, (example,), dynamic_shapes=_dynamic_batch())
    torch.export.save(program, str(path))


def _load_exported_program(path: Path, run: Run) -> Runner:
    module: Runner = torch.export.load(str(path)).module()
    return module


def _save_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated in favour of torch.export; still works
        torch.jit.save(torch.jit.trace(model, example), str(path))


def _load_torchscript(path: Path, run: Run) -> Runner:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module: Runner = torch.jit.load(str(path), map_location="cpu")
    return module


def _save_safetensors(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(path))


def _load_safetensors(path: Path, run: Run) -> Runner:
    """A fresh model built from the run's config with the exported weights: the round trip."""
    from safetensors.torch import load_file

    from torchsmith.models.registry import build_model

    model = build_model(run.config.model.name, run.info, run.config.model.args)
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no message"


FORMATS: dict[str, ExportFormat] = {
    spec.name: spec
    for spec in [
        ExportFormat("onnx", ".onnx", ("onnx", "onnxscript", "onnxruntime"), _save_onnx, _load_onnx),
        ExportFormat("exported-program", ".pt2", (), _save_exported_program, _load_exported_program),
        ExportFormat("torchscript", ".torchscript.pt", (), _save_torchscript, _load_torchscript),
        ExportFormat("safetensors", ".safetensors", (), _save_safetensors, _load_safetensors),
    ]
}
