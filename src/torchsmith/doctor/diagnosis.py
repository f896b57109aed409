"""What a NaN/Inf replay found (`NanReport`) and what it means (`diagnose`)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from torchsmith.doctor.data_scan import format_stats, json_float

HUGE_GRAD_NORM = 1e4  # a finite gradient norm this large before a failure: divergence
RECENT_NORMS = 10  # gradient norms looked at for a rising trend


@dataclass
class NanReport:
    """Where the first NaN/Inf of a failing step appeared, why, and what to do.

    `stage` is "input", "parameters", "forward", "loss", "backward" or "none" (the
    replay was finite). `module` is the qualified name ("" for the model itself, None
    for the loss function); `positions` are batch rows with non-finite values and
    `samples` the matching dataset indices. `stats` maps "input", "output",
    "grad_output" and "grad" to `tensor_stats` dicts.

    Example:
        >>> report = localize_nonfinite(model, loss_fn, x, y, step=120, epoch=3)
        >>> print(report.to_text())
    """

    step: int
    epoch: int
    precision: str = "fp32"
    lr: float | None = None
    stage: str = "none"
    module: str | None = None
    module_type: str | None = None
    detail: str = ""
    after: str | None = None  # the module that ran just before a forward event
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    positions: list[int] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)
    bad_parameters: list[str] = field(default_factory=list)
    loss: float | None = None
    fp32_finite: bool | None = None  # fp16 runs: is the same step finite in fp32?
    history: list[dict[str, float]] = field(default_factory=list)
    cause: str = ""
    advice: list[str] = field(default_factory=list)

    def where(self) -> str:
        """The module as users name it: "`head` (LogLayer)", "the model (Net)", or ""."""
        if self.module is None:
            return ""
        name = "the model" if self.module == "" else f"`{self.module}`"
        return f"{name} ({self.module_type})"

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON dict: non-finite floats become "nan", "inf" or "-inf"."""
        return _json_safe({key: getattr(self, key) for key in self.__dataclass_fields__})

    def to_text(self) -> str:
        """A console message: what was found, the cause, advice and recent steps."""
        lines = [
            (f"Non-finite values at step {self.step} (epoch {self.epoch}, precision {self.precision})."),
            f"Found: {_found_text(self)}",
        ]
        lines += [f"  {name:<12}{format_stats(s)}" for name, s in self.stats.items()]
        if self.positions:  # the first few: a message stays readable when the whole batch is bad
            mapped = f" = dataset samples {_first(self.samples)}" if self.samples else ""
            lines.append(f"  batch positions {_first(self.positions)}{mapped}")
        lines.append(f"Cause: {self.cause}")
        lines += [f"  - {line}" for line in self.advice]
        if self.history:
            lines.append("Recent steps:")
        for entry in self.history[-5:]:
            values = (f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in entry.items())
            lines.append("  " + "  ".join(values))
        return "\n".join(lines)


def _first(values: list[int], shown: int = 10) -> str:
    return str(values) if len(values) <= shown else f"{values[:shown]} ... ({len(values)} in all)"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return json_float(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def _found_text(report: NanReport) -> str:
    if report.stage == "input":
        return f"the batch itself holds NaN/Inf at positions {report.positions}."
    if report.stage == "parameters":
        names = ", ".join(report.bad_parameters)
        return f"weights or buffers hold NaN/Inf before the step: {names}."
    if report.stage == "forward":
        after = f", right after `{report.after}`" if report.after else ""
        return f"the forward of {report.where()} turned finite inputs into NaN/Inf{after}."
    if report.stage == "loss":
        return f"the model outputs are finite but the loss is {report.loss}."
    if report.stage == "backward":
        where = report.where() or "the loss function"
        return f"the forward and loss are finite; the backward of {where} produced the first NaN/Inf ({report.detail})."
    return "the replay of this step was finite in every module, the loss and the gradients."


def exploding(history: list[dict[str, float]]) -> bool:
    """Gradient norms (or, between log points, losses) mostly rising and far up over the
    recent steps, or one huge norm.

    The trainer reads gradient norms only at log points, but keeps every step's loss, so
    a divergence within the first steps shows in the losses: 2.3, 3.6e8, 1.5e16, ...

    Example:
        >>> exploding([{"grad_norm": 1.0}, {"grad_norm": 8.0}, {"grad_norm": 60.0}])
        True
    """
    norms = [float(e["grad_norm"]) for e in history if e.get("grad_norm") is not None]
    finite = [n for n in norms if math.isfinite(n)][-RECENT_NORMS:]
    if finite and finite[-1] >= HUGE_GRAD_NORM:
        return True
    if _rising(finite, factor=10.0):
        return True
    losses = [float(e["loss"]) for e in history if e.get("loss") is not None]
    return _rising([v for v in losses if math.isfinite(v)][-RECENT_NORMS:], factor=1000.0)


def _rising(values: list[float], factor: float) -> bool:
    if len(values) < 3:
        return False
    rises = sum(later > earlier for earlier, later in itertools.pairwise(values))
    return rises >= 0.7 * (len(values) - 1) and values[-1] >= factor * max(values[0], 1e-12)


_ADVICE = {
    "non-finite parameters": [
        (
            "An earlier step was not guarded, or a checkpoint with NaN weights was loaded: "
            "resume from an earlier checkpoint."
        ),
    ],
    "fp16 overflow": [
        "The same step is finite in fp32 but not in fp16, whose largest value is 65504.",
        ("Use `--precision bf16` (fp32's range in 16 bits), or `--precision fp32` on GPUs without bf16."),
    ],
    "non-finite loss": [
        (
            "Use `F.cross_entropy` on raw logits (it applies log_softmax stably), or clamp "
            "probabilities with an eps before the log."
        ),
    ],
    "not reproduced": [
        (
            "Replaying the step gave finite values everywhere: the failure depends on "
            "something the replay does not repeat (non-deterministic kernels, changed data, "
            "another precision)."
        ),
        ("Lower the learning rate or add `--clip-grad-norm 1.0`; rerun with the same seed to confirm."),
    ],
}


def _current_lr(report: NanReport) -> float | None:
    if report.lr is not None:
        return report.lr
    rates = [e["lr"] for e in report.history if e.get("lr") is not None]
    return float(rates[-1]) if rates else None


def _data_advice(report: NanReport) -> list[str]:
    kind = "dataset samples" if report.samples else "batch positions"
    return [
        (
            f"The batch holds NaN/Inf before the model runs, at {kind} "
            f"{report.samples or report.positions}: clean or remove them."
        ),
        ("Run `torchsmith doctor data` to list every non-finite, constant or mislabelled sample."),
        "If a transform produces the data, look for division by a zero std or log of 0.",
    ]


def _exploding_advice(report: NanReport) -> list[str]:
    lr = _current_lr(report)
    lower = f"`--lr {lr / 10:g}` (it was {lr:g})" if lr else "a 10x smaller `--lr`"
    return [
        (f"Gradient norms grew over the last steps until values overflowed: lower the learning rate, e.g. {lower}."),
        "Clip gradients with `--clip-grad-norm 1.0`, and consider a learning-rate warmup.",
    ]


def _module_advice(report: NanReport) -> tuple[str, list[str]]:
    """Advice for a forward or backward event located in a module (or the loss)."""
    where = report.where()
    if report.stage == "forward":
        return f"forward NaN in {report.module or report.module_type}", [
            (
                f"{where} returned NaN/Inf from finite inputs: log or sqrt of a negative "
                "number or of zero, division by zero, or exp/pow overflow."
            ),
            (
                "Guard the operation: `torch.log(x.clamp_min(1e-6))`, "
                "`torch.sqrt(x.clamp_min(1e-12))`, `x / (y + 1e-8)`, or a stable built-in "
                "(`F.log_softmax`, `F.softplus`, `torch.logsumexp`)."
            ),
        ]
    name = "the loss function" if report.module is None else report.module or report.module_type
    return f"backward-only non-finite in {name}", [
        (
            f"The forward of {where or 'the loss function'} is finite but its gradient is "
            "not: sqrt or norm at exactly 0, a fractional power of 0, acos/asin at +-1, "
            "or torch.where with NaN in the branch it does not select."
        ),
        (
            "Add an eps inside the operation: `torch.sqrt(x + 1e-12)`, "
            "`(x.pow(2).sum() + 1e-12).sqrt()` instead of `x.norm()`, or mask the input "
            "before `torch.where`."
        ),
    ]


def diagnose(report: NanReport) -> tuple[str, list[str]]:
    """A cause and advice for a `NanReport` (`localize_nonfinite` stores them on it).

    Causes, most specific first: "non-finite input data", "non-finite parameters",
    "fp16 overflow", "exploding gradient", "forward NaN in <module>",
    "backward-only non-finite in <module>", "non-finite loss", "not reproduced".

    Example:
        >>> cause, advice = diagnose(report)
        >>> cause
        'exploding gradient'
    """
    if report.stage == "input":
        return "non-finite input data", _data_advice(report)
    if report.stage == "parameters":
        names = ", ".join(report.bad_parameters[:5])
        first = f"The weights were already non-finite before this step: {names}."
        return "non-finite parameters", [first, *_ADVICE["non-finite parameters"]]
    if report.precision == "fp16" and report.fp32_finite is True:
        return "fp16 overflow", list(_ADVICE["fp16 overflow"])
    if exploding(report.history):
        return "exploding gradient", _exploding_advice(report)
    if report.stage in ("forward", "backward"):
        return _module_advice(report)
    if report.stage == "loss":
        first = (
            f"The model outputs are finite but the loss is {report.loss}: usually the "
            "log of a zero probability in a custom loss (softmax underflows to 0)."
        )
        return "non-finite loss", [first, *_ADVICE["non-finite loss"]]
    return "not reproduced", list(_ADVICE["not reproduced"])
