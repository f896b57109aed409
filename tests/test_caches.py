"""The image and audio caches: one root, keys that follow the real files, damage rebuilt, private
files, unique temporaries, and a full disk that is a clear error leaving no debris."""

from __future__ import annotations

import os
import stat
import sys
import threading
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_image_tree
from helpers import run_process

from torchsmith.data.audio_features import LogMel, logmel_features
from torchsmith.data.image_store import ImageOptions, open_store
from torchsmith.data.vision import load_imagefolder

SHORT = LogMel(duration_s=0.25)


def write_wavs(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i}.wav"
        values = (8000 * np.sin(2 * np.pi * (300.0 + 40 * i) * np.arange(2000) / 8000)).astype("<i2")
        with wave.open(str(path), "wb") as handle:
            handle.setnchannels(1)
            handle.setsampwidth(2)
            handle.setframerate(8000)
            handle.writeframes(values.tobytes())
        paths.append(path)
    return paths


def write_bmp_tree(root: Path, shade: int) -> Path:
    """Two classes of 8x8 BMPs (a BMP's size depends only on its shape), all one shade, one mtime."""
    from PIL import Image

    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            path = root / name / f"{i}.bmp"
            Image.new("RGB", (8, 8), (shade, shade, shade)).save(path)
            os.utime(path, ns=(10**18, 10**18))
    return root


def test_both_caches_live_under_torchsmith_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHSMITH_CACHE", str(tmp_path / "shared"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    load_imagefolder(str(write_image_tree(tmp_path / "tree", per_class=2)), val_fraction=0, test_fraction=0.0)
    logmel_features(write_wavs(tmp_path / "wavs", 2), SHORT)
    assert len(list((tmp_path / "shared" / "images").glob("*/meta.json"))) == 1
    assert len(list((tmp_path / "shared" / "audio").glob("*.safetensors"))) == 1
    assert not (tmp_path / "xdg").exists()


def test_the_same_relative_path_in_another_folder_is_not_a_cache_hit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Same names, sizes and mtimes, other pixels: only the resolved path tells the two apart.
    write_bmp_tree(tmp_path / "one" / "tree", shade=10)
    write_bmp_tree(tmp_path / "two" / "tree", shade=200)
    means = []
    for where in ("one", "two"):
        monkeypatch.chdir(tmp_path / where)
        bundle = load_imagefolder("tree", val_fraction=0, test_fraction=0.0, cache_dir=tmp_path / "cache")
        means.append(float(bundle.train.images.float().mean()))
    assert means == [10.0, 200.0]


def test_a_damaged_audio_cache_is_rebuilt(tmp_path: Path) -> None:
    paths = write_wavs(tmp_path / "wavs", 3)
    first = logmel_features(paths, SHORT, tmp_path / "cache")
    (cache_file,) = (tmp_path / "cache" / "audio").glob("*.safetensors")
    for damage in (cache_file.read_bytes()[:100], b"\xff" * 64):  # truncated, then overwritten
        cache_file.write_bytes(damage)
        assert torch.equal(logmel_features(paths, SHORT, tmp_path / "cache"), first)
        assert cache_file.stat().st_size > 1000  # and replaced by a good file


def test_a_damaged_image_cache_is_rebuilt(tmp_path: Path) -> None:
    root = write_image_tree(tmp_path / "tree", per_class=2)
    first = load_imagefolder(str(root), val_fraction=0, test_fraction=0.0, cache_dir=tmp_path / "cache")
    (meta,) = (tmp_path / "cache").glob("*/meta.json")
    meta.write_text('{"format": 1, "count"', encoding="utf-8")
    again = load_imagefolder(str(root), val_fraction=0, test_fraction=0.0, cache_dir=tmp_path / "cache")
    assert torch.equal(again.train.images, first.train.images)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_cache_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        load_imagefolder(
            str(write_image_tree(tmp_path / "tree", per_class=2)),
            val_fraction=0,
            test_fraction=0.0,
            cache_dir=tmp_path / "cache" / "images",
        )
        logmel_features(write_wavs(tmp_path / "wavs", 2), SHORT, tmp_path / "cache")
    finally:
        os.umask(old)
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "cache").rglob("*")}
    assert modes and all(mode == (0o700 if (tmp_path / p).is_dir() else 0o600) for p, mode in modes.items()), modes


def test_two_threads_building_one_store_do_not_share_a_temporary(tmp_path: Path) -> None:
    root = write_image_tree(tmp_path / "tree", classes=2, per_class=40, size=32)
    files = sorted(str(p) for p in root.rglob("*.png"))
    options = ImageOptions(cache_dir=tmp_path / "cache")
    errors: list[BaseException] = []

    def build() -> None:
        try:
            open_store(files, options, "tree")
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    store = open_store(files, options, "tree")
    assert store.read_rows(torch.arange(store.count)).float().mean() > 0
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [store.folder.name]  # no temporary left


# ---------------------------------------------------------------- a full disk

LIMIT = 64 * 1024


def limited() -> None:  # runs in the child before exec: its files may not grow past LIMIT
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def run_limited(args: list[str], cwd: Path, cache: Path) -> str:
    """`torchsmith ARGS` with files limited to LIMIT bytes; asserts exit 1 and a clear message."""
    result = run_process(args, cwd, timeout=300, preexec_fn=limited, TORCHSMITH_CACHE=str(cache))
    assert result.returncode == 1, result.stderr
    assert "no space left on" in result.stderr and "bytes needed" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_a_full_disk_while_writing_the_image_cache(tmp_path: Path) -> None:
    write_image_tree(tmp_path / "tree", classes=2, per_class=40, size=32)  # 80 x 3 KB decoded
    cache = tmp_path / "cache"
    args = ["train", "--data", "imagefolder:tree", "--max-steps", "1", "--run-dir", "run", "--quiet"]
    assert "245760 bytes needed" in run_limited(args, tmp_path, cache)
    assert [p for p in cache.rglob("*") if p.is_file()] == []  # no half-written shard
    assert list((cache / "images").iterdir()) == []


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_a_full_disk_while_writing_the_audio_cache(tmp_path: Path) -> None:
    for digit in range(2):
        write_wavs(tmp_path / "clips" / str(digit), 20)
    cache = tmp_path / "cache"
    needed = 40 * 40 * LogMel().frames * 2  # recordings x mels x frames x float16
    args = ["train", "--data", "wavfolder:clips", "--max-steps", "1", "--run-dir", "run", "--quiet"]
    assert f"{needed} bytes needed" in run_limited(args, tmp_path, cache)
    assert list((cache / "audio").iterdir()) == []


def test_an_empty_class_folder_keeps_every_image_under_its_class_name(tmp_path: Path) -> None:
    # Labels are not cached (the store holds pixels by file; labels come from the folders on every
    # load), so the cached store is reused and each image keeps its class name.
    root = write_image_tree(tmp_path / "tree", per_class=2)
    before = load_imagefolder(str(root), val_fraction=0, test_fraction=0.0, cache_dir=tmp_path / "cache")
    (root / "aaa").mkdir()
    after = load_imagefolder(str(root), val_fraction=0, test_fraction=0.0, cache_dir=tmp_path / "cache")
    names = [[b.info.class_names[i] for i in b.train.labels.tolist()] for b in (before, after)]
    assert names[0] == names[1] == ["class0"] * 2 + ["class1"] * 2 + ["class2"] * 2
    assert torch.equal(before.train.images, after.train.images)
    assert len(list((tmp_path / "cache").glob("*/meta.json"))) == 1  # the same entry, not decoded again
