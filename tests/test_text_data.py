"""Character windows, word tokenizer and table readers on small files written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from torchsmith.data.bundle import DataBundle, MemorySource
from torchsmith.data.text import (
    PAD_ID,
    UNK_ID,
    CharWindows,
    Subwords,
    TokenBatches,
    WordTokenizer,
    decode,
    encode,
    load_sst2,
    load_table_dataset,
    load_textfile,
    read_table,
    subwords_option,
)
from torchsmith.errors import UsageError


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and the test machine's cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def shared_data() -> Path:
    """`../shared/data` seen from the project root, or from a folder above it (worktrees)."""
    root = Path(__file__).resolve().parents[1]
    for folder in root.parents:
        if (folder / "shared" / "data").is_dir():
            return folder / "shared" / "data"
    return root.parent / "shared" / "data"


SST2_DIR = shared_data() / "sst2"


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------- characters


def test_encode_decode_round_trip_and_unknown_character() -> None:
    vocabulary = sorted(set("hello world"))
    ids = encode("hello world", vocabulary)
    assert ids.dtype == torch.int64
    assert ids.tolist() == [vocabulary.index(c) for c in "hello world"]
    assert decode(ids, vocabulary) == "hello world"
    with pytest.raises(UsageError, match=r"'z'.*position 3"):
        encode("helz", vocabulary)
    with pytest.raises(UsageError, match="outside the vocabulary"):
        decode([len(vocabulary)], vocabulary)


def test_load_textfile_vocabulary_and_split(tmp_path: Path) -> None:
    text = "abcdefgh" * 40 + "XYZ" * 20  # X, Y, Z occur only in the validation tail
    path = tmp_path / "input.txt"
    path.write_text(text, encoding="utf-8")
    bundle = load_textfile(path, block_size=8, val_fraction=0.15)
    assert isinstance(bundle, DataBundle) and bundle.test is bundle.val
    assert isinstance(bundle.train, MemorySource)
    vocabulary = bundle.info.preprocessing["vocabulary"]
    assert vocabulary == sorted(set(text)) and bundle.info.num_classes == 11
    assert bundle.info.task == "sequence" and bundle.info.input_shape == (8,)
    assert bundle.info.preprocessing["kind"] == "chars"
    num_train = int(len(text) * 0.85)
    assert decode(bundle.train.tokens, vocabulary) == text[:num_train]
    assert decode(bundle.val.tokens, vocabulary) == text[num_train:]
    assert len(bundle.train) == (num_train - 1) // 8


def test_train_windows_shift_by_one_and_stay_inside_the_split(tmp_path: Path) -> None:
    # Train text uses a-h only, validation text X-Z only: any crossing would show.
    path = tmp_path / "input.txt"
    path.write_text("abcdefgh" * 50 + "XYZ" * 30, encoding="utf-8")
    bundle = load_textfile(path, block_size=16, val_fraction=0.2)
    vocabulary = bundle.info.preprocessing["vocabulary"]
    train_ids = {vocabulary.index(c) for c in "abcdefgh"}
    tokens = bundle.train.tokens
    for seed in range(20):
        indices = torch.arange(len(bundle.train))
        starts = bundle.train.window_starts(indices, gen(seed), train=True)
        assert int(starts.min()) >= 0 and int(starts.max()) + 17 <= len(tokens)
        x, y = bundle.train.get_batch(indices, gen(seed), train=True)
        assert x.shape == y.shape == (len(indices), 16) and x.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
        for row, start in enumerate(starts.tolist()):
            assert torch.equal(y[row], tokens[start + 1 : start + 17])
        assert set(torch.cat([x, y]).unique().tolist()) <= train_ids


def test_train_windows_are_random_reproducible_and_sliceable() -> None:
    windows = CharWindows(torch.arange(10_000) % 97, block_size=32)
    indices = torch.randperm(len(windows), generator=gen(0))[:64]
    x1, y1 = windows.get_batch(indices, gen(5), train=True)
    x2, y2 = windows.get_batch(indices, gen(5), train=True)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x3, _ = windows.get_batch(indices, gen(6), train=True)
    assert not torch.equal(x1, x3)
    # Offsets are random: not all windows start at a multiple of the block size.
    starts = windows.window_starts(indices, gen(5), train=True)
    assert len(set((starts % 32).tolist())) > 10
    # A rank that builds its slice of the batch gets exactly that slice.
    x_part, _ = windows.get_batch(indices[16:32], gen(5), train=True)
    assert torch.equal(x_part, x1[16:32])


def test_validation_windows_cover_the_text_once() -> None:
    tokens = torch.arange(1000) % 50
    windows = CharWindows(tokens, block_size=64)
    assert len(windows) == 999 // 64
    x, y = windows.get_batch(torch.arange(len(windows)), None, train=False)
    covered = len(windows) * 64
    assert torch.equal(x.reshape(-1), tokens[:covered])
    assert torch.equal(y.reshape(-1), tokens[1 : covered + 1])
    x2, _ = windows.get_batch(torch.tensor([3, 1]), gen(0), train=False)
    assert torch.equal(x2, torch.stack([tokens[192:256], tokens[64:128]]))
    with pytest.raises(IndexError):
        windows.get_batch(torch.tensor([len(windows)]), None, train=False)


def test_textfile_errors(tmp_path: Path) -> None:
    path = tmp_path / "short.txt"
    path.write_text("just a short line\n", encoding="utf-8")
    with pytest.raises(UsageError, match="smaller block_size"):
        load_textfile(path, block_size=128)
    with pytest.raises(UsageError, match="no such file"):
        load_textfile(tmp_path / "missing.txt")
    with pytest.raises(UsageError, match="val_fraction"):
        load_textfile(path, block_size=2, val_fraction=1.0)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 50)
    with pytest.raises(UsageError, match="not UTF-8"):
        load_textfile(tmp_path / "latin1.txt", block_size=4)


# ---------------------------------------------------------------------- words


def test_tokenizer_splits_punctuation_and_round_trips_through_json() -> None:
    assert WordTokenizer.split("It's GREAT, isn't it?!") == [
        "it's", "great", ",", "isn't", "it", "?", "!",
    ]  # fmt: skip
    assert WordTokenizer.split("it 's a film") == ["it", "'s", "a", "film"]
    texts = ["a fine film .", "a dull film !", "fine , fine"]
    tokenizer = WordTokenizer.build(texts)
    assert tokenizer.tokens[:4] == ["<pad>", "<unk>", "fine", "a"]  # by frequency
    ids = tokenizer.encode("A fine FILM!")
    assert PAD_ID not in ids and UNK_ID not in ids
    assert tokenizer.decode(ids) == "a fine film !"
    assert tokenizer.encode("a zebra") == [tokenizer.index["a"], UNK_ID]
    restored = WordTokenizer.from_state_dict(json.loads(json.dumps(tokenizer.state_dict())))
    assert restored.tokens == tokenizer.tokens
    assert restored.encode("a dull , fine film") == tokenizer.encode("a dull , fine film")
    small = WordTokenizer.build(texts, min_freq=2)
    assert small.tokens == ["<pad>", "<unk>", "fine", "a", "film"]
    assert len(WordTokenizer.build(texts, max_vocab=4)) == 4


def test_encode_batch_pads_and_caps_length() -> None:
    tokenizer = WordTokenizer.build(["one two three four five"])
    ids, lengths = tokenizer.encode_batch(["one two", "one two three four five", ""], 4)
    assert ids.shape == (3, 4) and lengths.tolist() == [2, 4, 1]
    assert ids[0, 2:].tolist() == [PAD_ID, PAD_ID] and ids[2].tolist() == [
        UNK_ID,
        0,
        0,
        0,
    ]


def test_subword_pieces_are_hashed_ngrams_shared_by_related_words() -> None:
    subwords = Subwords(buckets=1000, min_n=3, max_n=4, per_word=6)
    # "<film>": 3-grams <fi fil ilm lm>, then 4-grams <fil film ilm>, capped at 6; crc32 is stable.
    assert len(subwords.pieces("film", offset=10)) == 6
    assert subwords.pieces("film", offset=10) == subwords.pieces("film", offset=10)
    assert all(10 <= piece < 1010 for piece in subwords.pieces("films", offset=10))
    assert subwords.pieces("a", offset=0) == [zlib_crc("<a>") % 1000]
    shared = set(subwords.pieces("films", 10)) & set(subwords.pieces("film", 10))
    assert len(shared) >= 4  # <fi fil ilm <fil (film is a 4-gram of both; lm> is not)

    tokenizer = WordTokenizer.build(["a fine film", "a dull film"], subwords=Subwords(buckets=100, per_word=8))
    assert tokenizer.num_embeddings == len(tokenizer.tokens) + 100
    ids, lengths = tokenizer.encode_batch(["a fine films", "", "dull"], 8)
    assert ids.shape == (3, 3, 9) and lengths.tolist() == [3, 1, 1]
    assert ids[0, :, 0].tolist() == [tokenizer.index["a"], tokenizer.index["fine"], UNK_ID]  # word ids first
    assert (ids[0, 2, 1:] >= len(tokenizer.tokens)).all()  # the unseen "films" still has its n-grams
    assert ids[1, 0].tolist() == [UNK_ID] + [PAD_ID] * 8  # an empty text reads as one <unk>
    assert ids[1, 1:].eq(PAD_ID).all() and ids[2, 1:].eq(PAD_ID).all()
    # The compact form (ids into one row per distinct word) gives the same batches.
    compact, _, pieces = tokenizer.encode_compact(["a fine films", "", "dull"], 8)
    assert pieces is not None and torch.equal(pieces[compact], ids)
    source = TokenBatches(compact, lengths, torch.tensor([1, 0, 0]), pieces, texts=["a fine films", "", "dull"])
    x, _ = source.get_batch(torch.tensor([2, 0]), None, train=True)
    assert torch.equal(x, ids[[2, 0]])
    assert source.examples(torch.tensor([2, 0])) == {"example_texts": ["dull", "a fine films"]}  # for the report
    restored = WordTokenizer.from_state_dict(json.loads(json.dumps(tokenizer.state_dict())))
    assert restored.subwords == tokenizer.subwords
    assert torch.equal(restored.encode_batch(["dull films"], 8)[0], tokenizer.encode_batch(["dull films"], 8)[0])


def test_subwords_option_reads_a_bucket_count_or_fields() -> None:
    assert subwords_option(None) is None and subwords_option(0) is None
    assert subwords_option(5000) == Subwords(buckets=5000)
    assert subwords_option({"buckets": 10, "max_n": 6}) == Subwords(buckets=10, max_n=6)
    bad_values = (
        (-3, "buckets >= 1"),
        ({"max_n": 4}, "buckets"),
        ({"buckets": 9, "n": 2}, "min_n"),
        ("x", "number"),
        ({"buckets": "many"}, "whole numbers"),
    )
    for bad, message in bad_values:
        with pytest.raises(UsageError, match=message):
            subwords_option(bad)
    with pytest.raises(UsageError, match="min_n <= max_n"):
        Subwords(buckets=10, min_n=5, max_n=3)


def zlib_crc(text: str) -> int:
    import zlib

    return zlib.crc32(text.encode("utf-8"))


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_read_table_finds_columns_and_skips_empty_text(tmp_path: Path) -> None:
    path = write(tmp_path / "d.tsv", "id\tReview\tlabel\n1\tgood\t1\n2\t  \t0\n3\tbad\t0\n\n")
    with pytest.warns(UserWarning, match=r"skipped 2 rows with empty text \(lines 3, 5\)"):
        table = read_table(path)
    assert table.texts == ["good", "bad"] and table.labels == [1, 0]
    assert table.class_names == ["0", "1"] and table.skipped_lines == [3, 5]
    with pytest.warns(UserWarning, match="skipped 1 rows"):
        chosen = read_table(path, text_column="id", label_column="label")
    assert chosen.texts == ["1", "2", "3"]


def test_read_table_class_names_and_csv_quoting(tmp_path: Path) -> None:
    text = 'text,sentiment\n"good, really",pos\nawful,neg\nfine,neutral\n'
    path = write(tmp_path / "d.csv", text)
    table = read_table(path, label_column="sentiment")
    assert table.texts[0] == "good, really"
    assert table.class_names == ["neg", "neutral", "pos"] and table.labels == [2, 0, 1]


def test_read_table_errors_name_file_and_line(tmp_path: Path) -> None:
    no_label = write(tmp_path / "a.tsv", "sentence\tscore\nok\t1\n")
    with pytest.raises(UsageError, match=r"a\.tsv, line 1: no label column.*label_column"):
        read_table(no_label)
    with pytest.raises(UsageError, match="Did you mean 'score'"):
        read_table(no_label, label_column="scor")
    mixed = write(tmp_path / "b.tsv", "sentence\tlabel\nx\t0\ny\t1\nz\tpositive\nw\t1\n")
    with pytest.raises(UsageError, match=r"b\.tsv, line 4: label 'positive'"):
        read_table(mixed)
    fractional = write(tmp_path / "c.tsv", "sentence\tlabel\nx\t0\ny\t1.5\nz\t1\n")
    with pytest.raises(UsageError, match=r"c\.tsv, line 3: label '1.5'"):
        read_table(fractional)
    unknown = write(tmp_path / "d.tsv", "sentence\tlabel\nx\tneg\ny\tmaybe\n")
    with pytest.raises(UsageError, match=r"d\.tsv, line 3: label 'maybe' is not one"):
        read_table(unknown, class_names=["neg", "pos"])
    short = write(tmp_path / "e.tsv", "sentence\tlabel\nno label here\n")
    with pytest.raises(UsageError, match=r"e\.tsv, line 2: 1 fields"):
        read_table(short)


def test_folder_vocabulary_comes_from_train_only(tmp_path: Path) -> None:
    write(tmp_path / "train.tsv", "sentence\tlabel\n" + "good film\t1\nbad film\t0\n" * 5)
    write(tmp_path / "dev.tsv", "sentence\tlabel\nzebra film\t1\n")
    write(tmp_path / "test.tsv", "sentence\tlabel\ngood zebra\t1\nbad\t0\n")
    bundle = load_table_dataset(tmp_path, kind="tsv", max_len=8)
    tokens = bundle.info.preprocessing["tokenizer"]["tokens"]
    assert "zebra" not in tokens and {"good", "bad", "film"} <= set(tokens)
    assert len(bundle.train) == 10 and len(bundle.val) == 1 and len(bundle.test) == 2
    x, y = bundle.test.get_batch(torch.tensor([0, 1]), None, train=False)
    assert x.tolist() == [[tokens.index("good"), UNK_ID], [tokens.index("bad"), PAD_ID]]
    assert y.tolist() == [1, 0] and bundle.info.preprocessing["max_len"] == 8


def test_single_file_is_split_by_seed(tmp_path: Path) -> None:
    rows = "".join(f"word{i} and more words here\t{i % 2}\n" for i in range(40))
    path = write(tmp_path / "all.tsv", "text\tlabel\n" + rows)
    first = load_table_dataset(path, max_len=3, val_fraction=0.25, seed=1)
    again = load_table_dataset(path, max_len=3, val_fraction=0.25, seed=1)
    other = load_table_dataset(path, max_len=3, val_fraction=0.25, seed=2)
    assert len(first.train) == 30 and len(first.val) == 10 and first.test is None
    assert torch.equal(first.val.ids, again.val.ids)
    assert not torch.equal(first.val.labels, other.val.labels) or not torch.equal(first.val.ids, other.val.ids)
    assert first.train.ids.shape[1] == 3  # capped by max_len
    # Carved validation words are not in the vocabulary built from the training rows.
    assert first.val.ids[:, 0].eq(UNK_ID).all()


def test_val_fraction_zero_is_honoured_from_the_command_line(tmp_path: Path) -> None:
    from torchsmith.config import DataConfig
    from torchsmith.data.registry import load_data

    rows = "".join(f"word{i} and more words here\t{i % 2}\n" for i in range(40))
    write(tmp_path / "train.tsv", "text\tlabel\n" + rows)
    write(tmp_path / "dev.tsv", "text\tlabel\n" + "".join(rows.splitlines(keepends=True)[:8]))
    bundle = load_data(DataConfig(name="sst2", dir=str(tmp_path), val_fraction=0.0), seed=0)
    assert bundle.val is None and len(bundle.train) == 40  # every row trains, none held out
    bundle = load_data(DataConfig(name=f"tsv:{tmp_path / 'train.tsv'}", val_fraction=0.0), seed=0)
    assert bundle.val is None and len(bundle.train) == 40
    with pytest.raises(UsageError, match="val_fraction"):  # a language model needs its validation text
        load_data(DataConfig(name=f"textfile:{write(tmp_path / 'a.txt', 'abc ' * 100)}", val_fraction=0.0), seed=0)


def test_token_batches_trim_to_longest_in_batch() -> None:
    ids = torch.tensor([[4, 5, 6, 0], [4, 0, 0, 0], [4, 5, 0, 0]])
    source = TokenBatches(ids, torch.tensor([3, 1, 2]), torch.tensor([1, 0, 1]))
    x, y = source.get_batch(torch.tensor([1, 2]), None, train=True)
    assert x.tolist() == [[4, 0], [4, 5]] and y.tolist() == [0, 1]


@pytest.mark.skipif(not SST2_DIR.is_dir(), reason="shared SST-2 data not found")
def test_load_sst2_real_files() -> None:
    bundle = load_sst2(SST2_DIR, max_len=64, val_fraction=0.05)
    assert len(bundle.train) + len(bundle.val) == 67_349 and len(bundle.test) == 872
    assert abs(len(bundle.val) - 0.05 * 67_349) < 1
    assert bundle.info.class_names == ["negative", "positive"]
    assert bundle.test.labels.float().mean().item() == pytest.approx(444 / 872)


def test_sst2_reads_ptb_escapes_as_the_characters(tmp_path: Path) -> None:
    # GLUE's SST-2 dev sentences escape brackets and slashes; its training phrases do not.
    write(tmp_path / "train.tsv", "sentence\tlabel\na ( fine ) film\t1\nfunny/sad\t1\na dull film\t0\nflat\t0\n")
    write(tmp_path / "dev.tsv", "sentence\tlabel\n-lrb- a -RRB- fine film\t1\nfunny\\/sad\t1\n")
    bundle = load_sst2(tmp_path, val_fraction=0.0)
    tokenizer = WordTokenizer.from_state_dict(bundle.info.preprocessing["tokenizer"])
    assert tokenizer.decode(bundle.test.ids[0].tolist()) == "( a ) fine film"
    assert tokenizer.decode(bundle.test.ids[1].tolist()) == "funny / sad"
    assert UNK_ID not in bundle.test.ids.tolist()
