"""What a run's summary says: summary.json (status, counters, metrics, timing, versions), the
final weights beside it, and the one-line result `torchsmith train` prints last."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

from torchsmith._version import __version__
from torchsmith.config import RunConfig
from torchsmith.io import rank
from torchsmith.io.checkpoint_format import plain_tensors
from torchsmith.io.files import save_safetensors, write_json
from torchsmith.state import lower_is_better
from torchsmith.train.trainer import Trainer


def base_summary(config: RunConfig, trainer: Trainer) -> dict[str, Any]:
    return {
        "status": "running",
        "model": config.model.name,
        "data": config.data.name,
        "device": str(trainer.device),
        "processes": trainer.dist.world_size if trainer.dist else 1,
        "versions": {"torchsmith": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }


def finish(run_dir: Path, trainer: Trainer, summary: dict[str, Any], status: str, error: str = "") -> None:
    """Write summary.json and the final weights; nothing already in the run directory is removed."""
    state = trainer.state
    metrics = state.history[-1] if state.history else state.metrics
    summary.update(
        {
            "status": status,
            "epochs": state.epoch,
            "steps": state.step,
            "train": {k[6:]: v for k, v in metrics.items() if k.startswith("train_")},
            "val": {k[4:]: v for k, v in metrics.items() if k.startswith("val_")},
            "best": best_epoch(state.history, trainer.config.monitor),
            "train_time_s": round(state.train_time_s, 3),
            "samples_per_s": round(state.samples_seen / state.train_time_s, 1) if state.train_time_s else 0.0,
        }
    )
    if error:
        summary["error"] = error
    if state.stop_reason:
        summary["stop_reason"] = state.stop_reason
    if state.nan_events:
        summary["nan_events"] = state.nan_events
        summary["skipped_steps"], summary["rollbacks"] = state.skipped_steps, state.rollbacks
    if not rank.is_writer():
        return
    problems = summary.get("skipped_files", [])
    if state.nan_events or summary.get("preflight") or problems:
        doctor = {"events": state.nan_events, "preflight": summary.get("preflight", [])}
        write_json(run_dir / "doctor.json", {**doctor, **({"skipped_files": problems} if problems else {})})
    if status != "failed":
        save_safetensors(plain_tensors(trainer.model.state_dict()), run_dir / "model.safetensors")  # atomic
    write_json(run_dir / "summary.json", summary)


def best_epoch(history: list[dict[str, float]], monitor: str) -> dict[str, float]:
    scored = [row for row in history if monitor in row]
    if not scored:
        return {}
    row = (min if lower_is_better(monitor) else max)(scored, key=lambda r: r[monitor])
    return {"epoch": row["epoch"], "step": row["step"], monitor: row[monitor]}


def result_line(summary: dict[str, Any]) -> str:
    """The one-line result `train` prints last."""
    split = "test" if summary.get("test") else "val"
    metrics = summary.get(split, {})
    parts = [f"{split}"]
    if "accuracy" in metrics and "perplexity" not in metrics:
        parts.append(f"accuracy {metrics['accuracy']:.4f} ")
    for name in ("r2", "mae", "f1_macro", "map"):  # regression and multi-label runs
        if name in metrics:
            parts.append(f"{name} {metrics[name]:.4f} ")
    if "loss" in metrics:
        parts.append(f"loss {metrics['loss']:.4f} ")
    if "perplexity" in metrics:
        parts.append(f"perplexity {metrics['perplexity']:.3f} ")
    if "bits_per_char" in metrics:
        parts.append(f"bits/char {metrics['bits_per_char']:.4f} ")
    tail = f"({summary['epochs']} epochs, {summary['train_time_s']:.1f} s)"
    if summary["status"] != "completed":
        tail += f"  [{summary['status']}]"
    return " ".join(parts) + " " + tail
