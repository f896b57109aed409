"""Safe file input and output: atomic writes, checksums, safe YAML, archive extraction.

Writes go through a temporary file that is fsynced and then renamed into place, so a
crash leaves either the old file or the new one, never half of one. What comes from
outside (YAML, archives, downloads) is refused when it could run code or write outside
its folder.

Example:
    >>> from pathlib import Path
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> path = atomic_write_text(folder / "note.txt", "hello")
    >>> sha256_file(path)[:12]
    '2cf24dba5fb0'
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import posixpath
import secrets
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import yaml

from torchsmith.errors import TorchsmithError, UsageError
from torchsmith.yaml_text import load_yaml_text

_CHUNK_BYTES = 1 << 20


class DownloadError(TorchsmithError):
    """A download failed or its content did not match the expected SHA-256 (exit 1)."""

    exit_code = 1


class DiskFull(TorchsmithError):
    """A write failed for lack of space (or a file-size limit): exit 1, nothing half-written left."""

    exit_code = 1


def write_failure(path: Path, error: BaseException, needed: int) -> TorchsmithError:
    """The error to raise when writing `needed` bytes to `path` failed. safetensors raises its own
    SafetensorError (not OSError) on a failed write, so the cause is named here for both."""
    text = str(error)
    full = getattr(error, "errno", None) in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) or any(
        word in text for word in ("No space", "File too large", "Disk quota", "os error 27", "os error 28")
    )
    if full:
        return DiskFull(
            f"no space left on {path.parent} ({needed} bytes needed) while writing {path.name}: {text}. "
            f"Free disk space (or raise the file-size limit) and run again; nothing half-written was left."
        )
    return TorchsmithError(f"could not write {path}: {text}")


def save_safetensors(tensors: dict[str, Any], path: str | os.PathLike[str], mode: int | None = None) -> Path:
    """Write a safetensors file atomically: a unique temporary file, fsynced, then renamed over
    `path`. A failed write (a full disk) removes the temporary file, leaves an older `path` as it
    was, and raises DiskFull naming the bytes needed. `mode` (such as 0o600) sets the file's
    permissions before it is renamed into place."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    path = Path(path)
    temp = path.with_name(f".tmp-{path.name}-{os.getpid()}-{secrets.token_hex(4)}")
    needed = sum(t.numel() * t.element_size() for t in tensors.values())
    try:
        save_file(tensors, str(temp))
        with open(temp, "rb+") as file:  # save_file does not fsync
            os.fsync(file.fileno())
        if mode is not None:
            os.chmod(temp, mode)
        os.replace(temp, path)
    except (OSError, SafetensorError) as error:
        temp.unlink(missing_ok=True)
        raise write_failure(path, error, needed) from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the SHA-256 of a file as 64 lowercase hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries to disk, so that a rename inside it survives a power cut."""
    if os.name != "posix":  # Windows cannot open a folder; its renames are journaled anyway
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_and_fsync(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` (not atomically) and flush it to disk before returning."""
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Replace `path` with `data` so that readers see the old content or the new, never half.

    Example:
        >>> import tempfile
        >>> atomic_write_bytes(Path(tempfile.mkdtemp()) / "x.bin", b"abc").read_bytes()
        b'abc'
    """
    path = Path(path)
    temp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    try:
        write_and_fsync(temp, data)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Replace `path` with `text` (UTF-8) atomically; see `atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """`data` as indented UTF-8 JSON, written atomically; text in any script is written as itself
    (not as \\u escapes), and values JSON cannot hold are written as text."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON object from a run's file; {} when the file does not exist, a UsageError when it is damaged."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{path} is not valid JSON ({error}); fix or delete it.") from error


def safe_load_yaml(source: str | os.PathLike[str]) -> Any:
    """Parse YAML from a file (a `Path`) or from text (a `str`) with `yaml.safe_load`.

    Tags such as `!!python/object/apply` are refused: they would run code on load.
    Any parse error becomes a `UsageError` naming the file and line.

    Example:
        >>> safe_load_yaml("optim:\\n  lr: 0.1\\n")
        {'optim': {'lr': 0.1}}
    """
    if isinstance(source, str):
        name, text = "<text>", source
    else:
        name = str(source)
        try:
            text = Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"cannot read YAML file {name}: {error}") from error
    try:
        return load_yaml_text(text, name)
    except yaml.YAMLError as error:
        raise UsageError(_describe_yaml_error(name, error)) from error


def _describe_yaml_error(name: str, error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    where = f"{name}, line {mark.line + 1}" if mark is not None else name
    problem = getattr(error, "problem", None) or str(error)
    if isinstance(error, yaml.constructor.ConstructorError):
        return (
            f"{where}: {problem}. Tags like !!python/... are refused because loading them "
            "runs code; write plain values (numbers, strings, lists, mappings) instead."
        )
    return f"{where}: invalid YAML: {problem}. Fix the syntax at that line."


def safe_extract(archive: str | os.PathLike[str], target_dir: str | os.PathLike[str]) -> Path:
    """Extract a tar (any compression) or zip archive into `target_dir`, refusing unsafe members.

    Every member is checked before anything is written: absolute paths, `..`
    traversal, links that point outside `target_dir`, and device or FIFO files raise
    `UsageError`, so a refused archive leaves `target_dir` untouched.

    Example:
        >>> safe_extract("mnist.tar.gz", "data/mnist")  # doctest: +SKIP
    """
    archive, target = Path(archive), Path(target_dir)
    if not archive.is_file():
        raise UsageError(f"archive {archive} does not exist; check the path.")
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as bundle:
            for name in bundle.namelist():
                _check_member_path(archive, name)
            target.mkdir(parents=True, exist_ok=True)
            # zipfile never creates links or devices, so member names are the only risk
            bundle.extractall(target)
        return target
    if not tarfile.is_tarfile(archive):
        raise UsageError(f"{archive} is neither a zip nor a tar archive.")
    with tarfile.open(archive) as bundle:
        for member in bundle.getmembers():
            _check_tar_member(archive, member)
        target.mkdir(parents=True, exist_ok=True)
        if hasattr(tarfile, "data_filter"):
            # the "data" filter re-checks each member against the real paths on disk
            # while extracting, which also catches links chained through other links
            bundle.extractall(target, filter="data")
        else:  # Python < 3.10.12: the checks above are all there is
            bundle.extractall(target)
    return target


def _check_member_path(archive: Path, name: str) -> None:
    parts = name.replace("\\", "/").split("/")
    drive = name[:1].isalpha() and name[1:2] == ":"  # "C:evil" on Windows
    if name.startswith(("/", "\\")) or os.path.isabs(name) or drive:
        raise UsageError(f"{archive}: refusing member {name!r} with an absolute path.")
    if ".." in parts:
        raise UsageError(f"{archive}: refusing member {name!r}: '..' would write outside the target.")


def _check_tar_member(archive: Path, member: tarfile.TarInfo) -> None:
    _check_member_path(archive, member.name)
    if member.isfile() or member.isdir():
        return
    if member.issym() or member.islnk():
        # a symlink target is relative to the link's folder, a hard link's to the archive root
        base = posixpath.dirname(member.name) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, member.linkname))
        if member.linkname.startswith("/") or resolved == ".." or resolved.startswith("../"):
            raise UsageError(
                f"{archive}: refusing link {member.name!r} -> {member.linkname!r}: it points outside the target folder."
            )
        return
    raise UsageError(
        f"{archive}: refusing member {member.name!r}: devices, FIFOs and other special files are never extracted."
    )


def download(url: str, path: str | os.PathLike[str], sha256: str, timeout: float = 60.0) -> Path:
    """Download `url` to `path`, verify its SHA-256, then move it into place atomically.

    A file already at `path` with the right digest is kept without downloading. On a
    mismatch the partial file is deleted and `DownloadError` is raised, so `path`
    only ever holds verified content.

    Example:
        >>> download("https://example.org/mnist.npz", "data/mnist.npz", "ab12...")  # doctest: +SKIP
    """
    path, expected = Path(path), sha256.strip().lower()
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        raise UsageError(f"sha256 must be 64 hex digits, got {sha256!r}.")
    if not url.startswith(("https://", "http://", "file://")):
        raise UsageError(f"cannot download {url!r}: only https://, http:// and file:// URLs are supported.")
    if path.is_file() and sha256_file(path) == expected:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    try:
        actual = _fetch(url, temp, timeout)
        if actual != expected:
            raise DownloadError(
                f"download of {url} has SHA-256 {actual}, expected {expected}; the file was "
                "deleted. Retry, or check that the URL and the expected digest belong together."
            )
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def _fetch(url: str, temp: Path, timeout: float) -> str:
    """Stream `url` into `temp` and return the SHA-256 of what was written."""
    digest = hashlib.sha256()
    try:
        with (
            urllib.request.urlopen(url, timeout=timeout) as response,
            open(temp, "wb") as file,
        ):
            while chunk := response.read(_CHUNK_BYTES):
                digest.update(chunk)
                file.write(chunk)
            file.flush()
            os.fsync(file.fileno())
    except (urllib.error.URLError, OSError) as error:
        raise DownloadError(
            f"cannot download {url} to {temp.parent}: {error}. Check the connection and the "
            "URL, or place the file there yourself."
        ) from error
    return digest.hexdigest()


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Delete a folder or file if possible; cleanup must never hide the error being handled."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
