"""Bounded memory and messages: class tables past a limit, YAML alias bombs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from torchsmith.after.evaluate import Evaluation
from torchsmith.config import load_yaml
from torchsmith.errors import UsageError
from torchsmith.io.files import safe_load_yaml
from torchsmith.report.html import write_report
from torchsmith.report.predictions import MAX_TABLE_CLASSES, save_predictions

CLASSES = 3 * MAX_TABLE_CLASSES  # a (C, C) int64 matrix of 72 MB: built before the fix


def test_report_skips_the_class_tables_past_the_limit_with_a_note(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"status": "completed", "device": "cpu"}))
    (run / "config.yaml").write_text("optim:\n  lr: 0.1\n")
    targets = torch.tensor([0, 1, 2, 3])
    probabilities = torch.zeros(4, CLASSES)
    probabilities[torch.arange(4), torch.tensor([0, 1, 5, 3])] = 1.0  # 3 of 4 right
    save_predictions(run, targets, probabilities, [f"c{i}" for i in range(CLASSES)], "text")
    page = write_report(run).read_text()
    assert "accuracy 0.7500 on 4 test samples" in page
    assert f"{CLASSES:,} classes: the confusion matrix and per-class table are skipped" in page
    assert 'id="confusion-matrix"' not in page and 'id="per-class"' not in page


def test_evaluation_skips_the_class_tables_past_the_limit_with_a_note(tmp_path: Path) -> None:
    names = [f"c{i}" for i in range(CLASSES)]
    targets, predicted = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1])
    result = Evaluation(tmp_path, "best", "d", "test", 3, {"accuracy": 2 / 3}, names, targets, predicted)
    out = result.to_dict()
    assert "confusion_matrix" not in out and "per_class" not in out
    assert out["per_class_note"].startswith(f"{CLASSES:,} classes")
    assert "per-class table are skipped" in result.to_text()
    small = Evaluation(tmp_path, "best", "d", "test", 3, {"accuracy": 2 / 3}, names[:3], targets, predicted)
    assert small.to_dict()["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 1, 0]]


def alias_bomb(levels: int) -> str:
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\noptim:\n  lr: *l{levels - 1}\n"


def test_a_yaml_alias_bomb_is_refused_before_it_is_expanded(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(12))  # 9**12 leaves under optim.lr alone
    with pytest.raises(UsageError, match="expands to 675,183,110,663 values through its aliases"):
        load_yaml(path)
    with pytest.raises(UsageError, match="write the values out without aliases"):
        safe_load_yaml(path)
    assert load_yaml_ok(tmp_path) == {"a": {"b": 1}, "c": {"b": 1}}  # a few aliases stay allowed


def load_yaml_ok(tmp_path: Path) -> dict[str, object]:
    path = tmp_path / "ok.yaml"
    path.write_text("a: &x {b: 1}\nc: *x\n")
    return load_yaml(path)
