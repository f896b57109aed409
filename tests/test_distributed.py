"""Several processes: DDP through torchrun on the CPU (gloo), with real processes and hard timeouts.

The reference job: SimpleNet on the embedded MNIST sample, global batch 64, 100 steps. The
validation split takes 14,403 samples (an odd number), leaving 1,597 for training: 25 steps per
epoch whose last batch holds 61 samples (31 and 30 per rank), so 100 steps cross three epoch ends.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from torchsmith.cli.launch import launch_command
from torchsmith.data.loaders import MemoryBatches, make_batches
from torchsmith.data.memory import ImageTensors
from torchsmith.data.order import BatchOrder
from torchsmith.errors import UsageError

SRC = Path(__file__).resolve().parents[1] / "src"
SCRIPT = Path(__file__).with_name("distributed_script.py")
STEPS = 100
JOB = [
    "--max-steps",
    str(STEPS),
    "--batch-size",
    "64",
    "--val-fraction",
    "0.9001875",
    "--device",
    "cpu",
    "--quiet",
    "--checkpoint-every",
    "10",
    "--set",
    "train.log_every=1",
    "--set",
    "train.dist_timeout_s=20",
]
TIMEOUT = 150  # seconds for any one command: nothing may hang the suite
needs_proc = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds worker processes in /proc")


# ---------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def environment() -> dict[str, str]:
    # One thread per process, as torchrun gives each worker: two processes then use the two cores.
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def torchrun(nproc: int, *args: str, max_restarts: int = 0) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"localhost:{free_port()}",
        "--max-restarts",
        str(max_restarts),
        *args,
    ]


def run(command: list[str], log: Path) -> subprocess.CompletedProcess:
    with started(command, log) as process:
        process.wait(timeout=TIMEOUT)
    return subprocess.CompletedProcess(command, process.returncode, log.read_text(), "")


@contextlib.contextmanager
def started(command: list[str], log: Path) -> Iterator[subprocess.Popen]:
    """Start a command with its output in `log`; whatever happens, leave no process of it running."""
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=environment())
        try:
            yield process
        finally:
            if process.poll() is None:
                for pid in descendants(process.pid):  # torchrun's workers run in sessions of their own
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                process.kill()
                process.wait(timeout=30)


def descendants(pid: int) -> list[int]:
    children = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        with contextlib.suppress(OSError, ValueError, IndexError):
            children.setdefault(int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]), []).append(
                int(entry.name)
            )
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def worker(agent: int, rank: int) -> int:
    """The pid of the worker with RANK=`rank` started by the torchrun process `agent`."""
    for pid in descendants(agent):
        with contextlib.suppress(OSError):
            if f"\0RANK={rank}\0".encode() in b"\0" + Path(f"/proc/{pid}/environ").read_bytes():
                return pid
    raise AssertionError(f"no worker with RANK={rank} under process {agent}")


def wait_for(path: Path, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not path.exists():
        assert process.poll() is None, f"the run ended before {path.name} appeared:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"{path.name} did not appear:\n{log.read_text()}"
        time.sleep(0.02)


def losses(run_dir: Path) -> list[tuple[int, int, float]]:
    with (run_dir / "metrics.csv").open() as handle:
        return [(int(r["epoch"]), int(r["step"]), float(r["train_loss"])) for r in csv.DictReader(handle)]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model.safetensors"))


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def assert_losses_close(actual: list, expected: list, rtol: float = 1e-5) -> None:
    assert [row[:2] for row in actual] == [row[:2] for row in expected]
    worst = max(abs(a[2] - e[2]) / abs(e[2]) for a, e in zip(actual, expected, strict=True))
    assert worst <= rtol, f"train_loss differs by {worst:.2e} (relative)"


def assert_weights_close(actual: dict, expected: dict, atol: float = 1e-5) -> None:
    assert actual.keys() == expected.keys()
    worst = max(float((actual[k] - expected[k]).abs().max()) for k in expected)
    assert worst <= atol, f"weights differ by up to {worst:.2e}"


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("one") / "run"
    done = run(
        [sys.executable, "-m", "torchsmith", "train", *JOB, "--run-dir", str(run_dir)], run_dir.with_name("log.txt")
    )
    assert done.returncode == 0, done.stdout
    return run_dir


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Through the launcher: `torchsmith train --nproc-per-node 2` re-launches itself under torchrun."""
    run_dir = tmp_path_factory.mktemp("two") / "run"
    done = run(
        [
            sys.executable,
            "-m",
            "torchsmith",
            "train",
            *JOB,
            "--run-dir",
            str(run_dir),
            "--nproc-per-node",
            "2",
            "--rdzv-endpoint",
            f"localhost:{free_port()}",
        ],
        run_dir.with_name("log.txt"),
    )
    assert done.returncode == 0, done.stdout
    assert summary(run_dir)["processes"] == 2
    return run_dir


# ---------------------------------------------------------------------- several processes
@pytest.mark.distributed
def test_two_processes_train_exactly_like_one(one_process: Path, two_processes: Path) -> None:
    for run_dir in (one_process, two_processes):
        assert summary(run_dir)["status"] == "completed" and summary(run_dir)["steps"] == STEPS
        assert summary(run_dir)["epochs"] == 4  # three epoch ends with an uneven last batch
    assert len(losses(two_processes)) == STEPS + 4  # one row per step, one per epoch end
    assert_losses_close(losses(two_processes), losses(one_process))
    assert_weights_close(weights(two_processes), weights(one_process))
    # Only rank 0 wrote: one set of files, one TensorBoard event file.
    assert len(list((two_processes / "tb").iterdir())) == 1


@pytest.mark.distributed
def test_evaluation_on_two_processes_counts_each_sample_once(two_processes: Path) -> None:
    """The same weights evaluated in one process: the same accuracy on 14,403 validation samples
    (an odd count), and the test predictions gathered from both ranks in the same order."""
    from torchsmith import Trainer
    from torchsmith.config import DataConfig
    from torchsmith.data.registry import load_data
    from torchsmith.models.vision import SimpleNet

    bundle = load_data(DataConfig(val_fraction=0.9001875), seed=0)
    assert len(bundle.val) == 14403
    model = SimpleNet()
    model.load_state_dict(weights(two_processes))
    trainer = Trainer(model, device="cpu", progress="none")
    val = trainer.evaluate(bundle.val)
    reported = summary(two_processes)["val"]
    assert reported["accuracy"] == val["accuracy"]
    assert reported["loss"] == pytest.approx(val["loss"], rel=1e-6)
    collected: list = []
    test = trainer.evaluate(bundle.test, collect=collected)
    assert summary(two_processes)["test"]["accuracy"] == test["accuracy"]
    predictions = load_file(str(two_processes / "predictions.safetensors"))
    targets = torch.cat([t for _, t in collected])
    probabilities = torch.cat([o for o, _ in collected]).softmax(dim=1)
    assert torch.equal(predictions["targets"], targets)
    assert torch.allclose(predictions["probabilities"], probabilities, atol=1e-6)


@pytest.mark.distributed
@needs_proc
def test_sigterm_to_one_rank_stops_both_and_resumes_on_one_process(tmp_path: Path, one_process: Path) -> None:
    run_dir, logs = tmp_path / "run", tmp_path / "logs"
    command = torchrun(
        2, "--log-dir", str(logs), "--redirects", "3", "-m", "torchsmith", "train", *JOB, "--run-dir", str(run_dir)
    )
    with started(command, tmp_path / "log.txt") as process:
        wait_for(run_dir / "checkpoints" / "step-000010", process, tmp_path / "log.txt")
        os.kill(worker(process.pid, rank=1), signal.SIGTERM)
        sent = time.monotonic()
        process.wait(timeout=60)
        assert time.monotonic() - sent < 30
    stopped = summary(run_dir)
    assert stopped["status"] == "stopped" and 10 <= stopped["steps"] < STEPS
    step = stopped["steps"]
    for rank in (0, 1):  # each process says where it stopped
        (log,) = logs.glob(f"*/attempt_0/{rank}/stderr.log")
        assert f"interrupted by SIGTERM at step {step}; the state was saved" in log.read_text()
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "last"
    assert json.loads((checkpoints / "last" / "meta.json").read_text())["step"] == step
    assert not list(checkpoints.glob(".tmp-*"))
    # Two processes' checkpoint, resumed on one: the run ends as the one-process run did.
    resumed = run(
        [sys.executable, "-m", "torchsmith", "train", "--run-dir", str(run_dir), "--resume", "--quiet"],
        tmp_path / "resume.txt",
    )
    assert resumed.returncode == 0, resumed.stdout
    assert summary(run_dir)["status"] == "completed" and summary(run_dir)["steps"] == STEPS
    assert_losses_close(losses(run_dir), losses(one_process))
    assert_weights_close(weights(run_dir), weights(one_process))


@pytest.mark.distributed
@needs_proc
def test_killed_rank_restarts_and_resumes_to_the_same_weights(tmp_path: Path, two_processes: Path) -> None:
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    command = [
        sys.executable,
        "-m",
        "torchsmith",
        "train",
        *JOB,
        "--run-dir",
        str(run_dir),
        "--nproc-per-node",
        "2",
        "--max-restarts",
        "1",
        "--master-port",
        str(free_port()),
    ]
    with started(command, log) as process:
        wait_for(run_dir / "checkpoints" / "step-000020", process, log)
        os.kill(worker(process.pid, rank=1), signal.SIGKILL)
        process.wait(timeout=TIMEOUT)
    output = log.read_text()
    assert process.returncode == 0, output
    assert "restart 1: resuming from the newest complete checkpoint" in output
    assert summary(run_dir)["status"] == "completed" and summary(run_dir)["steps"] == STEPS
    expected = weights(two_processes)
    assert all(torch.equal(weights(run_dir)[k], expected[k]) for k in expected)


@pytest.mark.distributed
def test_collectives_agree_count_once_and_time_out(tmp_path: Path) -> None:
    done = run(torchrun(2, str(SCRIPT), str(tmp_path)), tmp_path / "log.txt")
    assert done.returncode == 0, done.stdout
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for result in ranks:
        assert result["world_size"] == 2
        assert result["finite"] is False  # rank 1's non-finite gradient stops both
        assert result["stop"] == [True, True, "SIGTERM"]  # rank 1's signal stops both, with its exit code
        accuracy, expected = result["accuracy"]
        assert accuracy == expected
        assert result["loss"][0] == pytest.approx(result["loss"][1], rel=1e-6)
        assert result["collected_in_order"]
        assert result["prepared_first"] is True and result["prepare_error"] == "no data on rank 0"
        assert result["pending"] == [9.0, 6, 6.0, 3.0 * (1 + result["rank"]), 3]  # losses 1 and 2, 3 samples each
        for spread, single in result["task_metrics"]:  # classification, multi-label, regression
            assert spread.keys() == single.keys() and len(spread) > 3
            for name, value in single.items():
                assert spread[name] == pytest.approx(value, rel=1e-7 if name != "loss" else 1e-6), (
                    name
                )  # float64 sums, any order
    assert 3.0 * 0.8 <= ranks[0]["failed_after_s"] < 3.0 + 3.0  # train.dist_timeout_s=3 in the script


@pytest.mark.distributed
def test_python_api_example_on_two_processes_matches_one(tmp_path: Path) -> None:
    """Also a process that ends with DDP still alive: its teardown used to abort (SIGABRT)."""
    example = str(SRC.parent / "examples" / "distributed_api.py")
    two = run(torchrun(2, example, "1"), tmp_path / "two.txt")
    assert two.returncode == 0, two.stdout
    one = run([sys.executable, example, "1"], tmp_path / "one.txt")
    assert one.returncode == 0, one.stdout
    results = [json.loads(done.stdout.strip().splitlines()[-1]) for done in (two, one)]
    (history, test), (expected_history, expected_test) = [(r["history"], r["test"]) for r in results]
    assert history[0]["val_loss"] == pytest.approx(expected_history[0]["val_loss"], rel=1e-5)
    assert history[0]["train_loss"] == pytest.approx(expected_history[0]["train_loss"], rel=1e-5)
    assert test["loss"] == pytest.approx(expected_test["loss"], rel=1e-5)


# ---------------------------------------------------------------------- in one process
def test_rank_slices_of_augmented_batches_equal_the_single_process_rows() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (70, 1, 8, 8), dtype=torch.uint8, generator=generator)
    source = ImageTensors(images, torch.arange(70) % 3, [0.5], [0.25], augment="crop-flip", padding=2)

    def batches(rank: int, world_size: int) -> list:
        order = BatchOrder(70, 16, seed=1, rank=rank, world_size=world_size)
        return list(MemoryBatches(source, order, train=True, seed=1).epoch(2))

    single = batches(0, 1)
    for rank in (0, 1, 2):
        for (inputs, targets, indices), (all_inputs, all_targets, all_indices) in zip(
            batches(rank, 3), single, strict=True
        ):
            sizes = [len(chunk) for chunk in all_indices.tensor_split(3)]
            rows = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
            assert torch.equal(indices, all_indices[rows])
            assert torch.equal(inputs, all_inputs[rows]) and torch.equal(targets, all_targets[rows])


def test_a_last_batch_smaller_than_the_process_count_is_left_out_of_training_only() -> None:
    data = (torch.zeros(65, 2), torch.zeros(65, dtype=torch.long))  # 64 + 1
    device = torch.device("cpu")
    train = make_batches(data, batch_size=32, train=True, seed=0, device=device, rank=1, world_size=2)
    assert len(train) == 2 and [len(i) for _, _, i in train.epoch(0)] == [16, 16]
    evaluation = make_batches(data, batch_size=32, train=False, seed=0, device=device, rank=0, world_size=2)
    assert [len(i) for _, _, i in evaluation.epoch(0)] == [16, 16, 1]
    evaluation = make_batches(data, batch_size=32, train=False, seed=0, device=device, rank=1, world_size=2)
    assert [len(i) for _, _, i in evaluation.epoch(0)] == [16, 16]  # nothing left for rank 1
    assert len(make_batches(data, batch_size=32, train=True, seed=0, device=device)) == 3  # one process: all


def launcher(**given: object) -> argparse.Namespace:
    values = dict.fromkeys(("nnodes", "node_rank", "rdzv_endpoint", "master_addr", "master_port", "max_restarts"))
    return argparse.Namespace(**{**values, "nproc_per_node": 2, **given})


def test_launcher_passes_torchrun_flags_and_the_rest_of_the_command() -> None:
    argv = [
        "train",
        "--nproc-per-node",
        "4",
        "--epochs",
        "3",
        "--max-restarts=2",
        "--nnodes",
        "2",
        "--rdzv-endpoint",
        "host:29400",
        "--set",
        "optim.lr=0.1",
    ]
    command = launch_command(
        argv, launcher(nproc_per_node=4, max_restarts=2, nnodes="2", rdzv_endpoint="host:29400"), "runs/a"
    )
    assert command[1:] == [
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "4",
        "--max-restarts",
        "2",
        "--nnodes",
        "2",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        "host:29400",
        "-m",
        "torchsmith",
        "train",
        "--epochs",
        "3",
        "--set",
        "optim.lr=0.1",
        "--run-dir",
        "runs/a",
    ]
    static = launch_command(
        ["train", "--run-dir", "x", "--master-addr", "10.0.0.1", "--node-rank", "1"],
        launcher(nnodes="2", node_rank=1, master_addr="10.0.0.1", master_port=29501),
        "unused",
    )
    assert static[5:] == [
        "--max-restarts",
        "0",
        "--nnodes",
        "2",
        "--node-rank",
        "1",
        "--master-addr",
        "10.0.0.1",
        "--master-port",
        "29501",
        "-m",
        "torchsmith",
        "train",
        "--run-dir",
        "x",
    ]


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"nproc_per_node": 0}, "--nproc-per-node must be a positive integer"),
        ({"nnodes": "2"}, "--nnodes 2 needs --rdzv-endpoint"),
        ({"nnodes": "1:4"}, "needs --rdzv-endpoint"),
        ({"nnodes": "two"}, "--nnodes must be a positive integer or MIN:MAX"),
        ({"max_restarts": -1}, "--max-restarts must be >= 0"),
    ],
)
def test_launcher_rejects_incomplete_settings(given: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        launch_command(["train"], launcher(**given), "runs/a")


# ---------------------------------------------------------------------- NCCL
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nccl_group_of_one_gpu_trains_like_a_single_process() -> None:
    """One GPU cannot hold two NCCL ranks; a group of one still runs the NCCL paths: DDP on
    cuda:0, the per-step agreement, the metric reductions and the gathered predictions."""
    import torch.distributed as dist

    from torchsmith import Trainer
    from torchsmith.callbacks.base import Callback
    from torchsmith.train.distributed import Distributed

    class Record(Callback):
        def __init__(self) -> None:
            self.losses: list[float] = []
            self.wrapped: set[bool] = set()  # whether each step ran through DDP

        def on_step_end(self, trainer: Trainer) -> None:
            self.losses.append(trainer.state.last_loss)
            self.wrapped.add(isinstance(trainer.forward_model, torch.nn.parallel.DistributedDataParallel))

    generator = torch.Generator().manual_seed(0)
    inputs, targets = torch.randn(300, 8, generator=generator), torch.randint(0, 4, (300,), generator=generator)
    records: list[Record] = []

    def train(context: Distributed | None) -> tuple[Trainer, list[float], list]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
        record = Record()
        records.append(record)
        trainer = Trainer(
            model,
            optimizer="sgd",
            device="cuda:0",
            progress="none",
            max_epochs=2,
            batch_size=64,
            log_every=1,
            callbacks=[record],
        )
        trainer.dist = context
        trainer.fit((inputs, targets))
        collected: list = []
        trainer.evaluate((inputs, targets), collect=collected)
        return trainer, record.losses, collected

    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1, device_id=device)
    try:
        in_group, group_losses, group_collected = train(Distributed(0, 1, 0, device))
        # Every step went through DDP; the wrapper is released when fit ends.
        assert records[0].wrapped == {True} and in_group.forward_model is in_group.model
    finally:
        dist.destroy_process_group()
    alone, losses, collected = train(None)
    assert records[1].wrapped == {False}
    assert group_losses == pytest.approx(losses, rel=1e-5) and len(losses) == 10
    for name, value in alone.model.state_dict().items():
        assert torch.allclose(in_group.model.state_dict()[name], value, atol=1e-6)
    assert torch.equal(group_collected[0][1], torch.cat([t for _, t in collected]))


@pytest.mark.distributed
def test_fine_tuning_on_two_processes_matches_one(one_process: Path, tmp_path: Path) -> None:
    """--init-from and --finetune under DDP: the frozen body is left out of the gradient
    reduction for the first epoch, then rejoins it (the DDP wrapper is rebuilt at the unfreeze)."""
    job = [*JOB[JOB.index("--batch-size") :], "--max-steps", "50", "--init-from", str(one_process), "--finetune"]
    job.remove("--checkpoint-every")
    job.remove("10")  # a checkpoint at each epoch's end: step 25 is the end of the frozen epoch
    runs = {}
    for processes in (1, 2):
        run_dir = tmp_path / f"p{processes}"
        command = [sys.executable, "-m", "torchsmith", "train", *job, "--run-dir", str(run_dir)]
        if processes == 2:
            command += ["--nproc-per-node", "2", "--rdzv-endpoint", f"localhost:{free_port()}"]
        done = run(command, tmp_path / f"log{processes}.txt")
        assert done.returncode == 0, done.stdout
        runs[processes] = run_dir
    assert summary(runs[2])["processes"] == 2 and summary(runs[2])["steps"] == 50
    assert_losses_close(losses(runs[2]), losses(runs[1]))
    assert_weights_close(weights(runs[2]), weights(runs[1]))
    source = load_file(str(one_process / "checkpoints" / "best" / "model.safetensors"))
    frozen = load_file(str(runs[2] / "checkpoints" / "step-000025" / "model.safetensors"))
    assert torch.equal(frozen["fc1.weight"], source["fc1.weight"])  # the body waited for the head
    assert not torch.equal(frozen["fc2.weight"], source["fc2.weight"])
    assert not torch.equal(weights(runs[2])["fc1.weight"], source["fc1.weight"])  # then trained


@pytest.mark.distributed
@needs_proc
def test_sigterm_stops_every_rank_within_one_check_interval_of_the_on_device_guard(tmp_path: Path) -> None:
    """With train.nan_check_every > 1 no step holds a reduction of the ranks' stop requests: they are
    agreed at each check instead, so a SIGTERM to one rank stops both within one interval, not at the
    epoch's end (step 225 of this job)."""
    run_dir, interval = tmp_path / "run", 7
    job = [
        "--model", "convnet", "--optimizer", "adamw", "--max-steps", "400", "--batch-size", "64", "--val-fraction",
        "0.1", "--device", "cpu", "--quiet", "--checkpoint-every", "10", "--set", f"train.nan_check_every={interval}",
        "--set", "train.dist_timeout_s=20",
    ]  # fmt: skip
    command = torchrun(2, "-m", "torchsmith", "train", *job, "--run-dir", str(run_dir))
    with started(command, tmp_path / "log.txt") as process:
        wait_for(run_dir / "checkpoints" / "step-000010", process, tmp_path / "log.txt")
        os.kill(worker(process.pid, rank=1), signal.SIGTERM)
        process.wait(timeout=120)
    stopped = summary(run_dir)
    assert stopped["status"] == "stopped" and stopped["steps"] % interval == 0, stopped
    assert 10 <= stopped["steps"] < 225  # within the first epoch: at a check, not at the epoch's end
    assert json.loads((run_dir / "checkpoints" / "last" / "meta.json").read_text())["step"] == stopped["steps"]
