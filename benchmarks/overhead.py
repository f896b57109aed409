"""Per-step cost of torchsmith's Trainer against a hand-written loop (and Lightning, if installed).

The job: SimpleNet (784 -> 128 -> 10) on real MNIST, batch 64, SGD lr 0.01, the data as
normalised float tensors in memory, two epochs. All three reshuffle every epoch and build
each batch with one index gather. The hand-written loop is the PyTorch tutorial's loop
(`zero_grad`, forward, loss, `backward`, `step`, `running_loss += loss.item()`).
The Trainer runs with its defaults, the NaN guard included (`--no-guard` turns it off).

    python benchmarks/overhead.py --data-dir ../shared/data/mnist --repeats 5
    python benchmarks/overhead.py --data-dir ../shared/data/mnist --track mlflow   # + MLflow against without
    python benchmarks/overhead.py --progress bar   # the Trainer with its progress display on
    python benchmarks/overhead.py --data-dir ../shared/data/mnist --loader         # both fed one DataLoader

`benchmarks/notebook_overhead.py` runs this script inside a Jupyter kernel (`--progress auto`:
the widget bar and the live curves) and in a terminal, and compares the two ratios.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from common import DEFAULT_DATA, device_name, interleaved, median, paired_ratio
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchsmith import Trainer
from torchsmith.models.vision import ConvNet, SimpleNet
from torchsmith.train.guard import FiniteCheck


def load_mnist(data_dir: str) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import MNIST

    train = MNIST(data_dir, train=True, download=False)
    x = (train.data.float().unsqueeze(1) / 255.0 - 0.1307) / 0.3081  # (60000, 1, 28, 28)
    return x, train.targets.long()


MODELS = {"simplenet": lambda: SimpleNet(784, 10), "convnet": lambda: ConvNet((1, 28, 28), 10)}


def hand_loop(
    batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]], epochs: int, device: torch.device,
    check: bool, model_name: str,
) -> float:  # fmt: skip
    """The tutorial's loop over `batches()` each epoch; `check` adds the NaN guard's finite check
    (`FiniteCheck`, the same call the Trainer makes) before each step, without the rest of the Trainer."""
    torch.manual_seed(0)
    model = MODELS[model_name]().to(device)
    finite = FiniteCheck(list(model.parameters()), device) if check else None
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    criterion = nn.CrossEntropyLoss()
    running_loss = 0.0
    for _ in range(epochs):
        for inputs, targets in batches():
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(inputs), targets)
            loss.backward()
            if finite is not None and not finite.passes(loss.detach()):
                raise RuntimeError("non-finite loss or gradient")
            optimizer.step()
            running_loss += loss.item()
    return running_loss


def hand_written(
    x: torch.Tensor, y: torch.Tensor, epochs: int, check: bool = False, model_name: str = "simplenet"
) -> float:
    """The tutorial's loop over tensors in memory, reshuffled each epoch, batch 64."""
    generator = torch.Generator().manual_seed(0)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(x), generator=generator).to(x.device)
        for start in range(0, len(x), 64):
            index = order[start : start + 64]
            yield x[index], y[index]

    return hand_loop(batches, epochs, x.device, check, model_name)


def hand_written_loader(loader: DataLoader, epochs: int, check: bool = False, model_name: str = "simplenet") -> float:
    """The tutorial's loop over a DataLoader (the path a user's own Dataset takes)."""
    return hand_loop(lambda: loader, epochs, torch.device("cpu"), check, model_name)


def make_loader(x: torch.Tensor, y: torch.Tensor) -> DataLoader:
    """The same DataLoader for both sides: a TensorDataset, batch 64, reshuffled each epoch."""
    return DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))


def with_trainer(
    x: torch.Tensor | DataLoader,
    y: torch.Tensor | None,
    epochs: int,
    guard: bool,
    model_name: str = "simplenet",
    progress: str = "none",
) -> float:
    """The Trainer on tensors `(x, y)`, or on the DataLoader `x` when `y` is None."""
    torch.manual_seed(0)
    device = "cpu" if y is None else str(x.device)
    model = MODELS[model_name]().to(device)
    trainer = Trainer(
        model,
        loss=nn.CrossEntropyLoss(),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
        max_epochs=epochs,
        batch_size=64,
        progress=progress,
        nan_guard=guard,
        device=device,
    )
    trainer.fit(x if y is None else (x, y))
    return trainer.state.last_loss


def with_tracking(x: torch.Tensor, y: torch.Tensor, epochs: int, folder: Path, mlflow: bool) -> float:
    """The Trainer with its metrics.csv logger, and with or without MLflow tracking fed from the
    logger's rows (a SQLite store in `folder`): the cost of `--track mlflow` alone."""
    from torchsmith.callbacks.metrics_logger import MetricsLogger
    from torchsmith.callbacks.tracker_backends import MLflowBackend
    from torchsmith.callbacks.trackers import Tracker
    from torchsmith.config import RunConfig

    torch.manual_seed(0)
    model = MODELS["simplenet"]().to(x.device)
    run_dir = Path(tempfile.mkdtemp(dir=folder))
    logger = MetricsLogger(run_dir, tensorboard=False)
    callbacks: list = [logger]
    if mlflow:
        backend = MLflowBackend(f"sqlite:///{folder / 'mlflow.db'}", "overhead", run_dir.name)
        callbacks.append(Tracker(backend, logger, RunConfig(), run_dir, timeout_s=60))
    trainer = Trainer(
        model,
        loss=nn.CrossEntropyLoss(),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
        max_epochs=epochs,
        batch_size=64,
        progress="none",
        device=str(x.device),
        callbacks=callbacks,
    )
    trainer.fit((x, y))
    if mlflow:
        record = callbacks[-1].finish("completed")
        assert not record["not_sent"], record
    return trainer.state.last_loss


def with_lightning(x: torch.Tensor, y: torch.Tensor, epochs: int) -> float:
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = SimpleNet(784, 10)

        def training_step(self, batch, batch_idx):
            inputs, targets = batch
            return nn.functional.cross_entropy(self.model(inputs), targets)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    torch.manual_seed(0)
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="gpu" if x.is_cuda else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Module(), loader)
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA / "mnist"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--no-lightning", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where all three train (data included)")
    parser.add_argument(
        "--progress",
        default="none",
        choices=["none", "auto", "bar", "lines"],
        help="the Trainer's progress display (auto: a widget bar and live curves in a notebook)",
    )
    parser.add_argument(
        "--loader",
        action="store_true",
        help="feed both the hand-written loop and the Trainer one DataLoader(TensorDataset) (CPU)",
    )
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time by this process's CPU seconds, not wall time (a machine shared with other jobs)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--track", choices=["mlflow"], default=None, help="also time the Trainer with MLflow tracking against without"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x, y = load_mnist(args.data_dir)
    x, y = x.to(args.device), y.to(args.device)
    runners = {
        "hand-written": lambda: hand_written(x, y, args.epochs),
        "trainer": lambda: with_trainer(x, y, args.epochs, guard=True, progress=args.progress),
        "trainer-no-guard": lambda: with_trainer(x, y, args.epochs, guard=False),
    }
    if args.loader:  # the same job through one DataLoader on both sides
        loader = make_loader(x, y)
        runners = {
            "hand-written": lambda: hand_written_loader(loader, args.epochs),
            "trainer": lambda: with_trainer(loader, None, args.epochs, guard=True),
            "trainer-no-guard": lambda: with_trainer(loader, None, args.epochs, guard=False),
            "hand-written-check": lambda: hand_written_loader(loader, args.epochs, check=True),
        }
        args.no_lightning = True
    if not args.no_lightning:
        try:
            import lightning  # noqa: F401

            runners["lightning"] = lambda: with_lightning(x, y, args.epochs)
        except ImportError:
            print("lightning is not installed (pip install lightning): skipping it")
    folder = Path(tempfile.mkdtemp(prefix="overhead-"))
    if args.track:
        runners["trainer-logger"] = lambda: with_tracking(x, y, args.epochs, folder, mlflow=False)
        runners["trainer-mlflow"] = lambda: with_tracking(x, y, args.epochs, folder, mlflow=True)
    times = interleaved(runners, args.repeats, time.process_time if args.cpu_time else time.perf_counter)
    print(
        f"torch {torch.__version__}, {device_name(args.device)}, {args.epochs} epochs, "
        f"median of {args.repeats} interleaved repeats, {'CPU' if args.cpu_time else 'wall'} seconds"
    )
    print("ratios: median over rounds of (runner / hand-written in the same round)")
    for name, values in times.items():
        ratio = paired_ratio(times, name, "hand-written")
        print(f"{name:18s} median {median(values):7.2f} s   ratio {ratio:.3f}")
    if args.track:
        tracking = paired_ratio(times, "trainer-mlflow", "trainer-logger")
        print(f"tracking cost: trainer-mlflow / trainer-logger (metrics.csv alone) = {tracking:.3f}")
    guard = paired_ratio(times, "trainer", "trainer-no-guard")
    print(f"guard cost: trainer / trainer-no-guard = {guard:.3f}")
    if args.loader:
        check = paired_ratio(times, "hand-written-check", "hand-written")
        print(f"the guard's finite check alone in the hand loop: hand-written-check / hand-written = {check:.3f}")
    path = "DataLoader" if args.loader else "in-memory"
    print(f"overhead ratio (trainer / hand-written, {path}) = {paired_ratio(times, 'trainer', 'hand-written'):.3f}")


if __name__ == "__main__":
    main()
