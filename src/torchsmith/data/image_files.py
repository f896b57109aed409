"""Image files as a folder really holds them: which files count, their headers, and one decode.

A user's folder mixes sizes, formats (JPEG, PNG with palette, alpha or 16 bits, BMP, GIF,
WebP, TIFF), greyscale and CMYK, EXIF-rotated phone photos, hidden files and notes. Here
each file is read once: its header (size and mode, a refusal of absurd sizes before any
pixel is allocated), then its pixels, resized to the store's size. The common formats go
through torchvision's decoders (libjpeg-turbo, libpng: several times faster than Pillow);
the rest through Pillow. Any failure becomes a `BrokenImage` that the caller lists.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from torchsmith.errors import UsageError

T = TypeVar("T")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# Pillow modes torchvision decodes to the same pixels; others (16-bit, 1-bit, float) go to Pillow.
FAST_MODES = {"RGB", "RGBA", "L", "LA", "P", "CMYK", "YCbCr"}
FAST_FORMATS = {"JPEG", "PNG", "GIF", "WEBP"}
GREY_MODES = {"L", "LA", "1", "I", "I;16", "I;16B", "I;16L", "F"}
# A header declaring more pixels than this is refused unread (a decompression bomb, or damage).
MAX_PIXELS = 100_000_000


class BrokenImage(Exception):
    """A file that cannot be used as an image; the message says why."""


@dataclass(frozen=True)
class Header:
    width: int
    height: int
    mode: str  # Pillow's mode: RGB, L, P, RGBA, CMYK, I;16, ...
    format: str  # JPEG, PNG, BMP, ...
    rotated: bool  # EXIF orientation swaps width and height


def list_image_files(folder: Path) -> list[str]:
    """Image files under `folder` (recursively), sorted; hidden files and folders and
    anything without an image suffix (`.DS_Store`, `Thumbs.db`, `notes.txt`) are ignored."""
    found: list[str] = []
    suffixes = {suffix[1:] for suffix in IMAGE_SUFFIXES}  # "jpg" for ".jpg": one set lookup a file
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        # string ops rather than os.path.join/splitext: a third of the time on 60,000 files
        found += [f"{root}/{n}" for n in names if n[0] != "." and n.rpartition(".")[2].lower() in suffixes]
    return sorted(found)


def file_stamps(files: Iterable[str]) -> str:
    """Path, size and mtime of every file: a changed, added or removed file changes the text."""
    parts = []
    for path in files:
        stat = os.stat(path)
        parts.append(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n")
    return "".join(parts)


def read_header(path: str, max_pixels: int = MAX_PIXELS) -> Header:
    """Size and mode from the file's header alone (no pixels decoded); more than `max_pixels`
    (`data.options.max_pixels`) is refused before any pixel is allocated."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
            # Checked before getexif: for a PNG that reads (and decodes) the pixel data to find
            # an eXIf chunk after it.
            if width * height > max_pixels or width <= 0 or height <= 0:
                raise BrokenImage(
                    f"its header declares {width}x{height} pixels (more than {max_pixels:,} refused; "
                    f"raise --set data.options.max_pixels=N for larger images)"
                )
            orientation = image.getexif().get(0x0112, 1)  # EXIF Orientation
            return Header(width, height, image.mode, image.format or "", orientation in (5, 6, 7, 8))
    except Image.DecompressionBombError as error:
        raise BrokenImage(f"declares a huge size ({error})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise BrokenImage(f"not a readable image ({type(error).__name__}: {error})") from None


def oriented_size(header: Header) -> tuple[int, int]:
    """(height, width) as displayed, after the EXIF orientation."""
    return (header.width, header.height) if header.rotated else (header.height, header.width)


def decode_file(path: str, header: Header, channels: int) -> torch.Tensor:
    """Pixels as uint8 (channels, H, W), EXIF orientation applied."""
    try:
        if header.format in FAST_FORMATS and header.mode in FAST_MODES:
            return _decode_torchvision(path, channels)
        return _decode_pillow(path, channels)
    except BrokenImage:
        raise
    except Exception as error:  # any decoder failure on a damaged file is a broken file, not a crash
        raise BrokenImage(f"could not be decoded ({type(error).__name__}: {error})") from None


def _decode_torchvision(path: str, channels: int) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image, read_file

    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    with warnings.catch_warnings():
        # torchvision marks its decoders deprecated in favour of torchcodec (needs FFmpeg); they still work.
        warnings.simplefilter("ignore", DeprecationWarning)
        image = decode_image(read_file(path), mode=mode, apply_exif_orientation=True)
    if image.dim() == 4:  # an animated GIF: its first frame
        image = image[0]
    if image.dtype != torch.uint8:  # a 16-bit PNG: scaled to 8 bits
        from torchvision.transforms.v2.functional import to_dtype

        image = to_dtype(image, torch.uint8, scale=True)
    return image


def _decode_pillow(path: str, channels: int) -> torch.Tensor:
    from PIL import Image, ImageOps

    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened)
        if image.mode.startswith("I") or image.mode == "F":  # 16/32-bit and float greyscale: scale, not clip
            pixels = torch.from_numpy(_to_uint8(np.asarray(image))[None])
            return pixels.expand(3, -1, -1).contiguous() if channels == 3 else pixels
        converted = image.convert("L" if channels == 1 else "RGB")
        array = np.asarray(converted, dtype=np.uint8)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))


def _to_uint8(array: np.ndarray) -> np.ndarray:
    # Deeper greyscale scales down by its range (16-bit: 0..65535 -> 0..255; float: 0..1), never clips.
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype.kind == "f":
        top = 1.0 if array.max() <= 1.0 else 255.0
    else:
        top = 65535.0 if array.max() > 255 else 255.0
    return np.clip(array.astype(np.float32) * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)


def fit_to(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize (C, H, W) uint8 so that it covers `size` (shorter side first, with antialiasing),
    then take the centre crop of exactly `size` (height, width)."""
    from torchvision.transforms.v2.functional import center_crop, resize

    height, width = image.shape[-2:]
    if (height, width) == size:
        return image
    scale = max(size[0] / height, size[1] / width)
    target = [max(size[0], round(height * scale)), max(size[1], round(width * scale))]
    if target != [height, width]:
        image = resize(image, target, antialias=True)
    return center_crop(image, list(size))


def load_for_store(path: str, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """One file as the store holds it: decoded, oriented, resized to cover `size`, centre-cropped."""
    header = read_header(path)
    return fit_to(decode_file(path, header, channels), size)


def parse_size(value: object, name: str = "data.options.image_size") -> tuple[int, int] | None:
    """`64`, `"64"` or `"64x48"` (height x width) -> (64, 64) / (64, 48); None stays None."""
    if value is None or value == "":
        return None
    text = str(value).lower().replace(" ", "")
    parts = text.split("x")
    if len(parts) > 2 or not all(p.isdigit() for p in parts):
        raise UsageError(f"{name} must be one number or HxW (e.g. 64 or 96x128), got {value!r}")
    height, width = (int(parts[0]), int(parts[-1]))
    if height <= 0 or width <= 0:
        raise UsageError(f"{name} must be positive, got {value!r}; e.g. --image-size 64")
    if height * width > 4096 * 4096:
        raise UsageError(f"{name} {height}x{width} is larger than any model trains on; use at most 4096x4096")
    return height, width


def parallel(work: Callable[[Any], T], items: Sequence[Any], threads: int | None = None) -> list[T | BrokenImage]:
    """`work` over items in threads (the decoders release the GIL); a BrokenImage is returned, not raised."""
    from concurrent.futures import ThreadPoolExecutor

    def safe(item: Any) -> T | BrokenImage:
        try:
            return work(item)
        except BrokenImage as error:
            return error

    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 2) as pool:
        return list(pool.map(safe, items, chunksize=64))
