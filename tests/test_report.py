"""report.html and compare pages built from synthetic run directories written here."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from xml.etree import ElementTree

import pytest
import torch
import yaml

from torchsmith.errors import UsageError
from torchsmith.report.html import write_comparison, write_report
from torchsmith.report.predictions import most_confident_mistakes, save_predictions

NUM_SAMPLES, CLASS_NAMES = 200, ["cat", "dog", "bird"]


class Page(HTMLParser):
    """Collects what the tests look at: sections, tables, images, links, scripts."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.section = ""
        self.table: list | None = None
        self.tables: dict[str, list[list[tuple[str, str]]]] = {}
        self.images: list[tuple[str, str]] = []  # (section id, src)
        self.figures: list[str] = []  # section id of each mistake figure
        self.sections: list[str] = []
        self.urls: list[str] = []
        self.tags: list[str] = []
        self.ids: list[str] = []
        self.text: dict[str, str] = {}
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attributes = dict(attrs)
        self.tags.append(tag)
        self.ids += [attributes["id"]] if "id" in attributes else []
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]
        if tag == "section":
            self.section = attributes["id"]
            self.sections.append(self.section)
        elif tag == "table" and attributes.get("id"):
            self.table = self.tables.setdefault(attributes["id"], [])
        elif tag == "tr" and self.table is not None:
            self.table.append([])
        elif tag in ("td", "th") and self.table is not None:
            self.table[-1].append((tag, ""))
        elif tag == "img":
            self.images.append((self.section, attributes["src"]))
        elif tag == "figure" and attributes.get("class") == "mistake":
            self.figures.append(self.section)

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self.table = None

    def handle_data(self, data: str) -> None:
        self.text[self.section] = self.text.get(self.section, "") + data
        if self.table and self.table[-1]:
            tag, text = self.table[-1][-1]
            self.table[-1][-1] = (tag, text + data)


def write_run(run: Path, lr: float = 0.01, epochs: int = 5) -> None:
    """summary.json, config.yaml and metrics.csv as the trainer writes them."""
    run.mkdir(parents=True)
    summary = {
        "status": "completed",
        "model": "convnet",
        "data": "mnist",
        "epochs": epochs,
        "steps": 4 * epochs,
        "train": {"loss": 0.2},
        "val": {"loss": 0.3, "accuracy": 0.9 + lr},
        "test": {"loss": 0.31, "accuracy": 0.89},
        "device": "cpu",
        "versions": {"torch": torch.__version__, "python": "3.12"},
    }
    (run / "summary.json").write_text(json.dumps(summary))
    config = {"model": {"name": "convnet"}, "optim": {"name": "sgd", "lr": lr}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    lines = ["epoch,step,train_loss,val_loss,val_accuracy,lr,grad_norm"]
    for epoch in range(1, epochs + 1):
        for step in range(4 * epoch - 3, 4 * epoch + 1):  # train points every step
            lines.append(f"{epoch},{step},{1 / step:.4f},,,{lr},{2 / step:.4f}")
        lines.append(f"{epoch},{4 * epoch},,{1 / epoch:.4f},{0.5 + lr * epoch},,")
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")


def predictions() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 3, (NUM_SAMPLES,), generator=generator)
    logits = 3 * torch.randn(NUM_SAMPLES, 3, generator=generator)
    logits[torch.arange(NUM_SAMPLES), targets] += 2.0  # better than chance
    return targets, torch.softmax(logits, dim=1)


@pytest.fixture
def image_run(tmp_path: Path) -> tuple[Path, Page]:
    run = tmp_path / "run-a"
    write_run(run)
    targets, probabilities = predictions()
    wrong = most_confident_mistakes(targets, probabilities, k=16)
    images = torch.randint(0, 256, (16, 3, 12, 12), dtype=torch.uint8)
    save_predictions(run, targets, probabilities, CLASS_NAMES, "image", images, wrong)
    (run / "model_summary.txt").write_text("Layer  Type\nfc  Linear <b>")
    events = [{"step": 7, "kind": "nan_loss", "message": "loss became NaN"}]
    (run / "doctor.json").write_text(json.dumps({"events": events}))
    path = write_report(run)
    assert path == run / "report.html"
    return run, Page(path.read_text())


def test_curves_are_embedded_and_saved_beside_the_report(image_run) -> None:
    run, page = image_run
    html = (run / "report.html").read_text()
    for section in ("curves", "optimization"):
        assert not [src for where, src in page.images if where == section]
        svg = (run / f"plots/{section}.svg").read_text()
        assert f'<section id="{section}"><h2>' in html and svg in html  # inline: values show on hover
        root = ElementTree.fromstring(svg)  # well-formed SVG
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
    curves = ElementTree.fromstring((run / "plots/curves.svg").read_bytes())
    labels = [t.text for t in curves.iter("{http://www.w3.org/2000/svg}text")]
    assert {"train_loss", "val_loss", "loss", "accuracy", "val_accuracy"} <= set(labels)
    assert "train_loss (smoothed)" in labels and "NaN/Inf step" in labels  # 20 train points; the event
    assert len(list(curves.iter("{http://www.w3.org/2000/svg}polyline"))) >= 2
    hover = [t.text for t in curves.iter("{http://www.w3.org/2000/svg}title")]
    assert "val_loss 8: 0.5" in hover  # epoch 2's validation loss, at step 8


def test_confusion_matrix_and_per_class_metrics_match_hand_counts(image_run) -> None:
    _, page = image_run
    targets, probabilities = predictions()
    predicted = probabilities.argmax(dim=1).tolist()
    expected = [[0] * 3 for _ in range(3)]
    for true, guess in zip(targets.tolist(), predicted, strict=True):
        expected[true][guess] += 1
    rows = page.tables["confusion-matrix"]
    assert [text for _, text in rows[0][1:]] == CLASS_NAMES
    counts = [[int(text) for tag, text in row if tag == "td"] for row in rows[1:]]
    assert counts == expected
    assert sum(map(sum, counts)) == NUM_SAMPLES
    assert len(set(predicted)) == 3 and sum(expected[i][i] for i in range(3)) < 200

    table = page.tables["per-class"][1:]
    for c, row in enumerate(table):
        hits = expected[c][c]
        column = sum(expected[r][c] for r in range(3))
        support = sum(expected[c])
        precision, recall = hits / column, hits / support
        f1 = 2 * precision * recall / (precision + recall)
        cells = [text for _, text in row]
        assert cells[0] == CLASS_NAMES[c]
        assert [float(v) for v in cells[1:4]] == pytest.approx([precision, recall, f1], abs=5e-5)
        assert int(cells[4]) == support


def test_mistakes_grid_holds_the_most_confident_wrong_examples(image_run) -> None:
    _, page = image_run
    assert page.figures.count("mistakes") == 16
    images = [src for where, src in page.images if where == "mistakes"]
    assert len(images) == 16 and all(s.startswith("data:image/png;base64,") for s in images)
    targets, probabilities = predictions()
    confidence, predicted = probabilities.max(dim=1)
    wrong = [i for i in range(NUM_SAMPLES) if predicted[i] != targets[i]]
    top = max(wrong, key=lambda i: confidence[i])
    name = CLASS_NAMES[int(predicted[top])]
    assert f"#{top}: true {CLASS_NAMES[int(targets[top])]}, predicted {name}" in (page.text["mistakes"])


def test_report_is_self_contained_and_shows_every_input(image_run) -> None:
    _, page = image_run
    assert "script" not in page.tags and "link" not in page.tags
    assert len(page.ids) == len(set(page.ids)), "every id names one element"
    assert all(url.startswith("data:") for url in page.urls)
    assert not any(url.startswith(("http://", "https://")) for url in page.urls)
    for section in ["config", "environment", "curves", "optimization", "predictions"]:
        assert section in page.sections
    assert "lr: 0.01" in page.text["config"]
    assert "cpu" in page.text["environment"] and torch.__version__ in page.text["environment"]
    assert "fc  Linear <b>" in page.text["model-summary"]  # escaped, shown as text
    assert "loss became NaN" in page.text["doctor"]


def test_report_leads_with_the_answer(image_run) -> None:
    run, page = image_run
    (run / "summary.json").write_text(
        json.dumps(
            {
                **json.loads((run / "summary.json").read_text()),
                "best": {"epoch": 4, "step": 16, "val_loss": 0.25},
                "train_time_s": 12.5,
                "samples_per_s": 1000.0,
            }
        )
    )
    page = Page(write_report(run).read_text())
    assert page.sections[0] == "overview" and page.sections[-2:] == ["config", "environment"]
    facts = {row[0][1]: row[1][1] for row in page.tables["headline"]}
    assert facts["test accuracy"] == "0.8900" and next(iter(facts)) == "test accuracy"
    assert facts["best epoch"] == "4 of 5 (val_loss 0.2500)"
    assert facts["time"] == "12.5 s (1,000 samples/s)"
    assert facts["status"] == "completed" and facts["doctor events"] == "1 NaN/Inf step(s)"
    html = (run / "report.html").read_text()
    assert '<section id="config"><details>' in html and '<section id="environment"><details>' in html


def test_missing_optional_inputs_leave_notes(tmp_path: Path) -> None:
    run = tmp_path / "bare"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"status": "failed", "device": "cpu"}))
    (run / "config.yaml").write_text("optim:\n  lr: 0.1\n")
    page = Page(write_report(run).read_text())
    assert page.images == [] and "confusion-matrix" not in page.tables
    for section in ("curves", "predictions", "mistakes", "model-summary", "doctor"):
        assert section in page.sections and page.text[section].strip()
    assert not (run / "plots").exists()


def test_text_and_audio_mistakes(tmp_path: Path) -> None:
    targets, probabilities = predictions()
    wrong = most_confident_mistakes(targets, probabilities, k=4)
    text_run, audio_run = tmp_path / "text", tmp_path / "audio"
    for run in (text_run, audio_run):
        write_run(run)
    texts = [f"sentence <{i}>" for i in range(4)]
    save_predictions(
        text_run,
        targets,
        probabilities,
        CLASS_NAMES,
        "text",
        example_indices=wrong,
        example_texts=texts,
    )
    spectrograms = torch.randn(4, 1, 16, 20)
    names = [f"clip_{i}.wav" for i in range(4)]
    save_predictions(
        audio_run,
        targets,
        probabilities,
        CLASS_NAMES,
        "audio",
        spectrograms,
        wrong,
        example_names=names,
    )
    text_page = Page(write_report(text_run).read_text())
    assert text_page.figures.count("mistakes") == 0  # a table, not image-sized tiles
    header, *rows = text_page.tables["text-mistakes"]
    assert [text for _, text in header] == ["sample", "text", "true", "predicted", "probability"]
    predicted = probabilities.argmax(dim=1)
    for row, text, index in zip(rows, texts, wrong.tolist(), strict=True):
        guess = int(predicted[index])
        expected = [f"#{index}", text, CLASS_NAMES[int(targets[index])], CLASS_NAMES[guess]]
        assert [cell for _, cell in row] == [*expected, f"{float(probabilities[index, guess]):.2f}"]
    audio_page = Page(write_report(audio_run).read_text())
    assert len([s for s in audio_page.images if s[0] == "mistakes"]) == 4
    assert all(n in audio_page.text["mistakes"] for n in names)


def test_most_confident_mistakes_by_hand() -> None:
    targets = torch.tensor([0, 1, 2, 0, 1])
    probabilities = torch.tensor(
        [
            [0.9, 0.1, 0.0],
            [0.7, 0.2, 0.1],
            [0.1, 0.3, 0.6],
            [0.1, 0.8, 0.1],
            [0.3, 0.3, 0.4],
        ]
    )
    # wrong: 1 (0.7), 3 (0.8), 4 (0.4); the most confident first
    assert most_confident_mistakes(targets, probabilities).tolist() == [3, 1, 4]
    assert most_confident_mistakes(targets, probabilities, k=1).tolist() == [3]


def test_save_predictions_rejects_inconsistent_inputs(tmp_path: Path) -> None:
    targets, probabilities = predictions()
    with pytest.raises(UsageError, match="softmax"):
        save_predictions(tmp_path, targets, torch.log(probabilities), CLASS_NAMES, "image")
    with pytest.raises(UsageError, match="2 class names for 3 classes"):
        save_predictions(tmp_path, targets, probabilities, ["a", "b"], "image")
    with pytest.raises(UsageError, match="modality"):
        save_predictions(tmp_path, targets, probabilities, CLASS_NAMES, "video")
    with pytest.raises(UsageError, match="example_indices"):
        save_predictions(
            tmp_path,
            targets,
            probabilities,
            CLASS_NAMES,
            "image",
            torch.zeros(2, 1, 4, 4),
        )
    assert not (tmp_path / "predictions.safetensors").exists()


def test_compare_shows_differing_config_and_curves(tmp_path: Path) -> None:
    write_run(tmp_path / "a", lr=0.01)
    write_run(tmp_path / "b", lr=0.05, epochs=3)
    output = write_comparison([tmp_path / "a", tmp_path / "b"], tmp_path / "out/cmp.html")
    page = Page(output.read_text())
    diff = {row[0][1]: [text for _, text in row[1:]] for row in page.tables["config-diff"]}
    assert diff["optim.lr"] == ["0.01", "0.05"]
    assert "model.name" not in diff and "optim.name" not in diff
    metrics = page.tables["final-metrics"]
    assert [row[0][1] for row in metrics[1:]] == ["a", "b"]
    header = [text for _, text in metrics[0]]
    assert [
        metrics[2][header.index("epochs")][1],
        metrics[1][header.index("epochs")][1],
    ] == [
        "3",
        "5",
    ]
    curves = [src for where, src in page.images if where == "curves"]
    assert len(curves) == 1 and curves[0].startswith("data:image/svg+xml;base64,")
    assert not any(url.startswith(("http://", "https://")) for url in page.urls)


def test_compare_rejects_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    write_run(tmp_path / "a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"empty is not a run directory: no summary\.json"):
        write_comparison([tmp_path / "a", tmp_path / "empty"], tmp_path / "cmp.html")
    with pytest.raises(UsageError, match="does not exist"):
        write_comparison([tmp_path / "a", tmp_path / "missing"], tmp_path / "cmp.html")
    with pytest.raises(UsageError, match="is not a run directory"):
        write_report(tmp_path / "empty")
