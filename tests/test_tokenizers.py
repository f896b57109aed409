"""Text in any language: Unicode reading and normalisation, tokenizers by script, learned
subword vocabularies saved with the run, token-level language models."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import unicodedata
import zlib
from pathlib import Path

import pytest
import torch

import torchsmith
from torchsmith.cli.main import main
from torchsmith.data.text import (
    TokenizerOptions,
    WordTokenizer,
    build_tokenizer,
    load_table_dataset,
    load_textfile,
    read_table,
    tokenizer_from_state,
)
from torchsmith.data.unicode import guess_encoding, normalize, read_utf8, script_profile
from torchsmith.errors import UsageError

needs_tokenizers = pytest.mark.skipif(
    importlib.util.find_spec("tokenizers") is None,
    reason="Hugging Face tokenizers is not installed (pip install 'torchsmith[text]')",
)

TEXTS = {
    "chinese": "这本书的内容很精彩，印刷质量也不错！",
    "japanese": "この映画はとても面白かったです。また見たい！",
    "arabic": "هذا الفيلم رائع جدا، أنصح الجميع بمشاهدته.",
    "emoji": "好评👍🏽 loved it 😍 family: 👨‍👩‍👧 🇨🇳",
    "accented": "Crème brûlée, naïve café, Ångström, São Paulo, Łódź",
}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ Unicode


def test_normalize_folds_width_and_case_only_where_there_is_case() -> None:
    assert normalize("ＧＲＥＡＴ　Ｆｉｌｍ！１２３") == "great film!123"
    decomposed = unicodedata.normalize("NFD", TEXTS["accented"])
    assert decomposed != TEXTS["accented"] and normalize(decomposed) == normalize(TEXTS["accented"])
    for name in ("chinese", "japanese", "arabic"):  # no case, no width forms: unchanged but for NFKC
        assert normalize(TEXTS[name]) == unicodedata.normalize("NFKC", TEXTS[name])
    assert "👨‍👩‍👧" in normalize(TEXTS["emoji"]) and "👍🏽" in normalize(TEXTS["emoji"])


def test_script_profile_and_encoding_guesses() -> None:
    assert script_profile([TEXTS["chinese"], TEXTS["japanese"]]).unspaced_share > 0.95
    assert script_profile([TEXTS["arabic"], TEXTS["accented"]]).unspaced_share == 0.0
    assert guess_encoding("中文评论，很好看".encode("gbk")).startswith("GBK")
    assert guess_encoding("日本語のテキストです".encode("shift_jis")).startswith("Shift-JIS")
    assert guess_encoding("crème brûlée".encode("cp1252")).startswith("Windows-1252")


def test_read_utf8_drops_the_bom_and_refuses_other_encodings(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes("\ufeff好\r\n".encode())
    assert read_utf8(path) == "好\r\n"
    path.write_bytes("line one\nline two\n好评，质量很好\n".encode("gbk"))
    with pytest.raises(UsageError, match=r"line 3, column 1: byte 0xBA is not UTF-8.*GBK/GB18030"):
        read_utf8(path)
    path.write_text("好", encoding="utf-16")
    with pytest.raises(UsageError, match="UTF-16"):
        read_utf8(path)


def test_tables_with_a_bom_and_windows_line_ends_read_as_written(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    rows = ["text,label", "很好看，推荐,positive", '"太差了,不推荐",negative', "Ｇｏｏｄ,positive"]
    path.write_bytes(("\ufeff" + "\r\n".join(rows) + "\r\n").encode("utf-8"))
    table = read_table(path)
    assert table.texts == ["很好看，推荐", "太差了,不推荐", "Ｇｏｏｄ"]  # read as written; tokenizers normalise
    assert table.labels == [1, 0, 1] and table.class_names == ["negative", "positive"]


def test_non_utf8_table_exits_2_naming_the_line_in_a_real_process(tmp_path: Path) -> None:
    path = tmp_path / "gbk.tsv"
    path.write_bytes("text\tlabel\ngood\t1\n质量很好\t1\n".encode("gbk"))
    command = [sys.executable, "-m", "torchsmith", "train", "--data", f"tsv:{path}", "--model", "bow"]
    result = subprocess.run([*command, "--max-steps", "1", "--run-dir", str(tmp_path / "run")], capture_output=True)
    error = result.stderr.decode("utf-8")
    assert result.returncode == 2, error
    assert "line 3" in error and "not UTF-8" in error and "GBK" in error
    assert "Traceback" not in error and not (tmp_path / "run").exists()


# ------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", list(TEXTS))
def test_character_tokens_round_trip(name: str) -> None:
    text = TEXTS[name]
    tokenizer = WordTokenizer.build(TEXTS.values(), unit="chars", normalized=True)
    ids = tokenizer.encode(text)
    assert 1 not in ids  # no <unk>: every character is in the vocabulary
    assert tokenizer.decode(ids) == "".join(normalize(text).split())
    restored = tokenizer_from_state(json.loads(json.dumps(tokenizer.state_dict())))
    assert restored.encode(text) == ids


@needs_tokenizers
@pytest.mark.parametrize("name", list(TEXTS))
def test_learned_pieces_round_trip(name: str) -> None:
    from torchsmith.data.tokenizers import LearnedTokenizer

    others = [text for key, text in TEXTS.items() if key != name]  # the text itself never seen in training
    as_written = LearnedTokenizer.train(others * 20, "bpe", 400, lowercase=False, normalized=False)
    assert as_written.decode(as_written.encode(TEXTS[name])) == TEXTS[name]  # byte level: exact, unseen text too
    bpe = LearnedTokenizer.train(TEXTS.values(), "bpe", 400)
    assert bpe.decode(bpe.encode(TEXTS[name])) == normalize(TEXTS[name])
    wordpiece = LearnedTokenizer.train(list(TEXTS.values()) * 5, "wordpiece", 400)
    ids = wordpiece.encode(TEXTS[name])
    assert 1 not in ids and "".join(wordpiece.decode(ids).split()) == "".join(normalize(TEXTS[name]).split())
    for tokenizer in (as_written, bpe, wordpiece):
        restored = tokenizer_from_state(json.loads(json.dumps(tokenizer.state_dict())))
        assert restored.encode(TEXTS[name]) == tokenizer.encode(TEXTS[name])


def test_the_default_tokenizer_follows_the_script() -> None:
    chinese, choice = build_tokenizer([TEXTS["chinese"], TEXTS["japanese"]], TokenizerOptions())
    assert choice.startswith("chars") and "auto" in choice and "2-3-grams" in choice
    state = chinese.state_dict()
    assert state["kind"] == "chars" and state["normalize"] == "NFKC" and state["subwords"]["max_n"] == 3
    english, choice = build_tokenizer([TEXTS["arabic"], TEXTS["accented"]], TokenizerOptions())
    assert choice.startswith("words") and english.state_dict()["kind"] == "words"
    assert english.encode("ÅNGSTRÖM") == english.encode("ångström") != [1]
    off, _ = build_tokenizer([TEXTS["chinese"]], TokenizerOptions.from_options({"subwords": 0}))
    assert off.state_dict()["kind"] == "chars" and "subwords" not in off.state_dict()
    with pytest.raises(UsageError, match="tokenizer must be one of"):
        TokenizerOptions.from_options({"tokenizer": "jieba"})


def test_character_four_grams_are_an_option() -> None:
    options = {"subwords": {"buckets": 1000, "min_n": 2, "max_n": 4, "per_word": 3}}
    tokenizer, choice = build_tokenizer(["这本书很好看", "这本书不好看"], TokenizerOptions.from_options(options))
    assert "character 2-4-grams in 1000 buckets" in choice
    ids, _, pieces = tokenizer.encode_compact(["好看吗呀"], max_len=8)
    assert pieces is not None and pieces.shape[1] == 4  # the character, its bigram, trigram and 4-gram
    first = pieces[ids[0, 0]].tolist()
    offset = len(tokenizer)
    assert first[1:] == [offset + zlib_crc(gram) % 1000 for gram in ("好看", "好看吗", "好看吗呀")]
    assert pieces[ids[0, 2]].tolist()[3] == 0  # '吗' has no 4-gram left: padded


def test_validation_carve_names_the_rows_a_word_bundle_validates_on() -> None:
    from torchsmith.data.words import Table, build_word_bundle, validation_carve

    texts = [f"第{i}条评论" for i in range(40)]
    table = Table(texts, [i % 2 for i in range(40)], ["negative", "positive"], [])
    bundle = build_word_bundle(table, None, None, max_len=8, val_fraction=0.25, seed=3)
    kept, carved = validation_carve(40, 0.25, seed=3)
    assert len(carved) == 10 and sorted(kept + carved) == list(range(40))
    assert bundle.val is not None and bundle.train is not None
    assert list(bundle.val.texts or []) == [texts[i] for i in carved]
    assert list(bundle.train.texts or []) == [texts[i] for i in kept]
    assert validation_carve(40, 0.25, seed=4)[1] != carved


def zlib_crc(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def test_a_word_tokenizer_saved_before_normalisation_reads_as_it_did() -> None:
    tokenizer = WordTokenizer.build(["ＧＲＥＡＴ film", "great film"])  # as runs were built before
    state = json.loads(json.dumps(tokenizer.state_dict()))
    assert "normalize" not in state
    old = tokenizer_from_state(state)
    assert old.encode("ＧＲＥＡＴ") != old.encode("great")  # full width kept apart, as before
    new = WordTokenizer.build(["ＧＲＥＡＴ film", "great film"], normalized=True)
    assert new.encode("ＧＲＥＡＴ") == new.encode("great")


# -------------------------------------------------- classification runs

POSITIVE = ["这本书写得很好，非常喜欢", "质量很好，物流也快", "内容精彩，值得推荐", "很满意，孩子很喜欢"]
NEGATIVE = ["质量太差，非常失望", "内容空洞，不推荐购买", "印刷很差，后悔买了", "物流太慢，很不满意"]


def write_chinese_reviews(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name, copies in (("train", 10), ("dev", 2)):
        rows = ["text\tlabel"] + [f"{t}\t好评" for t in POSITIVE * copies] + [f"{t}\t差评" for t in NEGATIVE * copies]
        (folder / f"{name}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


@pytest.mark.parametrize("tokenizer", ["auto", pytest.param("bpe", marks=needs_tokenizers)])
def test_saved_tokenizer_reproduces_predictions_after_reload(
    tokenizer: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_chinese_reviews(tmp_path / "reviews")
    run = tmp_path / "run"
    flags = ["--data", f"tsv:{data}", "--model", "textcnn", "--model-args", '{"embed_dim": 16, "num_filters": 8}']
    settings = ["--set", f"data.options.tokenizer={tokenizer}", "--set", "data.options.vocab_size=120"]
    assert main(["train", *flags, *settings, "--epochs", "6", "--lr", "0.01", "--run-dir", str(run)]) == 0
    err = capsys.readouterr().err
    saved = json.loads((run / "preprocessing.json").read_text(encoding="utf-8"))["preprocessing"]
    expected_kind = "chars" if tokenizer == "auto" else "bpe"
    assert f"tokenizer: {expected_kind}" in err and saved["tokenizer_choice"].startswith(expected_kind)
    assert saved["tokenizer"]["kind"] == expected_kind
    assert '"好评"' in (run / "preprocessing.json").read_text(encoding="utf-8")  # written in its own script
    # The model's outputs on texts tokenised in memory at training time...
    options = TokenizerOptions.from_options({"tokenizer": tokenizer, "vocab_size": 120})
    bundle = load_table_dataset(data, max_len=64, tokenizer=options)
    predictor = torchsmith.load(run, checkpoint="final")
    ids, _ = bundle.test.get_batch(torch.arange(len(bundle.test)), None, False)
    with torch.no_grad():
        in_memory = predictor.model(ids).softmax(dim=1)
    texts = list(bundle.test.texts)
    # ...equal those of the run reloaded from its files, in this process and in a new one.
    reloaded = predictor.predict(texts)
    assert torch.allclose(reloaded.probabilities, in_memory, atol=1e-6)
    assert reloaded.labels == [("好评" if t in POSITIVE else "差评") for t in texts]
    command = [sys.executable, "-m", "torchsmith", "predict", str(run), "--checkpoint", "final", *texts[:3]]
    result = subprocess.run(command, capture_output=True, text=True, encoding="utf-8")
    assert result.returncode == 0, result.stderr
    lines = [line.split("\t") for line in result.stdout.strip().splitlines()]
    assert [line[0] for line in lines] == texts[:3]
    assert [line[1] for line in lines] == reloaded.labels[:3]
    assert [float(line[2]) for line in lines] == pytest.approx(reloaded.confidence[:3].tolist(), abs=1e-4)
    # evaluate re-reads the data through the saved tokenizer.
    assert main(["evaluate", str(run), "--checkpoint", "final"]) == 0
    assert "accuracy 1.0000" in capsys.readouterr().out


def test_report_shows_mistakes_in_their_own_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_chinese_reviews(tmp_path / "reviews")
    run = tmp_path / "run"
    flags = ["--data", f"tsv:{data}", "--model", "bow", "--max-steps", "1"]
    assert main(["train", *flags, "--run-dir", str(run), "--quiet"]) == 0
    capsys.readouterr()
    predictions = json.loads((run / "predictions.json").read_text(encoding="utf-8"))
    shown = predictions.get("example_texts") or []
    assert shown and all(text in POSITIVE + NEGATIVE for text in shown)
    report = (run / "report.html").read_text(encoding="utf-8")
    assert shown[0] in report


# ------------------------------------------------------- language models


@needs_tokenizers
def test_bpe_language_model_reports_loss_per_character_and_generates_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "poem.txt"
    text.write_text("ROMEO: what light through yonder window breaks?\nJULIET: ay me!\n" * 120, encoding="utf-8")
    bundle = load_textfile(text, block_size=16, tokenizer="bpe", vocab_size=300)
    preprocessing = bundle.info.preprocessing
    assert preprocessing["kind"] == "tokens" and bundle.info.num_classes <= 300
    tokenizer = tokenizer_from_state(preprocessing["tokenizer"])
    val_text = text.read_text(encoding="utf-8")[int(len(text.read_text(encoding="utf-8")) * 0.9) :]
    assert tokenizer.decode(bundle.val.tokens.tolist()) == val_text  # the split decodes back exactly
    assert preprocessing["chars_per_token"] == pytest.approx(len(val_text) / len(bundle.val.tokens), rel=1e-5)
    run = tmp_path / "run"
    model = ["--model", "gpt", "--model-args", '{"num_layers": 1, "embed_dim": 32, "num_heads": 2}']
    settings = ["--set", "data.options.tokenizer=bpe", "--set", "data.options.vocab_size=300"]
    settings += ["--set", "data.options.block_size=16"]
    assert main(["train", "--data", f"textfile:{text}", *model, *settings, "--max-steps", "30", "--lr", "0.01",
                 "--run-dir", str(run), "--quiet"]) == 0  # fmt: skip
    assert "bits/char" in capsys.readouterr().out
    val = json.loads((run / "summary.json").read_text())["val"]
    assert val["loss_per_char"] == pytest.approx(val["loss"] / preprocessing["chars_per_token"], rel=1e-6)
    assert val["bits_per_char"] == pytest.approx(val["loss_per_char"] / 0.6931471805599453, rel=1e-6)
    assert main(["generate", str(run), "--prompt", "ROMEO:", "--length", "20", "--seed", "1"]) == 0
    generated = capsys.readouterr().out.rstrip("\n")
    assert generated.startswith("ROMEO:") and len(generated) > len("ROMEO:") + 20  # pieces are several characters
    assert main(["evaluate", str(run)]) == 0  # reads the text through the saved vocabulary
    assert f"{val['loss']:.4f}" in capsys.readouterr().out


def test_chinese_text_trains_a_character_model_that_writes_chinese(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "中文.txt"
    text.write_text("床前明月光，疑是地上霜。举头望明月，低头思故乡。\n" * 60, encoding="utf-8")
    run = tmp_path / "run"
    model = ["--model", "char-gpt", "--model-args", '{"num_layers": 1, "embed_dim": 32, "num_heads": 2}']
    assert main(["train", "--data", f"textfile:{text}", *model, "--set", "data.options.block_size=24",
                 "--max-steps", "60", "--lr", "0.01", "--run-dir", str(run), "--quiet"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "床前", "--length", "24", "--temperature", "0"]) == 0
    generated = capsys.readouterr().out.rstrip("\n")
    assert generated.startswith("床前") and len(generated) == 26
    assert "明月" in generated  # the most likely continuation, learnt


def test_old_model_names_are_aliases(capsys: pytest.CaptureFixture[str]) -> None:
    from torchsmith.data.bundle import DataInfo
    from torchsmith.models.registry import build_model
    from torchsmith.models.text import GPT, LSTMLanguageModel

    info = DataInfo("text", 10, (8,), task="sequence", preprocessing={"kind": "tokens", "block_size": 8})
    assert type(build_model("char-gpt", info, {"num_layers": 1, "embed_dim": 8, "num_heads": 2})) is GPT
    assert type(build_model("char-lstm", info, {"hidden_dim": 8})) is LSTMLanguageModel
    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    assert "char-gpt" in out and "the earlier name of gpt" in out


def test_character_ngram_rows_start_at_zero() -> None:
    from torchsmith.data.bundle import DataInfo
    from torchsmith.models.registry import build_model

    tokenizer, _ = build_tokenizer(POSITIVE + NEGATIVE, TokenizerOptions.from_options({"subwords": 50}))
    info = DataInfo("text", 2, (16, 3), preprocessing={"kind": "words", "tokenizer": tokenizer.state_dict()})
    for name in ("bow", "textcnn", "bilstm"):
        weight = build_model(name, info, {"embed_dim": 8}).embedding.weight
        assert weight.shape[0] == len(tokenizer) + 50
        assert weight[len(tokenizer) :].abs().sum() == 0 and weight[2 : len(tokenizer)].abs().sum() > 0


def test_bow_linear_is_a_logistic_regression_over_the_bag_starting_at_zero() -> None:
    from torchsmith.data.bundle import DataInfo
    from torchsmith.models.registry import build_model

    tokenizer, _ = build_tokenizer(POSITIVE + NEGATIVE, TokenizerOptions.from_options({"subwords": 50}))
    info = DataInfo("text", 2, (16, 3), preprocessing={"kind": "words", "tokenizer": tokenizer.state_dict()})
    model = build_model("bow-linear", info)
    assert model.embedding.weight.shape == (len(tokenizer) + 50, 2)  # a score per class for each id
    assert model.embedding.weight.abs().sum() == 0 and model.pooling == "sqrt"
    assert build_model("bow-linear", info, {"pooling": "mean"}).pooling == "mean"  # its defaults can be changed
