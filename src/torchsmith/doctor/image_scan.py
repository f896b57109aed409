"""`torchsmith doctor data` for image files: sizes, modes, formats, duplicates, broken files."""

from __future__ import annotations

import hashlib
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchsmith.data.image_files import BrokenImage, Header, decode_file, oriented_size, parallel, read_header


@dataclass
class ImageFilesReport:
    files: int
    sizes: dict[str, Any] = field(default_factory=dict)  # min/median/max height and width
    modes: dict[str, int] = field(default_factory=dict)
    formats: dict[str, int] = field(default_factory=dict)
    duplicates: list[list[str]] = field(default_factory=list)  # files with identical bytes
    broken: list[dict[str, str]] = field(default_factory=list)

    def to_text(self) -> str:
        lines = [f"{self.files} image files"]
        if self.sizes:
            s = self.sizes
            lines.append(
                f"sizes (HxW): min {s['min']}  median {s['median']}  max {s['max']}  "
                f"({s['distinct']} distinct{'; mixed: pick --image-size' if s['distinct'] > 1 else ''})"
            )
        lines.append("modes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.modes.items())))
        lines.append("formats: " + ", ".join(f"{k} {v}" for k, v in sorted(self.formats.items())))
        lines.append(f"duplicate groups (identical files): {len(self.duplicates)}")
        lines += [f"  {' = '.join(Path(p).name for p in group[:4])}" for group in self.duplicates[:10]]
        lines.append(f"broken files (skipped when training): {len(self.broken)}")
        lines += [f"  {b['file']}: {b['reason']}" for b in self.broken[:20]]
        return "\n".join(lines)


def scan_image_files(files: list[str]) -> ImageFilesReport:
    """Read every header, decode every file once (in threads) and hash its bytes."""

    def check(path: str) -> tuple[Header, str]:
        header = read_header(path)
        decode_file(path, header, 3)
        with open(path, "rb") as handle:
            digest = hashlib.sha1(handle.read(), usedforsecurity=False).hexdigest()
        return header, digest

    results = parallel(check, files)
    report = ImageFilesReport(len(files))
    good: list[tuple[str, Header, str]] = []
    for path, result in zip(files, results, strict=True):
        if isinstance(result, BrokenImage):
            report.broken.append({"file": path, "reason": str(result)})
        else:
            good.append((path, *result))
    if good:
        sizes = [oriented_size(h) for _, h, _ in good]
        areas = sorted(sizes, key=lambda s: s[0] * s[1])
        median = areas[len(areas) // 2]
        report.sizes = {
            "min": f"{areas[0][0]}x{areas[0][1]}",
            "median": f"{median[0]}x{median[1]}",
            "max": f"{areas[-1][0]}x{areas[-1][1]}",
            "distinct": len(set(sizes)),
            "median_short_side": statistics.median(min(s) for s in sizes),
        }
        report.modes = dict(Counter(h.mode for _, h, _ in good))
        report.formats = dict(Counter(h.format for _, h, _ in good))
        groups: dict[str, list[str]] = {}
        for path, _, digest in good:
            groups.setdefault(digest, []).append(path)
        report.duplicates = [g for g in groups.values() if len(g) > 1]
    return report
