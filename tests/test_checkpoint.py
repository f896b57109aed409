"""Checkpoints: bitwise round trips, kills during save, corruption, malicious files, disk errors."""

from __future__ import annotations

import builtins
import errno
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from torchsmith.errors import TrainingFailure, UsageError
from torchsmith.io import checkpoint as ckpt_module
from torchsmith.io.checkpoint import (
    DATA_FILES,
    MANIFEST_FILE,
    CheckpointCorrupt,
    CheckpointWarning,
    UnsafeCheckpoint,
    checkpoint_name,
    find_resumable,
    load_checkpoint,
    save_checkpoint,
)
from torchsmith.io.files import sha256_file
from torchsmith.io.rng import capture_rng_state, restore_rng_state

SRC = Path(__file__).resolve().parents[1] / "src" / "torchsmith"


def save_step(folder: Path, step: int, name: str | None = None, **kwargs) -> Path:
    """A small checkpoint whose every file encodes `step`, so content can be checked."""
    return save_checkpoint(
        folder,
        name or checkpoint_name(step),
        model_state={
            "weight": torch.full((8, 16), float(step)),
            "bias": torch.arange(4) + step,
        },
        training_state={
            "step": step,
            "optimizer": {"exp_avg": torch.full((5,), float(step))},
        },
        config={"step": step, "optim": {"lr": 0.1}},
        meta={"step": step, "epoch": step // 10},
        **kwargs,
    )


def assert_holds_step(checkpoint, step: int) -> None:
    assert checkpoint.step == step
    assert torch.equal(checkpoint.model_state["weight"], torch.full((8, 16), float(step)))
    assert torch.equal(checkpoint.model_state["bias"], torch.arange(4) + step)
    assert checkpoint.training_state["step"] == step
    assert checkpoint.config == {"step": step, "optim": {"lr": 0.1}}


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (torch.equal would call NaN != NaN and -0.0 == 0.0)."""
    same_kind = a.dtype == b.dtype and a.shape == b.shape
    return same_kind and torch.equal(a.flatten().view(torch.uint8), b.flatten().view(torch.uint8))


def temp_entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp-"))


# --- round trips ---------------------------------------------------------------------


class TiedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.out = nn.Linear(6, 11)
        self.out.weight = self.embed.weight  # tied: two state_dict keys, one storage
        self.register_buffer("counts", torch.arange(7, dtype=torch.int64))


def test_model_state_round_trip_is_bitwise(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = dict(TiedNet().state_dict())
    state["transposed"] = torch.randn(3, 5).t()  # not contiguous
    state["special"] = torch.tensor([float("nan"), -0.0, float("inf"), 1e-45])
    state["half"] = torch.randn(4, dtype=torch.float16)
    state["bf16"] = torch.randn(4, dtype=torch.bfloat16)
    state["mask"] = torch.tensor([True, False, True])
    path = save_checkpoint(
        tmp_path,
        "last",
        model_state=state,
        training_state={},
        config={},
        meta={"step": 3},
    )
    loaded = load_checkpoint(path)
    assert sorted(loaded.model_state) == sorted(state)
    for key, tensor in state.items():
        assert bitwise_equal(loaded.model_state[key], tensor), key
    restored = TiedNet()
    restored.load_state_dict({k: v for k, v in loaded.model_state.items() if k in restored.state_dict()})
    assert torch.equal(restored.out.weight, state["embed.weight"])
    assert loaded.meta["step"] == 3 and loaded.meta["name"] == "last"


def train_steps(model: nn.Module, optimizer, scheduler, steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        inputs = torch.randn(16, 4, generator=generator)
        loss = (model(inputs) - inputs.sum(1, keepdim=True)).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()


def make_training(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    return model, optimizer, scheduler


def test_adamw_resume_continues_bitwise(tmp_path: Path) -> None:
    model, optimizer, scheduler = make_training()
    train_steps(model, optimizer, scheduler, steps=5, seed=1)
    path = save_checkpoint(
        tmp_path,
        checkpoint_name(5),
        model_state=model.state_dict(),
        training_state={
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
        },
        config={},
        meta={"step": 5},
    )
    loaded = load_checkpoint(path)
    saved_state = optimizer.state_dict()["state"]
    for index, entry in loaded.training_state["optimizer"]["state"].items():
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert bitwise_equal(entry[key], saved_state[index][key])

    model2, optimizer2, scheduler2 = make_training(seed=99)  # different initial weights
    model2.load_state_dict(loaded.model_state)
    optimizer2.load_state_dict(loaded.training_state["optimizer"])
    scheduler2.load_state_dict(loaded.training_state["scheduler"])
    train_steps(model, optimizer, scheduler, steps=4, seed=2)
    train_steps(model2, optimizer2, scheduler2, steps=4, seed=2)
    for original, resumed in zip(model.parameters(), model2.parameters(), strict=True):
        assert bitwise_equal(original.detach(), resumed.detach())
    assert scheduler2.get_last_lr() == scheduler.get_last_lr() == [0.01 * 0.5**4]


def draw_all() -> tuple:
    return (
        random.random(),
        random.gauss(0, 1),
        np.random.rand(3).tolist(),
        np.random.randn(3).tolist(),
        torch.rand(3).tolist(),
    )


def test_rng_state_round_trip_through_checkpoint(tmp_path: Path) -> None:
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    draw_all()  # leaves cached Gaussians in random and numpy, which must be restored too
    state = capture_rng_state()
    expected = draw_all()
    path = save_checkpoint(
        tmp_path,
        "last",
        model_state={},
        training_state={"rng": state},
        config={},
        meta={"step": 1},
    )
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    assert draw_all() != expected
    restore_rng_state(load_checkpoint(path).training_state["rng"])
    assert draw_all() == expected


def test_retention_keeps_newest_steps_and_protected_names(tmp_path: Path) -> None:
    save_step(tmp_path, 2, name="best")
    for step in range(1, 6):
        save_step(tmp_path, step, keep_last=2)
        save_step(tmp_path, step, name="last")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best",
        "last",
        "latest",
        "step-000004",
        "step-000005",
    ]
    save_step(tmp_path, 6, keep_last=1)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("step")) == ["step-000006"]
    assert_holds_step(find_resumable(tmp_path), 6)
    with pytest.raises(UsageError, match="keep_last"):
        save_step(tmp_path, 7, keep_last=0)


def test_unloadable_training_state_is_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"training_state\['scheduler'\]\['fn'\].*function"):
        save_checkpoint(
            tmp_path,
            "last",
            model_state={},
            training_state={"scheduler": {"fn": len}},
            config={},
            meta={"step": 1},
        )
    with pytest.raises(UsageError, match=r"numpy.*\.item\(\)"):
        save_checkpoint(
            tmp_path,
            "last",
            model_state={},
            training_state={"x": np.float32(1)},
            config={},
            meta={"step": 1},
        )
    with pytest.raises(UsageError, match="not allowed"):
        save_step(tmp_path, 1, name="../escape")
    assert list(tmp_path.iterdir()) == []


# --- kills during save -------------------------------------------------------------------

# A fork server: it imports torch once (about a second), then forks one saving child per
# trial, so 50 trials take seconds. The child writes "saved N" only once both saves of
# step N have returned; the server writes "done" only after the child has died.
SERVER = r"""
import os, sys
import torch
from torchsmith.io.checkpoint import checkpoint_name, save_checkpoint
folder = sys.argv[1]
torch.set_num_threads(1)

def save_forever(step):
    while True:
        arguments = dict(
            model_state={"weight": torch.full((256, 1024), float(step)), "bias": torch.arange(1000.0) + step},
            training_state={"step": step, "optimizer": {"exp_avg": torch.full((256, 1024), float(step))}},
            config={"step": step}, meta={"step": step})
        save_checkpoint(folder, checkpoint_name(step), keep_last=2, **arguments)
        save_checkpoint(folder, "last", **arguments)
        os.write(1, f"saved {step}\n".encode())
        step += 1

for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        try:
            save_forever(int(line))
        finally:
            os._exit(3)
    print(f"pid {pid}", flush=True)
    print(f"done {os.waitpid(pid, 0)[1]}", flush=True)
"""


class LineReader:
    """Lines from a pipe with a deadline, so a stuck server fails the test instead of hanging."""

    def __init__(self, stream) -> None:
        self.fd, self.buffer = stream.fileno(), b""

    def readline(self, timeout: float = 30.0) -> str:
        while b"\n" not in self.buffer:
            ready, _, _ = select.select([self.fd], [], [], timeout)
            chunk = os.read(self.fd, 4096) if ready else b""
            assert chunk, f"no answer from the saving process within {timeout} s"
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


def assert_holds_kill_step(checkpoint) -> None:
    step = checkpoint.step
    assert torch.equal(checkpoint.model_state["weight"], torch.full((256, 1024), float(step)))
    assert torch.equal(checkpoint.model_state["bias"], torch.arange(1000.0) + step)
    assert checkpoint.training_state["step"] == step
    assert torch.equal(
        checkpoint.training_state["optimizer"]["exp_avg"],
        torch.full((256, 1024), float(step)),
    )
    assert checkpoint.config == {"step": step}


def kill_one_save(server, reader: LineReader, start: int, wait_for_one: bool, chooser: random.Random) -> int:
    """Start a saving child at step `start`, SIGKILL it 0-200 ms later; return the newest
    step it reported saved. With `wait_for_one` the delay starts after its first save,
    so the run makes progress however slow the machine is."""
    server.stdin.write(f"{start}\n".encode())
    server.stdin.flush()
    pid = int(reader.readline().split()[1])
    newest = -1
    if wait_for_one:
        line = reader.readline()
        assert line.startswith("saved"), f"the saving child failed: {line}"
        newest = int(line.split()[1])
    time.sleep(chooser.uniform(0.0, 0.2))
    os.kill(pid, signal.SIGKILL)
    while (line := reader.readline()).startswith("saved"):
        newest = int(line.split()[1])
    assert line == f"done {signal.SIGKILL}", f"the saving child did not die by SIGKILL: {line}"
    return newest


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL (POSIX)")
def test_sigkill_during_save_never_leaves_a_partial_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    env = {**os.environ, "PYTHONPATH": str(SRC.parent), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", SERVER, str(folder)]
    server = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    reader, chooser = LineReader(server.stdout), random.Random(1234)
    next_step, newest_saved, kills_inside_save = 0, -1, 0
    try:
        for trial in range(50):
            newest_in_trial = kill_one_save(server, reader, next_step, trial % 2 == 1, chooser)
            newest_saved = max(newest_saved, newest_in_trial)
            kills_inside_save += folder.exists() and bool(temp_entries(folder))
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", CheckpointWarning)
                    found = find_resumable(folder)
            except TrainingFailure:
                assert newest_saved < 0, "no checkpoint found after one was reported saved"
                continue
            assert found.step >= newest_saved, "a checkpoint reported as saved was lost"
            assert_holds_kill_step(found)
            assert temp_entries(folder) == []
            if newest_in_trial >= 0:  # then retention ran in this trial
                assert len(list(folder.glob("step-*"))) <= 3
            if newest_saved >= 0:
                assert_holds_kill_step(load_checkpoint(folder / "last"))
            next_step = found.step + 1
    finally:
        server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert next_step >= 25, "too few saves completed for the kills to mean anything"
    assert kills_inside_save >= 10, f"only {kills_inside_save} kills landed inside a save"


def test_recovers_a_save_killed_between_the_two_renames(tmp_path: Path, monkeypatch) -> None:
    folder, kept = tmp_path / "a", tmp_path / "b"
    save_step(folder, 1, name="last")
    real_rename = os.rename

    class Killed(BaseException):
        pass

    def rename_then_die(source, target):
        # by now the old "last" is aside and the new one not yet in place
        if Path(source).name.startswith(".tmp-") and Path(target).name == "last":
            raise Killed
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", rename_then_die)
    with pytest.raises(Killed):
        save_step(folder, 2, name="last")
    monkeypatch.setattr(os, "rename", real_rename)
    assert not (folder / "last").exists() and len(temp_entries(folder)) == 2
    shutil.copytree(folder, kept)

    # the finished new folder rolls forward
    assert_holds_step(find_resumable(folder), 2)
    assert temp_entries(folder) == []
    # had the new folder been incomplete, the old one is put back instead
    (kept / temp_entries(kept)[0] / MANIFEST_FILE).unlink()
    assert_holds_step(find_resumable(kept), 1)
    assert sorted(p.name for p in kept.iterdir()) == ["last", "latest"]


# --- corruption ---------------------------------------------------------------------


def test_missing_manifest_means_incomplete(tmp_path: Path) -> None:
    save_step(tmp_path, 1)
    path = save_step(tmp_path, 2)
    (path / MANIFEST_FILE).unlink()
    with pytest.raises(CheckpointCorrupt, match=r"incomplete.*manifest\.json"):
        load_checkpoint(path)
    with pytest.warns(CheckpointWarning, match="step-000002.*incomplete"):
        assert_holds_step(find_resumable(tmp_path), 1)


def test_every_flipped_byte_or_truncation_is_detected(tmp_path: Path) -> None:
    save_step(tmp_path, 1)
    path = save_step(tmp_path, 2)
    chooser = random.Random(0)
    for trial in range(60):
        file = path / chooser.choice([*DATA_FILES, MANIFEST_FILE])
        original = file.read_bytes()
        expected_digest = sha256_file(file)
        if trial % 2:
            position = chooser.randrange(len(original))
            damaged = bytearray(original)
            damaged[position] ^= chooser.randrange(1, 256)
        else:
            damaged = original[: chooser.randrange(len(original))]
        file.write_bytes(bytes(damaged))
        with pytest.raises(CheckpointCorrupt) as caught:
            load_checkpoint(path)
        assert file.name in str(caught.value)
        if file.name != MANIFEST_FILE:  # the message gives both digests
            assert expected_digest in str(caught.value) and sha256_file(file) in str(caught.value)
        with pytest.warns(CheckpointWarning, match=f"step-000002.*{file.name}"):
            assert_holds_step(find_resumable(tmp_path), 1)
        file.write_bytes(original)
    assert_holds_step(find_resumable(tmp_path), 2)


def test_latest_pointer_to_a_missing_folder_falls_back_with_a_warning(
    tmp_path: Path,
) -> None:
    save_step(tmp_path, 1)
    (tmp_path / "latest").write_text("step-000009\n")
    with pytest.warns(CheckpointWarning, match="step-000009.*does not exist"):
        assert_holds_step(find_resumable(tmp_path), 1)


def test_no_checkpoint_at_all_is_a_clear_failure(tmp_path: Path) -> None:
    with pytest.raises(TrainingFailure, match="does not exist"):
        find_resumable(tmp_path / "missing")
    (tmp_path / ".tmp-last-123").mkdir()
    with pytest.raises(TrainingFailure, match=r"no complete, verified checkpoint.*--resume"):
        find_resumable(tmp_path)
    assert list(tmp_path.iterdir()) == []


# --- malicious files ----------------------------------------------------------------


class CreatesFileWhenUnpickled:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (builtins.open, (str(self.path), "w"))


def test_pickle_payload_in_training_state_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    save_step(tmp_path, 1)
    path = save_step(tmp_path, 2)
    torch.save({"step": 2, "payload": CreatesFileWhenUnpickled(marker)}, path / "training.pt")
    ckpt_module._write_manifest(path)  # an attacker can rewrite the digests too
    ckpt_module.verify_checkpoint(path)

    with pytest.raises(UnsafeCheckpoint, match=r"training\.pt.*could run code"):
        load_checkpoint(path)
    with pytest.warns(CheckpointWarning, match="step-000002"):
        assert_holds_step(find_resumable(tmp_path), 1)
    assert not marker.exists()
    # the payload is live: unpickling it the unsafe way does create the file
    torch.load(path / "training.pt", weights_only=False)
    assert marker.exists()


def test_python_tag_in_checkpoint_config_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = save_step(tmp_path, 1)
    (path / "config.yaml").write_text(f"lr: !!python/object/apply:os.system ['touch {marker}']\n")
    ckpt_module._write_manifest(path)
    with pytest.raises(UnsafeCheckpoint, match=r"config\.yaml.*line 1.*python"):
        load_checkpoint(path)
    assert not marker.exists()


# --- disk errors --------------------------------------------------------------------


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("name", ["step-000002", "last"])
@pytest.mark.parametrize("failing", ["write", "rename", "latest"])
def test_disk_full_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch, failing: str, name: str) -> None:
    save_step(tmp_path, 1)
    save_step(tmp_path, 1, name="last")
    real_rename, real_replace = os.rename, os.replace

    def rename(source, target):  # fails to move the finished temp folder into place
        if Path(source).name == f".tmp-{name}-{os.getpid()}":
            no_space()
        real_rename(source, target)

    def replace(source, target):  # fails to replace the `latest` pointer
        if Path(target).name == "latest":
            no_space()
        real_replace(source, target)

    patches = {
        "write": (torch, "save", no_space),
        "rename": (os, "rename", rename),
        "latest": (os, "replace", replace),
    }
    monkeypatch.setattr(*patches[failing])

    with pytest.raises(TrainingFailure, match="No space left on device") as caught:
        save_step(tmp_path, 2, name=name)
    monkeypatch.undo()
    assert str(tmp_path / name) in str(caught.value)
    assert temp_entries(tmp_path) == []
    assert (tmp_path / "latest").read_text() == "last\n"
    assert_holds_step(load_checkpoint(tmp_path / "step-000001"), 1)
    if failing != "latest":  # before the pointer moves, nothing of the new save remains
        assert_holds_step(load_checkpoint(tmp_path / "last"), 1)
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "last",
            "latest",
            "step-000001",
        ]


def test_read_only_folder_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    save_step(tmp_path, 1)
    tmp_path.chmod(0o500)
    try:
        try:
            (tmp_path / "probe").write_text("x")
        except PermissionError:
            pass
        else:
            pytest.skip("chmod does not stop this user from writing (running as root)")
        with pytest.raises(TrainingFailure, match=f"{tmp_path / 'step-000002'}.*Permission denied"):
            save_step(tmp_path, 2)
    finally:
        tmp_path.chmod(0o700)
    assert temp_entries(tmp_path) == []
    assert_holds_step(find_resumable(tmp_path), 1)
