"""Unicode for text data: reading UTF-8 files strictly, normalising, and telling scripts apart.

- `read_utf8`: a file's text, a byte-order mark dropped; a file in another encoding
  (GBK, Shift-JIS, UTF-16, Windows-1252) is refused with a message that names the line
  and the likely encoding, never decoded by guess.
- `normalize`: NFKC (full-width letters, digits and punctuation become their usual
  forms; ligatures split), then lower case. `str.lower` changes only cased letters
  (Latin, Greek, Cyrillic, Armenian, ...): Han, kana, Thai or Arabic text and emoji
  pass through unchanged.
- `script_profile`: how much of a text is written in scripts that do not put spaces
  between words (Han, kana, Thai, Lao, Khmer, Myanmar, Tibetan), which decides the
  default tokenizer.
"""

from __future__ import annotations

import codecs
import os
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torchsmith.errors import UsageError

NORMAL_FORM: Literal["NFKC"] = "NFKC"
MEMORY_SHARE = 16  # a text file may take this fraction of the memory (1/16) as bytes on disk

# Scripts written without spaces between words, as code-point ranges (Unicode blocks).
UNSPACED_SCRIPTS: dict[str, tuple[tuple[int, int], ...]] = {
    "Han": (
        (0x2E80, 0x2FDF), (0x3005, 0x3007), (0x3021, 0x3029), (0x3038, 0x303B), (0x3400, 0x4DBF),
        (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x3FFFF),
    ),
    "Kana": ((0x3040, 0x30FF), (0x31F0, 0x31FF), (0xFF66, 0xFF9F)),
    "Thai": ((0x0E00, 0x0E7F),),
    "Lao": ((0x0E80, 0x0EFF),),
    "Tibetan": ((0x0F00, 0x0FFF),),
    "Myanmar": ((0x1000, 0x109F),),
    "Khmer": ((0x1780, 0x17FF),),
}  # fmt: skip


def normalize(text: str, lowercase: bool = True) -> str:
    """NFKC, then lower case (which touches only cased letters).

    Example:
        >>> normalize("ＡＢＣ，好！Café ☕")
        'abc,好!café ☕'
    """
    text = unicodedata.normalize(NORMAL_FORM, text)
    return text.lower() if lowercase else text


def unspaced_script(char: str) -> str | None:
    """The script of `char` when it is one written without spaces, else None.

    Example:
        >>> unspaced_script("中"), unspaced_script("ひ"), unspaced_script("a")
        ('Han', 'Kana', None)
    """
    code = ord(char)
    for script, ranges in UNSPACED_SCRIPTS.items():
        if any(low <= code <= high for low, high in ranges):
            return script
    return None


@dataclass(frozen=True)
class ScriptProfile:
    """Letters counted in a sample of texts: all of them, and those by unspaced script."""

    letters: int
    unspaced: dict[str, int]

    @property
    def unspaced_share(self) -> float:
        return sum(self.unspaced.values()) / self.letters if self.letters else 0.0

    def describe(self) -> str:
        scripts = "/".join(name for name, _ in Counter(self.unspaced).most_common(3)) or "none"
        return f"{self.unspaced_share:.0%} of the letters are in scripts written without spaces ({scripts})"


def script_profile(texts: Iterable[str], max_chars: int = 50_000) -> ScriptProfile:
    """Count the letters (Unicode category L*) of `texts`, up to `max_chars` characters.

    Example:
        >>> script_profile(["我很喜欢这本书", "great"]).unspaced_share
        0.5833...
    """
    letters, unspaced, seen = 0, Counter[str](), 0
    for text in texts:
        for char in text:
            if unicodedata.category(char)[0] == "L":
                letters += 1
                script = unspaced_script(char)
                if script is not None:
                    unspaced[script] += 1
        seen += len(text)
        if seen >= max_chars:
            break
    return ScriptProfile(letters, dict(unspaced))


def text_read_limit() -> int:
    """The largest text file or table read whole: 1/MEMORY_SHARE of the physical memory (the text
    as bytes, as str and as token ids is several times the file)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // MEMORY_SHARE
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): 16 GB assumed
        return (16 << 30) // MEMORY_SHARE


def check_read_size(path: Path, limit: int | None = None) -> None:
    """Refuse (UsageError, naming both sizes) a text file or table larger than `limit` bytes
    (default `text_read_limit()`) before it is read: a clear error, not an out-of-memory kill."""
    limit = text_read_limit() if limit is None else limit
    size = path.stat().st_size
    if size > limit:
        raise UsageError(
            f"{path} is {size:,} bytes, more than the {limit:,} bytes read into memory (1/{MEMORY_SHARE} of this "
            f"machine's memory: the text, its tokens and the batches take several times the file). Use a "
            f"smaller file (or a sample of it), or a machine with more memory."
        )


def read_utf8(path: str | Path, limit: int | None = None) -> str:
    """The text of a UTF-8 file, without its byte-order mark; line endings as written.

    Any other encoding is refused with the line of the first byte that is not UTF-8 and
    the encoding the bytes look like: a file is never decoded by guess. A file larger
    than `limit` bytes (default `text_read_limit()`) is refused before it is read.
    """
    path = Path(path)
    check_read_size(path, limit)
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise UsageError(f"{path} is UTF-16 text (it starts with a UTF-16 byte-order mark); re-save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        encoding = guess_encoding(data)
        raise UsageError(
            f"{path}, line {line}, column {column}: byte 0x{data[error.start]:02X} is not UTF-8 "
            f"({error.reason}); the file looks like {encoding} text. torchsmith reads UTF-8 only: "
            f"re-save it as UTF-8 (e.g. iconv -f {encoding.split('/')[0].split(' ')[0]} -t UTF-8 "
            f"{path.name} > utf8-{path.name})"
        ) from None


def guess_encoding(data: bytes) -> str:
    """The legacy encoding that decodes `data` into the most plausible text, for an error message.

    Example:
        >>> guess_encoding("中文评论".encode("gbk"))
        'GBK/GB18030 (Chinese)'
    """
    high = [i for i, byte in enumerate(data) if byte >= 0x80]
    lone = sum((i == 0 or data[i - 1] < 0x80) and (i + 1 == len(data) or data[i + 1] < 0x80) for i in high)
    if lone >= 0.5 * len(high):  # "café": one byte per letter, as single-byte code pages write them
        return "Windows-1252/Latin-1"
    candidates = (
        ("shift_jis", "Shift-JIS (Japanese)", "Kana"),  # first: kana decoded as GBK read as Han
        ("gb18030", "GBK/GB18030 (Chinese)", "Han"),
        ("big5", "Big5 (traditional Chinese)", "Han"),
    )
    for codec, name, script in candidates:
        try:
            text = data.decode(codec)
        except UnicodeDecodeError:
            continue
        # Half-width katakana left out: GBK's bytes read as Shift-JIS are mostly that.
        scripts = [unspaced_script(char) for char in text if ord(char) > 0x7F and not 0xFF61 <= ord(char) <= 0xFF9F]
        if script in scripts and sum(found in (script, "Han") for found in scripts) >= 0.8 * len(scripts):
            return name
    return "Windows-1252/Latin-1"
