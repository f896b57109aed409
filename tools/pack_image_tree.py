"""Pack an image tree (train/<class>/*.jpg, test/<class>/*.jpg) into one safetensors file of
raw encoded bytes, and unpack it again: a way to carry a dataset of many small files as one.

    python tools/pack_image_tree.py pack ../shared/data/cifar10-jpeg cifar10-jpeg.safetensors
    python tools/pack_image_tree.py unpack cifar10-jpeg.safetensors /tmp/cifar10-jpeg
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def pack(root: Path, output: Path) -> None:
    tensors: dict[str, torch.Tensor] = {}
    names: dict[str, list[str]] = {}
    for split in sorted(p.name for p in root.iterdir() if p.is_dir()):
        files = sorted((root / split).rglob("*.*"))
        blobs = [f.read_bytes() for f in files]
        sizes = torch.tensor([len(b) for b in blobs], dtype=torch.int64)
        tensors[f"{split}/bytes"] = torch.frombuffer(bytearray(b"".join(blobs)), dtype=torch.uint8)
        tensors[f"{split}/sizes"] = sizes
        names[split] = [str(f.relative_to(root / split)) for f in files]
    save_file(tensors, str(output), metadata={"names": json.dumps(names)})
    print(f"packed {sum(len(v) for v in names.values())} files into {output} ({output.stat().st_size / 1e6:.1f} MB)")


def unpack(packed: Path, root: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(packed), "pt") as handle:
        names = json.loads(handle.metadata()["names"])
    tensors = load_file(str(packed))
    for split, files in names.items():
        data, sizes = tensors[f"{split}/bytes"].numpy().tobytes(), tensors[f"{split}/sizes"].tolist()
        offset = 0
        for name, size in zip(files, sizes, strict=True):
            path = root / split / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data[offset : offset + size])
            offset += size
    print(f"unpacked {sum(len(v) for v in names.values())} files into {root}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["pack", "unpack"])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    args = parser.parse_args()
    (pack if args.action == "pack" else unpack)(args.source, args.target)


if __name__ == "__main__":
    main()
