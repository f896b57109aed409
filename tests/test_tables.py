"""Tables: `table:PATH.csv` from scikit-learn's bundled datasets (diabetes for regression, wine for
classification), written to CSV by the tests; preprocessing saved and reused by predict and export."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from torchsmith.app import train_run
from torchsmith.config import RunConfig
from torchsmith.data.registry import load_data
from torchsmith.data.tables import encode_rows, load_table
from torchsmith.errors import UsageError

datasets = pytest.importorskip("sklearn.datasets")


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def diabetes_csv(tmp_path: Path) -> Path:
    data = datasets.load_diabetes()
    rows = [[*map(float, x), float(y)] for x, y in zip(data.data, data.target, strict=True)]
    return write_csv(tmp_path / "diabetes.csv", [*data.feature_names, "target"], rows)


@pytest.fixture
def wine_csv(tmp_path: Path) -> Path:
    data = datasets.load_wine()
    rows = [[*map(float, x), data.target_names[y]] for x, y in zip(data.data, data.target, strict=True)]
    return write_csv(tmp_path / "wine.csv", [*data.feature_names, "cultivar"], rows)


def test_columns_are_encoded_from_the_training_split(tmp_path: Path) -> None:
    rows = [
        [f"{i * 1.5}", ["red", "green", "blue"][i % 3], "" if i == 4 else str(i % 2), f"{2 * i + 1}"] for i in range(40)
    ]
    path = write_csv(tmp_path / "t.csv", ["size", "colour", "flag", "price"], rows)
    bundle = load_table(str(path), {"test_fraction": 0.25}, val_fraction=0.2, seed=0)
    info = bundle.info
    assert info.task == "regression" and info.class_names == ["price"] and info.num_classes == 1
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (24, 6, 10)
    columns = info.preprocessing["columns"]
    assert [c["type"] for c in columns] == ["numeric", "categorical", "numeric"]
    assert columns[1]["values"] == ["blue", "green", "red"]
    assert info.input_shape == (1 + 4 + 1,)  # one-hot colour with an unknown slot
    features = bundle.train.inputs
    assert features[:, 0].mean().abs() < 1e-6 and features[:, 0].std() == pytest.approx(1.0, abs=1e-5)
    assert bundle.train.targets.mean().abs() < 1e-6  # the target is standardised; the task undoes it
    assert info.preprocessing["task_options"]["std"][0] > 1
    unseen = encode_rows([{"size": "3", "colour": "purple", "flag": ""}], columns)
    assert unseen[0, 1:5].tolist() == [1.0, 0.0, 0.0, 0.0] and unseen[0, 5] == 0.0  # unknown slot; missing -> mean


def test_the_target_is_named_by_an_option_else_target_or_label_else_the_last(wine_csv: Path) -> None:
    bundle = load_table(str(wine_csv), {}, 0.1, 0)
    assert bundle.info.task == "classification" and bundle.info.class_names == ["class_0", "class_1", "class_2"]
    by_option = load_table(str(wine_csv), {"target": "alcohol"}, 0.1, 0)
    assert by_option.info.task == "regression" and by_option.info.class_names == ["alcohol"]
    with pytest.raises(UsageError, match=r"data\.options\.target names 'vintage', which is no column"):
        load_table(str(wine_csv), {"target": "vintage"}, 0.1, 0)
    with pytest.raises(UsageError, match="regression needs numbers"):
        load_table(str(wine_csv), {"task": "regression"}, 0.1, 0)


def run_table(tmp_path: Path, csv_path: Path, name: str, epochs: int, extra: dict) -> tuple[Path, dict]:
    config = RunConfig.from_dict(
        {
            "model": {"name": "mlp"},
            "data": {"name": f"table:{csv_path}", "val_fraction": 0.15},
            "train": {"max_epochs": epochs, "batch_size": 16, "progress": "none", **extra},
            "optim": {"lr": 0.003, "weight_decay": 0.01},
            "run_dir": str(tmp_path / name),
        }
    )
    result = train_run(config, quiet=True)
    return result.run_dir, json.loads((result.run_dir / "summary.json").read_text())


def test_a_regression_table_trains_predicts_and_exports(tmp_path: Path, diabetes_csv: Path) -> None:
    from torchsmith.after.export import export_run
    from torchsmith.after.predictor import load

    run_dir, summary = run_table(tmp_path, diabetes_csv, "diabetes", 12, {"monitor": "val_r2"})
    assert summary["test"]["r2"] > 0.3  # a linear model reaches about 0.45 on this split
    assert 35 < summary["test"]["mae"] < 70  # in the target's own units (disease progression, 25..346)
    assert summary["best"]["val_r2"] == max(summary["best"]["val_r2"], summary["val"]["r2"])
    report = (run_dir / "report.html").read_text()
    assert "predicted against true" in report and 'id="largest-errors"' in report and "confusion-matrix" not in report
    prediction = load(run_dir).predict([str(diabetes_csv)])
    values = prediction.values[:, 0]
    true = torch.tensor(datasets.load_diabetes().target)
    assert values.shape == (442,) and 100 < float(values.mean()) < 200  # un-standardised
    assert float((values - true).abs().mean()) < 70
    assert export_run(run_dir, "onnx").max_difference < 1e-4


def test_a_classification_table_trains_predicts_and_exports(tmp_path: Path, wine_csv: Path) -> None:
    from torchsmith.after.export import export_run
    from torchsmith.after.predictor import load

    run_dir, summary = run_table(tmp_path, wine_csv, "wine", 10, {"metrics": "accuracy,f1_macro"})
    assert summary["test"]["accuracy"] > 0.85 and summary["test"]["f1_macro"] > 0.85
    assert "confusion-matrix" in (run_dir / "report.html").read_text()
    prediction = load(run_dir).predict([str(wine_csv)])
    labels = prediction.labels
    truth = [datasets.load_wine().target_names[y] for y in datasets.load_wine().target]
    assert sum(a == b for a, b in zip(labels, truth, strict=True)) / len(truth) > 0.85
    assert export_run(run_dir, "onnx").max_difference < 1e-4


def test_a_table_name_without_a_path_or_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"table:PATH\.csv"):
        load_data(RunConfig.from_dict({"data": {"name": "table"}}).data, 0)
    with pytest.raises(UsageError, match="does not exist"):
        load_data(RunConfig.from_dict({"data": {"name": f"table:{tmp_path / 'missing.csv'}"}}).data, 0)
