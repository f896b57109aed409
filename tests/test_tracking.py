"""What a run shows: metrics.csv, TensorBoard events, the HTML report, comparison, summary."""

from __future__ import annotations

import csv
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from torchsmith.cli.main import main


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "a"
    assert (
        main(
            ["train", "--epochs", "2", "--lr", "0.002", "--run-dir", str(run), "--quiet", "--set", "train.log_every=40"]
        )
        == 0
    )
    return run


def test_metrics_csv_has_step_and_epoch_rows(mnist_run: Path) -> None:
    rows = list(csv.DictReader((mnist_run / "metrics.csv").open()))
    assert list(rows[0])[:2] == ["epoch", "step"]
    epoch_rows = [r for r in rows if r.get("val_accuracy")]
    assert [int(r["epoch"]) for r in epoch_rows] == [1, 2]
    assert all(float(r["grad_norm"]) > 0 for r in rows if r.get("grad_norm"))
    assert [int(r["step"]) for r in rows if not r.get("val_accuracy")] == list(range(40, 451, 40))


def test_tensorboard_reader_finds_every_point(mnist_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(mnist_run / "tb"))
    events.Reload()
    train_steps = [e.step for e in events.Scalars("train_loss")]
    assert train_steps == sorted({*range(40, 451, 40), 225, 450})  # log points and epoch ends
    assert [e.step for e in events.Scalars("val_accuracy")] == [225, 450]
    assert {"lr", "grad_norm", "samples_per_s", "val_loss"} <= set(events.Tags()["scalars"])


class Sections(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.images: list[str] = []
        self.links: list[str] = []
        self.in_confusion = False
        self.rows: list[list[str]] = []
        self.cell: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"] or "")
        if tag == "table" and values.get("id") == "confusion-matrix":
            self.in_confusion = True
        if tag == "img":
            self.images.append(values.get("src") or "")
        for key in ("src", "href"):
            if values.get(key):
                self.links.append(values[key] or "")
        if self.in_confusion and tag == "tr":
            self.rows.append([])
        if self.in_confusion and tag == "td":  # counts; th cells hold class names
            self.cell = ""

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell += data

    def handle_endtag(self, tag: str) -> None:
        if self.in_confusion and tag == "td" and self.cell is not None:
            self.rows[-1].append(self.cell.strip())
            self.cell = None
        if tag == "table":
            self.in_confusion = False


def test_report_after_a_real_mnist_run(mnist_run: Path) -> None:
    page = Sections()
    page.feed((mnist_run / "report.html").read_text())
    assert {"curves", "confusion-matrix", "mistakes", "per-class", "config", "model-summary"} <= page.ids
    assert all(src.startswith(("data:image/png;base64,", "data:image/svg+xml;base64,")) for src in page.images)
    assert len(page.images) >= 16  # the mistakes as PNG; the curves are inline SVG
    assert (mnist_run / "report.html").read_text().count("<svg") >= 2
    assert not [link for link in page.links if re.match(r"https?://", link)]
    matrix = torch.tensor([[int(c) for c in row] for row in page.rows if row])
    assert matrix.shape == (10, 10)
    summary = json.loads((mnist_run / "summary.json").read_text())
    assert matrix.sum().item() == 2000  # the embedded sample's test split
    assert matrix.trace().item() / 2000 == pytest.approx(summary["test"]["accuracy"], abs=1e-9)
    assert (mnist_run / "plots" / "curves.svg").is_file()


def test_compare_shows_the_learning_rate_difference(
    mnist_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "b"
    assert main(["train", "--max-steps", "100", "--lr", "0.0005", "--run-dir", str(other), "--quiet"]) == 0
    output = tmp_path / "compare.html"
    assert main(["compare", str(mnist_run), str(other), "--output", str(output)]) == 0
    html = output.read_text()
    assert "optim.lr" in html and "0.002" in html and "0.0005" in html
    assert main(["compare", str(mnist_run), str(tmp_path)]) == 2  # not a run


def test_summary_command_counts_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "--model", "simplenet"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 101,770" in out and "fc1" in out


def test_doctor_data_scans_a_split(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "data", "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "2000 samples, 10 classes" in out


def test_summary_bad_model_args_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "--model-args", "{bad"]) == 2
    assert main(["summary", "--model-args", "[1, 2]"]) == 2
    err = capsys.readouterr().err
    assert "--model-args must be a JSON object" in err and "Traceback" not in err
