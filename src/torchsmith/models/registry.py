"""Models by name: built-ins sized from the data, or a user's class from a file or module.

A user file is named `path/to/file.py:ClassName` or `package.module:ClassName`; the class
is built with the constructor arguments given (`--model-args` or the config) and trains
unchanged. Importing a user's model file runs that file, as Python does: only name
files you trust.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from torchsmith.data.bundle import DataInfo
from torchsmith.errors import UsageError, did_you_mean
from torchsmith.models.zoo import build as zoo_build
from torchsmith.models.zoo import is_zoo

Builder = Callable[[DataInfo, dict[str, Any]], nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    build: Builder


def _simplenet(info: DataInfo, args: dict[str, Any]) -> nn.Module:
    from torchsmith.models.vision import SimpleNet, flat_features

    return SimpleNet(**{"in_features": flat_features(info.input_shape), "num_classes": info.num_classes, **args})


def _mlp(info: DataInfo, args: dict[str, Any]) -> nn.Module:
    from torchsmith.models.tabular import MLP
    from torchsmith.models.vision import flat_features

    if "hidden" in args:
        args["hidden"] = tuple(args["hidden"])
    return MLP(**{"in_features": flat_features(info.input_shape), "num_classes": info.num_classes, **args})


def _convnet(info: DataInfo, args: dict[str, Any]) -> nn.Module:
    from torchsmith.models.vision import ConvNet

    if len(info.input_shape) != 3:
        raise UsageError(f"convnet needs image inputs (C, H, W), but the data gives {info.input_shape}")
    return ConvNet(**{"input_shape": info.input_shape, "num_classes": info.num_classes, **args})


def _convbn(info: DataInfo, args: dict[str, Any]) -> nn.Module:
    from torchsmith.models.vision import ConvBNNet

    if len(info.input_shape) != 3:
        raise UsageError(f"convbn needs image inputs (C, H, W), but the data gives {info.input_shape}")
    widths = args.pop("widths", None)
    extra = {"widths": tuple(widths)} if widths is not None else {}
    return ConvBNNet(**{"input_shape": info.input_shape, "num_classes": info.num_classes, **extra, **args})


def _audiocnn(info: DataInfo, args: dict[str, Any]) -> nn.Module:
    from torchsmith.models.audio import AudioCNN

    return AudioCNN(**{"num_classes": info.num_classes, "in_channels": info.input_shape[0], **args})


def _speednet(info: DataInfo, args: dict[str, Any]) -> nn.Module:
    from torchsmith.models.speednet import SpeedNet

    for key in ("widths",):
        if key in args:
            args[key] = tuple(args[key])
    return SpeedNet(**{"num_classes": info.num_classes, "in_channels": info.input_shape[0], **args})


def _language_model(kind: str) -> Builder:
    def build(info: DataInfo, args: dict[str, Any]) -> nn.Module:
        from torchsmith.models.text import GPT, LSTMLanguageModel

        if info.preprocessing.get("kind") not in ("chars", "tokens"):
            raise UsageError(
                f"{kind} is a language model (next character or token): use it with textfile:PATH or "
                "tinyshakespeare data"
            )
        if kind == "gpt":
            return GPT(**{"vocab_size": info.num_classes, "block_size": info.preprocessing["block_size"], **args})
        return LSTMLanguageModel(**{"vocab_size": info.num_classes, **args})

    return build


def _word_model(kind: str) -> Builder:
    def build(info: DataInfo, args: dict[str, Any]) -> nn.Module:
        from torchsmith.models import text_classifiers as text

        if info.preprocessing.get("kind") != "words":
            raise UsageError(f"{kind} classifies token sequences: use it with sst2, tsv:PATH or csv:PATH data")
        from torchsmith.data.text import tokenizer_from_state

        tokenizer = tokenizer_from_state(info.preprocessing["tokenizer"])
        cls, defaults = {
            "bow": (text.BagOfWords, {}),
            "bow-linear": (text.BagOfWords, {"embed_dim": 0, "pooling": "sqrt"}),
            "textcnn": (text.TextCNN, {}),
            "bilstm": (text.BiLSTMClassifier, {}),
        }[kind]
        model = cls(**{"vocab_size": tokenizer.num_embeddings, "num_classes": info.num_classes, **defaults, **args})
        if info.preprocessing["tokenizer"].get("kind") == "chars" and tokenizer.num_embeddings > len(tokenizer):
            # A character's bigram and trigram rows start at zero: they then carry only what
            # training put there, where random rows would drown the character's own vector
            # (two n-grams to one character) and add noise for n-grams never seen in training.
            with torch.no_grad():
                model.embedding.weight[len(tokenizer) :].zero_()
        return model

    return build


MODELS: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in [
        ModelEntry("simplenet", "flatten, Linear(in -> 128), ReLU, Linear(128 -> classes)", _simplenet),
        ModelEntry("mlp", "multilayer perceptron for tables: Linear-ReLU-Dropout (128, 64), linear head", _mlp),
        ModelEntry("convnet", "3 conv layers (32/64/128) + ReLU + max-pool, then 2 linear layers", _convnet),
        ModelEntry("convbn", "small fast conv net: conv-BN-ReLU + max-pool blocks (16/32), one linear layer", _convbn),
        ModelEntry("audiocnn", "conv-BN-ReLU stages over log-mel spectrograms, global average pooling", _audiocnn),
        ModelEntry(
            "lstm-lm",
            "LSTM language model over characters or BPE pieces (embedding, LSTM, linear head)",
            _language_model("lstm-lm"),
        ),
        ModelEntry(
            "gpt",
            "small decoder-only transformer over characters or BPE pieces, causal self-attention, weight-tied head",
            _language_model("gpt"),
        ),
        ModelEntry("bow", "bag of words: mean of word embeddings, then linear", _word_model("bow")),
        ModelEntry(
            "bow-linear",
            "logistic regression over the bag of words and n-grams, each once, scaled to unit length",
            _word_model("bow-linear"),
        ),
        ModelEntry(
            "textcnn", "parallel 1-D convolutions (3/4/5 words) with max-over-time pooling", _word_model("textcnn")
        ),
        ModelEntry("bilstm", "bidirectional LSTM over packed sequences with max pooling", _word_model("bilstm")),
        ModelEntry("speednet", "airbench-style fast CIFAR net: whitening conv, conv-BN-GELU blocks", _speednet),
    ]
}


# Earlier names, still read (configs of runs saved with them name them).
ALIASES = {"char-gpt": "gpt", "char-lstm": "lstm-lm"}


def build_model(name: str, info: DataInfo, args: dict[str, Any] | None = None) -> nn.Module:
    """A built-in model by name, a zoo model (`timm:NAME`, `torchvision:NAME`, randomly
    initialised, its head sized to the classes), or `file.py:Class` / `package.module:Class`."""
    args = dict(args or {})
    if is_zoo(name):
        return zoo_build(name, info, args)
    if ":" in name:
        return _construct(load_user_class(name), args, name)
    entry = MODELS.get(ALIASES.get(name, name))
    if entry is None:
        raise UsageError(
            f"unknown model '{name}'.{did_you_mean(name, MODELS)} Built-in models: {', '.join(sorted(MODELS))}; "
            f"a zoo model as timm:NAME or torchvision:NAME; or your own class as path/to/file.py:ClassName"
        )
    try:
        return entry.build(info, args)
    except TypeError as error:
        raise UsageError(f"bad --model-args for {name}: {error}") from None


def load_user_class(spec: str) -> type[nn.Module]:
    """Import `file.py:Class` or `package.module:Class` and return the nn.Module subclass."""
    target, _, class_name = spec.rpartition(":")
    if not target or not class_name.isidentifier() or target.startswith("."):
        raise UsageError(
            f"model '{spec}' is not a file or module name with a class: write path/to/file.py:ClassName "
            f"or package.module:ClassName (an absolute module name, e.g. my_nets.py:Net or mypkg.nets:Net)"
        )
    module = _import_file(Path(target)) if target.endswith(".py") else _import_module(target)
    cls = getattr(module, class_name, None)
    if cls is None:
        classes = [
            n
            for n, v in vars(module).items()
            if inspect.isclass(v) and issubclass(v, nn.Module) and v.__module__ == module.__name__
        ]
        raise UsageError(
            f"{target} has no class '{class_name}'.{did_you_mean(class_name, classes)} nn.Module classes defined "
            f"there: {', '.join(classes) or 'none'}"
        )
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise UsageError(f"{spec} is not an nn.Module subclass")
    return cls


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise UsageError(f"model file {path} does not exist")
    module_name = f"torchsmith_user_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as error:
        raise UsageError(
            f"syntax error in {path}, line {error.lineno}: {error.msg}\n    {(error.text or '').rstrip()}"
        ) from None
    except Exception as error:
        raise UsageError(f"importing {path} failed: {type(error).__name__}: {error}") from None
    return module


def _import_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except (ImportError, ValueError, TypeError) as error:
        raise UsageError(f"cannot import module '{name}': {error}") from None


def _construct(cls: type[nn.Module], args: dict[str, Any], spec: str) -> nn.Module:
    try:
        return cls(**args)
    except TypeError as error:
        raise UsageError(
            f"could not build {spec} with arguments {args}: {error}. Pass constructor "
            f"arguments with --model-args '{{\"name\": value}}'"
        ) from None
