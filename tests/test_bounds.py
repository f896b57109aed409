"""Bounded memory and messages: class tables past a limit, YAML alias bombs, id columns taken for
labels, images whose header declares too many pixels, text files too large to read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import write_image_tree

from torchsmith.after.evaluate import Evaluation
from torchsmith.config import load_yaml
from torchsmith.data.image_store import ImageOptions
from torchsmith.data.unicode import read_utf8, text_read_limit
from torchsmith.data.vision import load_imagefolder
from torchsmith.data.words import read_table
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


def test_an_id_column_is_not_taken_for_class_numbers(tmp_path: Path) -> None:
    path = tmp_path / "ids.tsv"
    path.write_text("sentence\tlabel\n" + "".join(f"word {i}\t{10**6 + i}\n" for i in range(30)))
    with pytest.raises(UsageError, match=r"30 distinct integers up to 1,000,029.*looks like an id column"):
        read_table(path)
    path.write_text("sentence\tlabel\n" + "".join(f"word {i}\t{i * 30}\n" for i in range(30)))
    assert len(read_table(path).class_names) == 871  # sparse class numbers below the limit still pass


def test_images_over_max_pixels_are_refused_from_their_header(tmp_path: Path) -> None:
    root = write_image_tree(tmp_path / "tree", classes=2, per_class=3, size=16)
    (root / "class0" / "000.png").write_bytes(big_png_header(1000, 1000))  # 1e6 pixels of junk, never decoded
    options = ImageOptions.from_options({"max_pixels": "100_000", "max_broken": 0.5}, cache_dir=tmp_path / "cache")
    bundle = load_imagefolder(str(root), val_fraction=0, test_fraction=0.0, options=options)
    assert len(bundle.train) == 5
    assert bundle.info.problems[0]["reason"].startswith("its header declares 1000x1000 pixels (more than 100,000")
    with pytest.raises(UsageError, match=r"none of the 6 image files.*more than 255 refused"):
        load_imagefolder(str(root), options=ImageOptions(max_pixels=255, cache_dir=tmp_path / "cache"))
    with pytest.raises(UsageError, match="max_pixels must be a positive integer"):
        ImageOptions.from_options({"max_pixels": 0})


def big_png_header(width: int, height: int) -> bytes:
    """A PNG declaring width x height whose pixel data is junk: decoding it would fail otherwise."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"junk") + chunk(b"IEND", b"")


def test_a_text_file_over_the_read_limit_is_refused_naming_its_size(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_text("x" * 5000)
    with pytest.raises(UsageError, match=r"big.txt is 5,000 bytes, more than the 4,096 bytes read into memory"):
        read_utf8(path, limit=4096)
    assert read_utf8(path, limit=5000) == "x" * 5000
    assert text_read_limit() > 1 << 20


def test_tables_are_checked_against_the_read_limit_before_reading(tmp_path: Path) -> None:
    from torchsmith.data.unicode import check_read_size

    path = tmp_path / "t.csv"
    path.write_text("a,b\n" + "1,2\n" * 1000)
    with pytest.raises(UsageError, match=r"t.csv is 4,004 bytes, more than the 1,000 bytes"):
        check_read_size(path, 1000)
    check_read_size(path)  # far below the default limit
