"""Data checks for the doctor: tensor statistics, non-finite rows and a whole-dataset scan.

`scan_data` backs `torchsmith doctor data`; the helpers here are shared with the
pre-flight and NaN localisation in `torchsmith.doctor`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

# rows hashed at a time when looking for duplicates, to bound the temporary memory
_HASH_CHUNK_ROWS = 4096
_TEXT_LIMIT = 10  # indices shown per line in to_text()


def tensors_in(obj: Any) -> list[torch.Tensor]:
    """Every tensor in a tensor, or a (nested) tuple, list or dict of them, in order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for item in obj for t in tensors_in(item)]
    if isinstance(obj, dict):
        return [t for item in obj.values() for t in tensors_in(item)]
    return []


def json_float(value: float | None) -> float | str | None:
    """A float that strict JSON accepts: NaN and infinities become "nan", "inf", "-inf"."""
    if value is None or math.isfinite(value):
        return value
    return str(value)


def tensor_stats(tensor: torch.Tensor) -> dict[str, Any]:
    """Shape, dtype, NaN and Inf counts, and min/max/mean over the finite values.

    Example:
        >>> tensor_stats(torch.tensor([1.0, float("nan"), 3.0]))["mean"]
        2.0
    """
    values = tensor.detach()
    if not (values.is_floating_point() or values.is_complex()):
        values = values.double()
    finite = torch.isfinite(values)
    kept = values[finite].double()
    has_finite = kept.numel() > 0
    return {
        "shape": list(tensor.shape),
        "dtype": str(tensor.dtype).replace("torch.", ""),
        "min": kept.min().item() if has_finite else None,
        "max": kept.max().item() if has_finite else None,
        "mean": kept.mean().item() if has_finite else None,
        "nan": int(torch.isnan(values).sum().item()),
        "inf": int(torch.isinf(values).sum().item()),
    }


def format_stats(stats: dict[str, Any]) -> str:
    """One line for a `tensor_stats` dict: "shape (8, 4) float32  min -1  max 2  ..."."""

    def number(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4g}"

    return (
        f"shape {tuple(stats['shape'])} {stats['dtype']}  min {number(stats['min'])}  "
        f"max {number(stats['max'])}  mean {number(stats['mean'])}  "
        f"nan {stats['nan']}  inf {stats['inf']}"
    )


def nonfinite_rows(tensor: torch.Tensor) -> list[int]:
    """Positions along dim 0 whose values hold any NaN or Inf (none for integer tensors)."""
    if not tensor.is_floating_point() or tensor.ndim == 0 or tensor.numel() == 0:
        return []
    bad = ~torch.isfinite(tensor.detach().reshape(tensor.shape[0], -1)).all(dim=1)
    return bad.nonzero().flatten().tolist()


def out_of_range_rows(targets: torch.Tensor, num_classes: int, ignore_index: int | None = None) -> list[int]:
    """Positions whose label (any label, for per-position targets) is outside [0, num_classes).

    Labels equal to `ignore_index` (e.g. -100, padding for cross entropy) are accepted.
    """
    if targets.numel() == 0:
        return []
    labels = targets.detach().reshape(targets.shape[0], -1)
    bad = (labels < 0) | (labels >= num_classes)
    if ignore_index is not None:
        bad &= labels != ignore_index
    return bad.any(dim=1).nonzero().flatten().tolist()


def _row_hashes(flat: torch.Tensor) -> torch.Tensor:
    """A 64-bit hash of each row's bytes (int64 products wrap around, as a hash wants)."""
    generator = torch.Generator().manual_seed(0)
    hashes = []
    for start in range(0, flat.shape[0], _HASH_CHUNK_ROWS):
        rows = flat[start : start + _HASH_CHUNK_ROWS].cpu().contiguous()
        chunk = rows.view(torch.uint8)  # (rows, bytes)
        pad = chunk.new_zeros(chunk.shape[0], (-chunk.shape[1]) % 8)
        chunk = torch.cat([chunk, pad], dim=1)  # a fresh, 8-byte aligned copy
        words = chunk.view(torch.int64)  # (rows, bytes / 8)
        if start == 0:
            coefficients = torch.randint(-(2**62), 2**62, (words.shape[1],), generator=generator)
            coefficients |= 1  # odd multipliers keep every word's bits in play
        hashes.append((words * coefficients).sum(dim=1))
    return torch.cat(hashes) if hashes else torch.empty(0, dtype=torch.int64)


def duplicate_groups(inputs: torch.Tensor) -> list[list[int]]:
    """Groups of sample indices whose inputs are bitwise identical (each group sorted, size >= 2).

    Rows are hashed first, then rows with equal hashes are compared exactly, so a hash
    collision never reports a false duplicate.
    """
    if inputs.shape[0] < 2:
        return []
    flat = inputs.detach().reshape(inputs.shape[0], -1)
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    _, inverse, counts = torch.unique(_row_hashes(flat), return_inverse=True, return_counts=True)
    groups: list[list[int]] = []
    for bucket in (counts > 1).nonzero().flatten().tolist():
        members = (inverse == bucket).nonzero().flatten().tolist()
        while len(members) > 1:  # split a bucket into exact-equality groups
            first, rest = members[0], members[1:]
            same = [i for i in rest if torch.equal(flat[first], flat[i])]
            if same:
                groups.append([first, *same])
            members = [i for i in rest if i not in same]
    return sorted(groups)


@dataclass
class DataScanReport:
    """What `scan_data` found; `has_errors` is true when training on this data would fail.

    Example:
        >>> report = scan_data(torch.zeros(4, 3), torch.tensor([0, 1, 1, 5]), num_classes=2)
        >>> report.label_out_of_range
        [3]
    """

    num_samples: int
    num_classes: int | None
    nonfinite: list[int] = field(default_factory=list)
    constant: list[int] = field(default_factory=list)
    label_out_of_range: list[int] = field(default_factory=list)
    label_min: int | None = None
    label_max: int | None = None
    class_counts: list[int] = field(default_factory=list)
    imbalance_ratio: float | None = None  # largest class / smallest non-empty class
    missing_classes: list[int] = field(default_factory=list)
    duplicate_groups: list[list[int]] = field(default_factory=list)
    conflicting_duplicates: list[list[int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def has_errors(self) -> bool:
        return bool(self.nonfinite or self.label_out_of_range)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (no NaN or Inf values)."""
        result = asdict(self)
        result["imbalance_ratio"] = json_float(self.imbalance_ratio)
        result["has_errors"] = self.has_errors
        return result

    def to_text(self) -> str:
        """A short human summary, errors first."""
        lines = [f"{self.num_samples} samples"]
        if self.num_classes is not None:
            lines[0] += f", {self.num_classes} classes"
        _list_line(lines, "error: samples with NaN/Inf inputs", self.nonfinite)
        if self.label_out_of_range:
            _list_line(
                lines,
                f"error: labels outside [0, {self.num_classes}) (found min {self.label_min}, "
                f"max {self.label_max}) in samples",
                self.label_out_of_range,
            )
        _list_line(lines, "warning: constant samples (zero variance)", self.constant)
        if self.duplicate_groups:
            extra = sum(len(group) - 1 for group in self.duplicate_groups)
            shown = "; ".join(_short(g) for g in self.duplicate_groups[:_TEXT_LIMIT])
            lines.append(f"warning: {extra} exact duplicate samples, groups: {shown}")
        if self.conflicting_duplicates:
            shown = "; ".join(_short(g) for g in self.conflicting_duplicates[:_TEXT_LIMIT])
            lines.append(f"warning: identical inputs with different labels: {shown}")
        if self.class_counts:
            lines.append(f"class counts: {self.class_counts}")
        if self.missing_classes:
            lines.append(f"warning: classes with no samples: {_short(self.missing_classes)}")
        elif self.imbalance_ratio is not None:
            lines.append(f"imbalance ratio (largest/smallest class): {self.imbalance_ratio:.2f}")
        lines.extend(self.notes)
        return "\n".join(lines)


def _short(indices: list[int]) -> str:
    shown = ", ".join(str(i) for i in indices[:_TEXT_LIMIT])
    return shown + (f", ... ({len(indices)} in all)" if len(indices) > _TEXT_LIMIT else "")


def _list_line(lines: list[str], title: str, indices: list[int]) -> None:
    if indices:
        lines.append(f"{title}: {_short(indices)}")


def scan_data(inputs: torch.Tensor, targets: torch.Tensor, num_classes: int | None = None) -> DataScanReport:
    """Scan a whole split held in tensors for problems that break or bias training.

    Finds samples with NaN/Inf, constant (zero-variance) samples, labels outside
    [0, num_classes), class counts and imbalance, and exact duplicate inputs (and
    duplicates whose labels disagree). Integer targets are labels; floating targets
    (soft labels, regression) are only checked for NaN/Inf.

    Example:
        >>> report = scan_data(images, labels, num_classes=10)
        >>> print(report.to_text())
    """
    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(
            f"inputs and targets must hold the same number of samples, got "
            f"{inputs.shape[0]} inputs and {targets.shape[0]} targets"
        )
    report = DataScanReport(num_samples=inputs.shape[0], num_classes=num_classes)
    report.nonfinite = nonfinite_rows(inputs)
    if inputs.ndim > 1 and inputs[0].numel() > 1:
        flat = inputs.detach().reshape(inputs.shape[0], -1)
        flat = flat.to(torch.uint8) if flat.dtype == torch.bool else flat
        report.constant = (flat.amax(dim=1) == flat.amin(dim=1)).nonzero().flatten().tolist()
    report.duplicate_groups = duplicate_groups(inputs)
    if targets.is_floating_point():
        report.notes.append("targets are floating point: label checks skipped")
        bad_targets = nonfinite_rows(targets)
        report.nonfinite = sorted(set(report.nonfinite) | set(bad_targets))
        return report
    _scan_labels(report, targets, num_classes)
    return report


def _scan_labels(report: DataScanReport, targets: torch.Tensor, num_classes: int | None) -> None:
    if targets.numel() == 0:
        return
    report.label_min, report.label_max = int(targets.min()), int(targets.max())
    if num_classes is None:
        num_classes = max(report.label_max + 1, 1)
        report.notes.append(f"num_classes not given: assumed {num_classes} from the largest label")
    report.label_out_of_range = out_of_range_rows(targets, num_classes)
    if targets.ndim == 1:
        labels = targets.detach().cpu().long()
        valid = labels[(labels >= 0) & (labels < num_classes)]
        counts = torch.bincount(valid, minlength=num_classes).tolist()
        report.class_counts = counts
        report.missing_classes = [c for c, n in enumerate(counts) if n == 0]
        if not report.missing_classes:
            report.imbalance_ratio = max(counts) / min(counts)
        report.conflicting_duplicates = [
            group for group in report.duplicate_groups if len(set(labels[group].tolist())) > 1
        ]
