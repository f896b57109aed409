"""Print a command of the README's Quick start, exactly as written there, for CI to run.

CI runs what a new user types: the Quick start's first command (set up and train on the
embedded default) and its second (set up and run the tests), read from README.md rather than
copied into .ci/run, so the two cannot drift apart.

Usage: python3 tools/readme_commands.py README.md N     # N = 1 or 2
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def quick_start_commands(readme: str) -> list[str]:
    """The commands of the fenced bash blocks in the `## Quick start` section, in order."""
    section = re.search(r"^## Quick start\n(.*?)(?=^## )", readme, re.S | re.M)
    if section is None:
        raise SystemExit("README.md has no '## Quick start' section")
    blocks = re.findall(r"```bash\n(.*?)```", section.group(1), re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print(__doc__, file=sys.stderr)
        return 2
    commands = quick_start_commands(Path(argv[0]).read_text(encoding="utf-8"))
    index = int(argv[1]) - 1
    if not 0 <= index < len(commands):
        print(f"the Quick start has {len(commands)} commands, not {argv[1]}", file=sys.stderr)
        return 2
    print(commands[index])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
