"""Safe I/O: checksums, atomic writes, YAML without code, archives, verified downloads.

Also a scan of the package source for anything that could unpickle or run code on load.
"""

from __future__ import annotations

import ast
import hashlib
import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

from torchsmith.errors import UsageError
from torchsmith.io.files import (
    DownloadError,
    atomic_write_bytes,
    atomic_write_text,
    download,
    safe_extract,
    safe_load_yaml,
    sha256_file,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "torchsmith"


def test_sha256_file_matches_the_standard_digest(tmp_path: Path) -> None:
    path = tmp_path / "abc"
    path.write_bytes(b"abc")
    assert sha256_file(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    big = os.urandom(3 * (1 << 20) + 17)  # spans several read chunks
    path.write_bytes(big)
    assert sha256_file(path) == hashlib.sha256(big).hexdigest()


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    atomic_write_text(path, "a: 1\n")
    atomic_write_bytes(path, b"a: 2\n")
    assert path.read_bytes() == b"a: 2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_failed_atomic_write_keeps_the_old_content(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "config.yaml"
    atomic_write_text(path, "old\n")

    def full_disk(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        atomic_write_text(path, "new\n")
    monkeypatch.undo()
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_safe_load_yaml_reads_files_and_text(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 0.05\nepochs: 3\n")
    assert safe_load_yaml(path) == {"optim": {"lr": 0.05}, "epochs": 3}
    assert safe_load_yaml("- 1\n- two\n") == [1, "two"]


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("a: 1\nb: 2\nc: [unclosed\n")
    with pytest.raises(UsageError, match=r"bad\.yaml, line \d+: invalid YAML"):
        safe_load_yaml(path)


def test_yaml_python_tag_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    text = f"epochs: 1\nmodel: !!python/object/apply:os.system ['touch {marker}']\n"
    path.write_text(text)
    with pytest.raises(
        UsageError,
        match=r"evil\.yaml, line 2: .*python/object/apply:os\.system.*refused",
    ):
        safe_load_yaml(path)
    with pytest.raises(UsageError, match=r"<text>, line 2"):
        safe_load_yaml(text)
    assert not marker.exists()
    # the document is live: the unsafe loader does run the command
    yaml.load(text, Loader=yaml.UnsafeLoader)
    assert marker.exists()


# --- archives -----------------------------------------------------------------------


def make_tar(path: Path, members: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w:gz") as bundle:
        for member in members:
            data = b"payload" if member.isfile() else None
            if data is not None:
                member.size = len(data)
            bundle.addfile(member, io.BytesIO(data) if data is not None else None)
    return path


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname = kind, link
    return member


UNSAFE_TARS = {
    "traversal": [tar_member("data/../../evil")],
    "absolute": [tar_member("/tmp/evil")],
    "symlink outside": [tar_member("data/link", tarfile.SYMTYPE, "../../outside")],
    "absolute symlink": [tar_member("link", tarfile.SYMTYPE, "/etc/passwd")],
    "hardlink outside": [tar_member("link", tarfile.LNKTYPE, "../evil")],
    "device": [tar_member("dev/null", tarfile.CHRTYPE)],
    "fifo": [tar_member("pipe", tarfile.FIFOTYPE)],
}


@pytest.mark.parametrize("kind", sorted(UNSAFE_TARS))
def test_unsafe_tar_is_refused_before_writing(tmp_path: Path, kind: str) -> None:
    archive = make_tar(tmp_path / "bad.tar.gz", [tar_member("ok.txt"), *UNSAFE_TARS[kind]])
    target = tmp_path / "out"
    with pytest.raises(UsageError, match=r"bad\.tar\.gz: refusing"):
        safe_extract(archive, target)
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar.gz"]


def test_good_tar_is_extracted(tmp_path: Path) -> None:
    members = [
        tar_member("data", tarfile.DIRTYPE),
        tar_member("data/train/a.txt"),
        tar_member("data/b.txt"),
        tar_member("data/link", tarfile.SYMTYPE, "train/a.txt"),
    ]
    archive = make_tar(tmp_path / "good.tar.gz", members)
    target = safe_extract(archive, tmp_path / "out")
    assert (target / "data/train/a.txt").read_bytes() == b"payload"
    assert (target / "data/b.txt").read_bytes() == b"payload"
    assert (target / "data/link").read_bytes() == b"payload"


def make_zip(path: Path, names: list[str]) -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        for name in names:
            bundle.writestr(zipfile.ZipInfo(name), b"payload")
    return path


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "/abs/evil", "C:evil"])
def test_unsafe_zip_is_refused(tmp_path: Path, name: str) -> None:
    archive = make_zip(tmp_path / "bad.zip", ["ok.txt", name])
    with pytest.raises(UsageError, match=r"bad\.zip: refusing"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_good_zip_is_extracted_and_garbage_is_a_usage_error(tmp_path: Path) -> None:
    target = safe_extract(make_zip(tmp_path / "good.zip", ["a.txt", "sub/b.txt"]), tmp_path / "out")
    assert (target / "sub/b.txt").read_bytes() == b"payload"
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not an archive" * 100)
    with pytest.raises(UsageError, match="neither a zip nor a tar"):
        safe_extract(garbage, tmp_path / "out2")
    with pytest.raises(UsageError, match="does not exist"):
        safe_extract(tmp_path / "missing.tar", tmp_path / "out3")


# --- downloads ----------------------------------------------------------------------


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "server" / "mnist.npz"
    path.parent.mkdir()
    path.write_bytes(os.urandom(300_000))
    return path


def test_download_verifies_and_moves_into_place(tmp_path: Path, source: Path) -> None:
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    target = tmp_path / "data" / "mnist.npz"
    assert download(source.as_uri(), target, digest.upper()) == target
    assert target.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in target.parent.iterdir()) == ["mnist.npz"]
    source.unlink()  # a verified file already in place is not fetched again
    assert download(source.as_uri(), target, digest) == target


def test_download_with_wrong_checksum_leaves_no_file(tmp_path: Path, source: Path) -> None:
    actual = hashlib.sha256(source.read_bytes()).hexdigest()
    wrong = "0" * 64
    target = tmp_path / "data" / "mnist.npz"
    with pytest.raises(DownloadError, match=f"SHA-256 {actual}, expected {wrong}"):
        download(source.as_uri(), target, wrong)
    assert list(target.parent.iterdir()) == []


def test_download_reports_bad_arguments_and_missing_sources(tmp_path: Path) -> None:
    target = tmp_path / "x.bin"
    with pytest.raises(UsageError, match="64 hex digits"):
        download("https://example.org/x.bin", target, "abc")
    with pytest.raises(UsageError, match="only https"):
        download("ftp://example.org/x.bin", target, "0" * 64)
    with pytest.raises(DownloadError, match="cannot download"):
        download((tmp_path / "nowhere.bin").as_uri(), target, "0" * 64)
    assert list(tmp_path.iterdir()) == []


# --- a source scan that protects the whole package ---------------------------------

UNSAFE_MODULES = {
    "pickle",
    "_pickle",
    "cPickle",
    "dill",
    "cloudpickle",
    "marshal",
    "shelve",
}
UNSAFE_YAML = {
    "load",
    "load_all",
    "unsafe_load",
    "unsafe_load_all",
    "full_load",
    "full_load_all",
}


def dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return "?"


def keyword_is_true(call: ast.Call, name: str) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords)


def import_problem(node: ast.Import | ast.ImportFrom) -> str | None:
    modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
    if any(module.split(".")[0] in UNSAFE_MODULES for module in modules):
        return f"import of {', '.join(modules)}"
    names = [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.module == "torch" and "load" in names:
        return "from torch import load (hides torch.load from this scan)"
    return None


def call_problem(call: ast.Call) -> str | None:
    name = dotted(call.func)
    parts = name.split(".")
    unsafe = (
        name in {"eval", "exec", "builtins.eval", "builtins.exec"}
        or (parts[-2:-1] == ["yaml"] and parts[-1] in UNSAFE_YAML)
        or (len(parts) > 1 and parts[-2] in UNSAFE_MODULES)
        or (name in {"np.load", "numpy.load"} and keyword_is_true(call, "allow_pickle"))
    )
    if unsafe:
        return f"{name}("
    if parts[-2:] == ["torch", "load"] and not keyword_is_true(call, "weights_only"):
        return "torch.load( without weights_only=True"
    return None


def unsafe_calls(source: str, filename: str) -> list[str]:
    """Every place in `source` that could unpickle or run code while loading data."""
    problems = []
    for node in ast.walk(ast.parse(source, filename)):
        problem = None
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            problem = import_problem(node)
        elif isinstance(node, ast.Call):
            problem = call_problem(node)
        if problem:
            problems.append(f"{filename}:{node.lineno}: {problem}")
    return problems


def test_source_scan_catches_each_unsafe_pattern() -> None:
    unsafe = [
        "import pickle",
        "from pickle import loads",
        "import dill as d",
        "x = pickle.load(f)",
        "torch.load(f)",
        "torch.load(f, weights_only=False)",
        "from torch import load",
        "yaml.load(text, Loader=yaml.Loader)",
        "yaml.unsafe_load(text)",
        "eval('1')",
        "exec('x = 1')",
        "np.load(f, allow_pickle=True)",
    ]
    for line in unsafe:
        assert unsafe_calls(line, "snippet.py"), f"not caught: {line}"
    safe = "model.eval()\ntorch.load(f, map_location='cpu', weights_only=True)\nyaml.safe_load(text)\nnp.load(f)\n"
    assert unsafe_calls(safe, "snippet.py") == []


def test_package_source_never_unpickles_or_evaluates() -> None:
    files = sorted(SRC.rglob("*.py"))
    assert SRC / "io" / "files.py" in files  # the scan does look at the package
    problems = []
    for file in files:
        source = file.read_text(encoding="utf-8")
        problems += unsafe_calls(source, str(file.relative_to(SRC.parent)))
    assert problems == [], "unsafe loading in the package:\n" + "\n".join(problems)
