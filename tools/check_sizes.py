"""Fail when a source file grows past the line budget, so that growth becomes a decision.

Usage: python tools/check_sizes.py [--budget 400]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budget", type=int, default=400)
    args = parser.parse_args()
    too_long = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > args.budget:
            too_long.append(f"{path.relative_to(ROOT)}: {lines} lines (budget {args.budget})")
    for line in too_long:
        print(line)
    if too_long:
        print("split these files, or raise the budget deliberately in tools/check_sizes.py")
        return 1
    print(f"all source files within {args.budget} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
