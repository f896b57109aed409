"""The Trainer's overhead inside a Jupyter kernel, with the widget bar and live curves on, against
the same benchmark in a terminal with the text bar on: the two ratios (trainer / hand-written
loop, each measured in its own environment, interleaved repeats) should agree within noise.

    python benchmarks/notebook_overhead.py --repeats 3 --epochs 1

The kernel runs `benchmarks/overhead.py --progress auto` (`%run`); the terminal runs it as a
subprocess with `--progress bar`. Needs jupyter_client, ipykernel and ipywidgets.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RATIO = re.compile(r"overhead ratio \(trainer / hand-written\) = ([0-9.]+)")


def in_kernel(arguments: list[str]) -> str:
    """overhead.py run inside a fresh Jupyter kernel; its standard output."""
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3", cwd=str(HERE.parent))
    printed: list[str] = []

    def keep(message: dict) -> None:
        if message["msg_type"] == "stream" and message["content"]["name"] == "stdout":
            printed.append(message["content"]["text"])

    try:
        code = f"import sys\nsys.path.insert(0, {str(HERE)!r})\n%run {HERE / 'overhead.py'} {' '.join(arguments)}"
        reply = client.execute_interactive(code, timeout=3600, output_hook=keep)
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"the benchmark failed in the kernel: {reply['content']}")
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    return "".join(printed)


def in_terminal(arguments: list[str]) -> str:
    command = [sys.executable, str(HERE / "overhead.py"), *arguments]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    common = ["--repeats", str(args.repeats), "--epochs", str(args.epochs), "--no-lightning"]
    common += ["--data-dir", args.data_dir] if args.data_dir else []
    kernel = in_kernel([*common, "--progress", "auto"])
    terminal = in_terminal([*common, "--progress", "bar"])
    print("in a Jupyter kernel (widget bar and live curves):\n" + kernel)
    print("in a terminal (text bar):\n" + terminal)
    ratios = [float(RATIO.search(text).group(1)) for text in (kernel, terminal)]  # type: ignore[union-attr]
    print(f"overhead ratio in the kernel {ratios[0]:.3f}, in the terminal {ratios[1]:.3f}")
    print(f"kernel / terminal = {ratios[0] / ratios[1]:.3f}")


if __name__ == "__main__":
    main()
