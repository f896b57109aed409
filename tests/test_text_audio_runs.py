"""Text and speech end to end: train through the CLI on files the tests write, then
predict sentences and WAV files, and generate text deterministically."""

from __future__ import annotations

import json
import math
import wave
from pathlib import Path

import pytest
import torch

import torchsmith
from torchsmith.cli.main import main
from torchsmith.errors import UsageError

POSITIVE = ["a gorgeous , witty film", "wonderful and moving", "a delight from start to finish", "great fun"]
NEGATIVE = ["a dull , tedious mess", "boring and stupid", "an awful waste of time", "flat and lifeless"]


def write_sentiment(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name, copies in (("train", 12), ("dev", 2)):
        rows = ["sentence\tlabel"] + [f"{t}\t1" for t in POSITIVE * copies] + [f"{t}\t0" for t in NEGATIVE * copies]
        (folder / f"{name}.tsv").write_text("\n".join(rows) + "\n")
    return folder


def test_text_classification_run_predicts_sentences(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_sentiment(tmp_path / "sentiment")
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                f"tsv:{data}",
                "--model",
                "bow",
                "--epochs",
                "15",
                "--lr",
                "0.05",
                "--run-dir",
                str(run),
                "--quiet",
            ]
        )
        == 0
    )
    capsys.readouterr()
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("wonderful and moving\n\nboring and stupid\n")
    assert main(["predict", str(run), "a gorgeous , witty film", str(inputs)]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]
    assert [(line[0], line[1]) for line in lines] == [
        ("a gorgeous , witty film", "1"),
        ("wonderful and moving", "1"),
        ("boring and stupid", "0"),
    ]
    assert all(0.5 < float(line[2]) <= 1.0 for line in lines)


def test_text_run_with_subwords_and_length_groups(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Subword pieces let a word never seen in training ("wonderfully") carry what its
    # n-grams learnt; the run saves them with the tokenizer, so predict reads text the same way.
    data = write_sentiment(tmp_path / "sentiment")
    run = tmp_path / "run"
    flags = ["--data", f"tsv:{data}", "--model", "bilstm", "--model-args", '{"embed_dim": 16, "hidden_dim": 16}']
    settings = ["--set", "data.options.subwords=2000", "--set", "train.group_by_length=true"]
    assert main(["train", *flags, *settings, "--epochs", "12", "--lr", "0.02", "--run-dir", str(run), "--quiet"]) == 0
    capsys.readouterr()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["test"]["accuracy"] == 1.0
    tokenizer = json.loads((run / "preprocessing.json").read_text())["preprocessing"]["tokenizer"]
    assert tokenizer["subwords"]["buckets"] == 2000
    assert main(["predict", str(run), "wonderfully moving", "boringly stupid"]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]
    assert [line[1] for line in lines] == ["1", "0"]
    # Grouping by length needs data that knows its lengths: images do not.
    image_run = ["train", "--max-steps", "1", "--run-dir", str(tmp_path / "images")]
    assert main([*image_run, "--set", "train.group_by_length=true"]) == 2
    assert "group_by_length needs in-memory sequence data" in capsys.readouterr().err


def test_subword_textcnn_exports_to_onnx_with_parity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")
    pytest.importorskip("onnxscript", reason="onnxscript is not installed (pip install onnxscript)")
    folder = tmp_path / "numbered"
    folder.mkdir()
    rows = ["sentence\tlabel"]
    rows += [f"{POSITIVE[i % 4]} {i}\t1" for i in range(24)] + [f"{NEGATIVE[i % 4]} {i}\t0" for i in range(24)]
    for name in ("train", "dev"):
        (folder / f"{name}.tsv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    flags = ["--data", f"tsv:{folder}", "--model", "textcnn", "--set", "data.options.subwords=500", "--epochs", "2"]
    assert main(["train", *flags, "--run-dir", str(run), "--quiet"]) == 0
    capsys.readouterr()
    # The export's own parity check runs the ONNX model on batches of (B, L, 25) token pieces.
    assert main(["export", str(run)]) == 0
    assert "ok" in capsys.readouterr().out


def write_tone(path: Path, frequency: float, rate: int = 8000, seconds: float = 0.5) -> None:
    t = torch.arange(int(rate * seconds)) / rate
    samples = (0.5 * torch.sin(2 * math.pi * frequency * t) * 32767).to(torch.int16)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(samples.numpy().tobytes())


def test_speech_run_predicts_wav_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for label, frequency in (("low", 300.0), ("high", 2500.0)):
        for split, count in (("train", 16), ("test", 4)):
            folder = tmp_path / "tones" / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                write_tone(folder / f"{i}.wav", frequency * (1 + 0.02 * i))
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                f"wavfolder:{tmp_path / 'tones'}",
                "--model",
                "audiocnn",
                "--epochs",
                "8",
                "--lr",
                "0.01",
                "--batch-size",
                "8",
                "--run-dir",
                str(run),
                "--quiet",
            ]
        )
        == 0
    )
    capsys.readouterr()
    low, high = tmp_path / "tones" / "test" / "low" / "1.wav", tmp_path / "tones" / "test" / "high" / "2.wav"
    assert main(["predict", str(run), str(low), str(high)]) == 0
    labels = [line.split("\t")[1] for line in capsys.readouterr().out.strip().splitlines()]
    assert labels == ["low", "high"]
    with pytest.raises(UsageError, match="WAV"):
        torchsmith.load(run).predict([str(tmp_path / "missing.wav")])


def test_generate_is_deterministic_and_starts_with_the_prompt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "poem.txt"
    text.write_text("ROMEO: what light through yonder window breaks?\n" * 200)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                f"textfile:{text}",
                "--model",
                "char-gpt",
                "--model-args",
                '{"num_layers": 1, "embed_dim": 32, "num_heads": 2}',
                "--set",
                "data.options.block_size=32",
                "--max-steps",
                "40",
                "--lr",
                "0.01",
                "--run-dir",
                str(run),
                "--quiet",
            ]
        )
        == 0
    )
    capsys.readouterr()
    outputs = []
    for seed in (1, 1, 2):
        assert main(["generate", str(run), "--prompt", "ROMEO:", "--length", "100", "--seed", str(seed)]) == 0
        outputs.append(capsys.readouterr().out.rstrip("\n"))
    assert outputs[0] == outputs[1] != outputs[2]
    assert outputs[0].startswith("ROMEO:") and len(outputs[0]) == len("ROMEO:") + 100
    assert main(["generate", str(run), "--prompt", "ROMEO: ~"]) == 2  # a character the run never saw
