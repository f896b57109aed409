"""Images as they come: any size and format, tables of labels, a mapped store, batched photo ops."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from torchsmith import Trainer
from torchsmith.after.predictor import prepare_images
from torchsmith.callbacks.base import Callback
from torchsmith.callbacks.checkpointer import Checkpointer
from torchsmith.config import OptimConfig
from torchsmith.data.image_files import BrokenImage, decode_file, parse_size, read_header
from torchsmith.data.image_sets import image_bundle, open_labelled
from torchsmith.data.image_store import ImageOptions
from torchsmith.data.image_table import load_imagecsv
from torchsmith.data.loaders import make_batches
from torchsmith.data.mapped import MappedImages, PrefetchBatches
from torchsmith.data.memory import ImageTensors
from torchsmith.data.mixing import mix_batch
from torchsmith.data.photo_ops import random_resized_crop
from torchsmith.data.vision import load_imagefolder
from torchsmith.errors import UsageError
from torchsmith.train.tasks import task_for_data

CLASSES = ["猫 cat", "chien é"]


def write_photos(root: Path, per_class: int = 12) -> Path:
    """Photos of mixed sizes and formats, plus files a real folder holds that are not images."""
    rng = np.random.default_rng(0)
    formats = [("JPEG", "jpg"), ("PNG", "png"), ("BMP", "bmp"), ("WEBP", "webp"), ("GIF", "gif")]
    for label, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            height, width = int(rng.integers(30, 90)), int(rng.integers(30, 90))
            pixels = (rng.random((height, width, 3)) * 60 + 150 * label).astype(np.uint8)
            image = Image.fromarray(pixels)
            fmt, ext = formats[i % len(formats)]
            if i % 4 == 3:
                image = image.convert("L")
            image.save(folder / f"{i:03d}.{ext}", fmt)
        (folder / "notes.txt").write_text("not an image")
        (folder / ".DS_Store").write_bytes(b"\0\0")
        (folder / "Thumbs.db").write_bytes(b"\0\0")
    (root / CLASSES[0] / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


def test_mixed_folder_loads_skips_broken_and_picks_a_size(tmp_path: Path) -> None:
    root = write_photos(tmp_path / "photos")
    bundle = load_imagefolder(str(root), val_fraction=0.0, test_fraction=0.25, cache_dir=tmp_path / "cache")
    info = bundle.info
    assert info.class_names == sorted(CLASSES) and info.num_classes == 2
    assert len(bundle.train) + len(bundle.test) == 24  # the broken file and non-images left out
    assert [Path(p["file"]).name for p in info.problems] == ["broken.jpg"]
    assert info.preprocessing["skipped_files"] == 1 and "differ in size" in info.preprocessing["size_note"]
    side = info.input_shape[-1]
    assert info.input_shape == (3, side, side) and side % 16 == 0
    x, y = bundle.test.get_batch(torch.arange(4), None, train=False)
    assert x.shape == (4, 3, side, side) and y.dtype == torch.int64


def test_image_size_gives_storage_with_margin_and_random_crops(tmp_path: Path) -> None:
    root = write_photos(tmp_path / "photos", per_class=6)
    options = ImageOptions(image_size=(24, 32), cache_dir=tmp_path / "cache")
    bundle = load_imagefolder(str(root), val_fraction=0.0, options=options)
    assert bundle.info.preprocessing["storage"] == [28, 37] and bundle.info.input_shape == (3, 24, 32)
    assert bundle.train.ops == {"rrc": 1, "flip": 1}  # no policy given: random-resized crop and flip
    batches = make_batches(bundle.train, batch_size=4, train=True, seed=0, device=torch.device("cpu"))
    assert batches.draws  # the crops come from the step's generator, not the global one
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a, _ = bundle.train.get_batch(torch.arange(6), g1, train=True)
    b, _ = bundle.train.get_batch(torch.arange(6), g2, train=True)
    assert a.shape == (6, 3, 24, 32) and torch.equal(a, b)  # the same counters give the same batch
    c, _ = bundle.train.get_batch(torch.arange(6), torch.Generator().manual_seed(6), train=True)
    assert not torch.equal(a, c)


def test_formats_orientation_and_depth(tmp_path: Path) -> None:
    wide = Image.fromarray(np.full((10, 20, 3), 200, np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    wide.save(tmp_path / "rotated.jpg", exif=exif)
    header = read_header(str(tmp_path / "rotated.jpg"))
    assert decode_file(str(tmp_path / "rotated.jpg"), header, 3).shape == (3, 20, 10)
    deep = Image.fromarray(np.full((8, 8), 32768, np.uint16))  # 16-bit greyscale: scaled, not clipped
    deep.save(tmp_path / "deep.png")
    pixels = decode_file(str(tmp_path / "deep.png"), read_header(str(tmp_path / "deep.png")), 3)
    assert pixels.shape == (3, 8, 8) and int(pixels[0, 0, 0]) == 128
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).convert("CMYK").save(tmp_path / "cmyk.jpg")
    cmyk = decode_file(str(tmp_path / "cmyk.jpg"), read_header(str(tmp_path / "cmyk.jpg")), 3)
    assert abs(int(cmyk.float().mean()) - 90) <= 3
    palette = Image.fromarray(np.full((8, 8, 3), 60, np.uint8)).convert("P")
    palette.save(tmp_path / "palette.png")
    expected = np.asarray(Image.open(tmp_path / "palette.png").convert("RGB"))  # the palette's own colour
    decoded = decode_file(str(tmp_path / "palette.png"), read_header(str(tmp_path / "palette.png")), 3)
    assert decoded.permute(1, 2, 0).numpy().tolist() == expected.tolist()


def test_huge_declared_size_is_refused_unread(tmp_path: Path) -> None:
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk)
    with pytest.raises(BrokenImage, match=r"huge|60000x60000"):
        read_header(str(tmp_path / "bomb.png"))


@pytest.mark.parametrize("value", ["0", "64x0", "abc", "-3"])
def test_bad_image_sizes_are_usage_errors(value: str) -> None:
    with pytest.raises(UsageError, match="image_size"):
        parse_size(value)


def test_image_size_larger_than_storage_is_refused(tmp_path: Path) -> None:
    root = write_photos(tmp_path / "photos", per_class=3)
    options = ImageOptions(image_size=(64, 64), storage_size=(32, 32), cache_dir=tmp_path / "cache")
    with pytest.raises(UsageError, match="larger than the storage size"):
        load_imagefolder(str(root), options=options)


def test_predict_applies_exactly_the_evaluation_transform(tmp_path: Path) -> None:
    root = write_photos(tmp_path / "photos", per_class=5)
    options = ImageOptions(image_size=(20, 20), cache_dir=tmp_path / "cache")
    files = sorted(str(p) for p in root.rglob("*.*") if p.suffix in (".png", ".jpg", ".bmp", ".gif", ".webp"))
    full = open_labelled(files, torch.zeros(len(files), dtype=torch.int64), options, "photos")
    bundle = image_bundle({"train": full, "test": full}, CLASSES, options, val_fraction=0, seed=0, augment="none")
    rows = full.rows[:6]
    expected, _ = bundle.test.get_batch(torch.arange(6), None, train=False)
    prepared = prepare_images([files[r] for r in rows], bundle.info.preprocessing, bundle.info)
    assert torch.equal(prepared, expected)


def test_store_reads_rows_in_order_and_out_of_order_alike(tmp_path: Path) -> None:
    # rows in any order, runs of consecutive rows across shard boundaries, and a partial range
    root = write_photos(tmp_path / "photos", per_class=6)
    options = ImageOptions(image_size=(16, 16), cache_dir=tmp_path / "cache")
    files = sorted(str(p) for p in root.rglob("*.*") if p.suffix in (".png", ".jpg", ".bmp", ".gif", ".webp"))
    full = open_labelled(files, torch.zeros(len(files), dtype=torch.int64), options, "photos")
    store, rows = full.store, full.rows
    store.rows_per_shard = 5  # several shards, so runs start and end inside them
    shutil.rmtree(store.folder)
    store.folder.mkdir(parents=True)
    pixels = torch.randint(0, 256, (store.count, *store.row_shape), dtype=torch.uint8)
    for shard, path in enumerate(store.shard_paths()):
        path.write_bytes(pixels[shard * 5 : shard * 5 + 5].numpy().tobytes())
    assert torch.equal(store.read_rows(rows), pixels[rows])
    shuffled = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))]
    assert torch.equal(store.read_rows(shuffled), pixels[shuffled])
    assert torch.equal(store.read_rows(rows[3:9]), pixels[rows[3:9]])
    store.shard_paths()[-1].write_bytes(b"")  # a cache file cut short is refused, not read as zeros
    with pytest.raises(UsageError, match="shorter than its index"):
        store.read_rows(rows[-1:])


def write_table(tmp_path: Path, rows: list[tuple[str, str]]) -> Path:
    root = write_photos(tmp_path / "photos", per_class=6)
    files = sorted(p for p in root.rglob("*.png")) + sorted(p for p in root.rglob("*.jpg") if p.name != "broken.jpg")
    lines = ["image,label"] + [
        f"{files[i % len(files)].relative_to(tmp_path)},{label}" for i, (_, label) in enumerate(rows)
    ]
    table = tmp_path / "labels.csv"
    table.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return table


def test_imagecsv_single_and_multi_label(tmp_path: Path) -> None:
    table = write_table(tmp_path, [("", "北京"), ("", "Zürich"), ("", "北京"), ("", "Zürich")] * 2)
    options = {"image_size": "16", "cache_dir": None}
    bundle = load_imagecsv(str(table), options, val_fraction=0, seed=0, augment="none", test_fraction=0.25)
    assert bundle.info.class_names == ["Zürich", "北京"] and bundle.info.task == "classification"
    multi = write_table(tmp_path / "m", [("", "sky|tree"), ("", "tree"), ("", "sky | sea"), ("", "sea")] * 2)
    bundle = load_imagecsv(str(multi), options, val_fraction=0, seed=0, augment="none", test_fraction=0.25)
    assert bundle.info.task == "multilabel" and bundle.info.class_names == ["sea", "sky", "tree"]
    assert bundle.train.labels.shape == (6, 3) and set(bundle.train.labels.sum(1).tolist()) <= {1.0, 2.0}
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3))
    task = task_for_data(bundle.info)  # multi-label with the table's label names
    trainer = Trainer(model, task=task, max_epochs=2, batch_size=4, progress="none")  # binary cross entropy
    trainer.fit(bundle.train)
    metrics = trainer.evaluate(bundle.test)
    assert set(metrics) == {"loss", "f1_macro", "f1_micro", "f1_sea", "f1_sky", "f1_tree", "map"}
    assert all(0 <= metrics[name] <= 1 for name in ("f1_macro", "f1_micro", "map"))


def test_imagecsv_names_missing_files(tmp_path: Path) -> None:
    table = tmp_path / "labels.csv"
    table.write_text("path,label\nnowhere/a.jpg,cat\nnowhere/b.jpg,dog\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"names 2 file\(s\) that do not exist: nowhere/a.jpg"):
        load_imagecsv(str(table), {}, val_fraction=0, seed=0, augment="none")


def test_mixup_and_cutmix_targets_are_soft_and_sum_to_one() -> None:
    x = torch.randn(16, 3, 8, 8)
    y = torch.arange(16) % 4
    out, soft = mix_batch(x, y, 0.2, 1.0, 4, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and soft.shape == (16, 4)
    assert torch.allclose(soft.sum(1), torch.ones(16)) and (soft.max(1).values < 1).any()
    again, soft2 = mix_batch(x, y, 0.2, 1.0, 4, torch.Generator().manual_seed(0))
    assert torch.equal(out, again) and torch.equal(soft, soft2)


def test_random_resized_crop_draws_per_sample() -> None:
    x = torch.arange(2 * 3 * 40 * 40, dtype=torch.float32).view(2, 3, 40, 40).repeat(4, 1, 1, 1)
    out = random_resized_crop(x, (16, 16), torch.Generator().manual_seed(0))
    assert out.shape == (8, 3, 16, 16)
    assert len({tuple(o.flatten()[:4].tolist()) for o in out}) > 4  # different boxes for equal images


def photo_data(tmp_path: Path, memory_limit: int | None) -> tuple[ImageTensors, ImageTensors]:
    root = (
        write_photos(tmp_path / "photos", per_class=20) if not (tmp_path / "photos").exists() else tmp_path / "photos"
    )
    options = ImageOptions(image_size=(16, 16), memory_limit=memory_limit, cache_dir=tmp_path / "cache")
    bundle = load_imagefolder(
        str(root), val_fraction=0.2, seed=0, augment="rrc-flip-jitter-cutmix", test_fraction=0.1, options=options
    )
    return bundle.train, bundle.val


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 2))


class StopAt(Callback):
    def __init__(self, losses: list[float], step: int | None) -> None:
        self.losses, self.step = losses, step

    def on_step_end(self, trainer: Trainer) -> None:
        self.losses.append(trainer.state.last_loss)
        if trainer.state.step == self.step:
            trainer.state.request_stop("test stop")


def fit(tmp_path: Path, run_dir: Path, losses: list[float], memory_limit: int | None = None, **kw) -> Trainer:
    train, val = photo_data(tmp_path, memory_limit)
    trainer = Trainer(
        tiny_model(),
        optimizer="adamw",
        optim=OptimConfig(lr=0.01),
        max_epochs=2,
        batch_size=8,
        log_every=1,
        progress="none",
        callbacks=[Checkpointer(run_dir, {}, every_steps=None), StopAt(losses, kw.get("stop_at"))],
    )
    trainer.fit(train, val, resume=kw.get("resume", False))
    return trainer


def test_exact_resume_with_resized_crop_jitter_and_cutmix(tmp_path: Path) -> None:
    expected: list[float] = []
    reference = fit(tmp_path, tmp_path / "a", expected)
    losses: list[float] = []
    fit(tmp_path, tmp_path / "b", losses, stop_at=3)
    resumed = fit(tmp_path, tmp_path / "b", losses, resume=True)
    assert len(expected) == reference.state.step > 3 and losses == expected
    weights, target = resumed.model.state_dict(), reference.model.state_dict()
    assert all(torch.equal(weights[k], target[k]) for k in target)


def test_mapped_store_trains_to_the_same_weights(tmp_path: Path) -> None:
    train, _ = photo_data(tmp_path, memory_limit=1)
    assert isinstance(train, MappedImages)
    in_memory: list[float] = []
    mapped: list[float] = []
    a = fit(tmp_path, tmp_path / "memory", in_memory)
    b = fit(tmp_path, tmp_path / "mapped", mapped, memory_limit=1)
    assert isinstance(b.train_batches, PrefetchBatches) and not isinstance(a.train_batches, PrefetchBatches)
    assert in_memory == mapped and len(mapped) > 4
    assert all(torch.equal(a.model.state_dict()[k], v) for k, v in b.model.state_dict().items())


def test_mapped_rows_are_read_exactly_across_shards_and_runs(tmp_path: Path) -> None:
    # 10 rows of 3x4x5 in shards of 3 rows; batches with runs of consecutive rows, repeats and
    # rows from several shards must come back exactly as the rows on disk, in the batch's order.
    from torchsmith.data.image_store import ImageStore

    data = torch.randint(0, 256, (10, 3, 4, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    store = ImageStore(tmp_path, 10, 3, (4, 5), (4, 4), 3, [f"f{i}" for i in range(10)])
    for shard, path in enumerate(store.shard_paths()):
        path.write_bytes(data[shard * 3 : shard * 3 + 3].numpy().tobytes())
    rows = torch.tensor([9, 0, 1, 2, 3, 4, 5, 6, 7, 8])  # source row i is stored row rows[i]
    source = MappedImages(store, rows, torch.zeros(10, dtype=torch.long), [0.0] * 3, [1.0] * 3, image_size=(4, 4))
    for indices in ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [9, 8, 7, 1, 1, 2, 0], [5], [3, 4, 5, 6]):
        index = torch.tensor(indices)
        assert torch.equal(source.gather(index), data[rows[index]])
    assert torch.equal(torch.cat(list(source.iter_rows(10, chunk=4))), data[rows])
    store.shard_paths()[1].write_bytes(b"\0" * 7)  # a damaged (short) shard is an error, not silent zeros
    with pytest.raises(UsageError, match="shorter than its index"):
        source.gather(torch.tensor([4]))
