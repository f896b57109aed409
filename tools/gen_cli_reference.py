"""Write the generated reference pages, so that they cannot drift from the code.

- `docs/cli.md` from the `torchsmith` parser itself (`torchsmith.cli.build_parser()`): every
  command and sub-command, every option with its argument and help, plus the config keys
  that `--config` files and `--set` reach (from the `RunConfig` dataclasses).
- `docs/api.md` from the signatures and docstrings of the public Python objects.

Usage:
    python tools/gen_cli_reference.py            # rewrite docs/cli.md and docs/api.md
    python tools/gen_cli_reference.py --check    # exit 1 when either page is out of date

`tests/test_docs.py` regenerates both pages in memory and compares them with the files.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLI_PAGE = ROOT / "docs" / "cli.md"
API_PAGE = ROOT / "docs" / "api.md"
REGENERATE = "python tools/gen_cli_reference.py"

# The public Python API, grouped as the reference page shows it: (module, [names]).
API: list[tuple[str, str, list[str]]] = [
    ("Training", "torchsmith.train.trainer", ["Trainer"]),
    ("Callbacks", "torchsmith.callbacks", ["Callback", "ProgressPrinter", "EarlyStopping"]),
    ("Metric files", "torchsmith.callbacks", ["MetricsLogger"]),
    ("Checkpointing callbacks", "torchsmith.callbacks", ["Checkpointer", "StopOnSignal"]),
    ("Weight averaging", "torchsmith.callbacks", ["EMACallback"]),
    ("Shared training state", "torchsmith.state", ["TrainState"]),
    (
        "Configuration",
        "torchsmith.config",
        ["RunConfig", "ModelConfig", "DataConfig", "OptimConfig", "TrainConfig", "load_yaml", "parse_set"],
    ),
    ("Losses and tasks", "torchsmith.train.tasks", ["resolve_loss", "Task", "Classification", "Sequence"]),
    ("Building blocks", "torchsmith.models.blocks", ["ConvLayer"]),
    ("Image models", "torchsmith.models.vision", ["SimpleNet", "ConvNet", "ConvBNNet"]),
    ("Fast CIFAR-10 model", "torchsmith.models.speednet", ["SpeedNet"]),
    ("Speech model", "torchsmith.models.audio", ["AudioCNN"]),
    ("Language models", "torchsmith.models.text", ["LSTMLanguageModel", "GPT", "generate"]),
    ("Text classifiers", "torchsmith.models.text_classifiers", ["BagOfWords", "TextCNN", "BiLSTMClassifier"]),
    ("Models by name", "torchsmith.models.registry", ["build_model", "load_user_class"]),
    ("Data by name", "torchsmith.data.registry", ["load_data"]),
    ("Data containers", "torchsmith.data.bundle", ["DataBundle", "DataInfo", "MemorySource"]),
    ("Text data", "torchsmith.data.text", ["load_textfile", "load_table_dataset", "load_sst2", "encode", "decode"]),
    ("Tokenizers", "torchsmith.data.tokenizers", ["TokenizerOptions", "build_tokenizer", "tokenizer_from_state"]),
    ("Unicode", "torchsmith.data.unicode", ["read_utf8", "normalize", "script_profile"]),
    ("Speech data", "torchsmith.data.audio", ["load_fsdd", "load_wavfolder", "AudioOptions", "AudioAugment"]),
    (
        "Checkpoint files",
        "torchsmith.io.checkpoint",
        ["Checkpoint", "save_checkpoint", "load_checkpoint", "find_resumable", "verify_checkpoint"],
    ),
    (
        "The doctor",
        "torchsmith.doctor",
        [
            "preflight",
            "raise_for_errors",
            "Finding",
            "localize_nonfinite",
            "NanReport",
            "diagnose",
            "scan_data",
            "DataScanReport",
        ],
    ),
    ("Model summary", "torchsmith.report.model_summary", ["summary", "ModelSummary"]),
    ("Reports", "torchsmith.report", ["write_report", "write_comparison"]),
    ("Using a trained run (`torchsmith.load`)", "torchsmith.after.predictor", ["load", "Predictor", "Prediction"]),
    ("Evaluating a run", "torchsmith.after.evaluate", ["evaluate_run", "Evaluation"]),
    ("Exporting a run", "torchsmith.after.export", ["export_run", "ExportResult"]),
    ("Learning-rate finder", "torchsmith.after.lr_find", ["lr_find", "LRFindResult"]),
    ("The train command as a function", "torchsmith.app", ["train_run", "RunResult"]),
    ("Errors", "torchsmith.errors", ["TorchsmithError", "UsageError", "TrainingFailure", "Interrupted"]),
]


# ----------------------------------------------------------------------------- CLI


def walk_commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = (), summary: str = ""
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str]]:
    """Yield `(path, parser, one-line help)` for the parser and every sub-command, depth first.

    argparse has no public way to list a parser's arguments; `_actions` and
    `_SubParsersAction` are the attributes its own help formatter reads.
    """
    yield path or (parser.prog,), parser, summary
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) in seen:  # an alias of a command already listed
                    continue
                seen.add(id(sub))
                yield from walk_commands(sub, (*(path or (parser.prog,)), name), helps.get(name, ""))


def options_of(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The arguments a user types for this parser (not the sub-command dispatcher)."""
    return [
        action
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and action.help != argparse.SUPPRESS
    ]


def _help_text(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if "%" in text:  # argparse's own %(default)s / %(choices)s expansion
        params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
        if params.get("choices") is not None:
            params["choices"] = ", ".join(str(c) for c in params["choices"])
        text = text % dict(params, prog=prog)
    return text


def _argument_text(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    if action.choices is not None:
        return "{" + ",".join(str(c) for c in action.choices) + "}"
    metavar = action.metavar or (action.dest if not action.option_strings else action.dest.upper())
    text = metavar if isinstance(metavar, str) else " ".join(metavar)
    if action.nargs in ("*", "+"):
        text += " ..."
    return text


def _default_text(action: argparse.Action) -> str:
    default = action.default
    if action.nargs == 0 or default in (None, argparse.SUPPRESS, [], ()) or isinstance(action, argparse._VersionAction):
        return ""
    return (
        f" (default: `{default!r}`)" if isinstance(default, str) and not default.strip() else f" (default: `{default}`)"
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _synopsis(path: tuple[str, ...], parser: argparse.ArgumentParser) -> str:
    words = list(path)
    options = options_of(parser)
    if any(action.option_strings for action in options):
        words.append("[OPTIONS]")
    for action in options:
        if not action.option_strings:
            words.append(_argument_text(action))
    if any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
        words.append("COMMAND ...")
    return " ".join(words)


def _command_section(path: tuple[str, ...], parser: argparse.ArgumentParser, summary: str) -> list[str]:
    lines = [f"## `{' '.join(path)}`", ""]
    for text in (summary, parser.description):
        if text:
            lines += [text[0].upper() + text[1:] + ("" if text.endswith(".") else "."), ""]
    lines += ["```text", _synopsis(path, parser), "```", ""]
    options = options_of(parser)
    if options:
        lines += ["| option | argument | what it does |", "|---|---|---|"]
        for action in options:
            names = ", ".join(f"`{name}`" for name in action.option_strings) or f"`{action.dest}`"
            argument = _argument_text(action)
            argument = f"`{argument}`" if argument else ""
            help_text = _help_text(action, parser.prog)
            if "default" not in help_text:  # some help texts say the default in their own words
                help_text = (help_text + _default_text(action)).strip()
            if action.required and action.option_strings:
                help_text += " (required)"
            lines.append(f"| {names} | {_cell(argument)} | {_cell(_escape_prose(help_text))} |")
        lines.append("")
    subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for action in subcommands:
        lines += ["| command | what it does |", "|---|---|"]
        for choice in action._choices_actions:
            anchor = "-".join((*path, choice.dest)).lower()
            lines.append(f"| [`{choice.dest}`](#{anchor}) | {_cell(choice.help or '')} |")
        lines.append("")
    return lines


def _type_text(hint: Any) -> str:
    text = hint if isinstance(hint, str) else inspect.formatannotation(hint)
    return text.replace("typing.", "")


class _Shown(str):
    """A default shown as written (`ModelConfig()`), not as the repr of a string."""

    def __repr__(self) -> str:
        return str(self)


def _default_of(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        factory = field.default_factory
        return _Shown(f"{factory.__name__}()") if dataclasses.is_dataclass(factory) else factory()
    return dataclasses.MISSING


def config_keys(cls: type, prefix: str = "") -> Iterator[tuple[str, str, Any]]:
    """`(dotted key, type, default)` for every leaf field of a config dataclass."""
    for field in dataclasses.fields(cls):
        key = f"{prefix}{field.name}"
        factory = field.default_factory
        if factory is not dataclasses.MISSING and dataclasses.is_dataclass(factory):
            yield from config_keys(factory, f"{key}.")  # type: ignore[arg-type]
        else:
            yield key, _type_text(field.type), _default_of(field)


def _yaml_text(value: Any) -> str:
    """A default as it is written in a YAML config file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict) and not value:
        return "{}"
    return str(value)


def _config_section() -> list[str]:
    from torchsmith.config import RunConfig

    lines = [
        "## Config keys",
        "",
        "Every setting of a run, as it appears in a `--config` YAML file and in the run's "
        "`config.yaml`, and as `--set KEY=VALUE` names it (e.g. `--set optim.momentum=0.95`). "
        "Settings apply in this order, later ones winning: defaults, `--recipe`, the `--config` "
        "file, explicit flags, `--set`.",
        "",
        "| key | type | default |",
        "|---|---|---|",
    ]
    for key, type_text, default in config_keys(RunConfig):
        lines.append(f"| `{key}` | `{_cell(type_text)}` | `{_cell(_yaml_text(default))}` |")
    lines.append("")
    return lines


def cli_reference() -> str:
    """The whole `docs/cli.md` page, from `build_parser()`."""
    from torchsmith.cli.main import build_parser

    parser = build_parser()
    lines = [
        "# Command-line reference",
        "",
        f"<!-- Generated from torchsmith.cli.build_parser() by {REGENERATE}; do not edit by hand. -->",
        "",
        "Every command and option of `torchsmith`, generated from the parser itself. "
        "`torchsmith COMMAND --help` prints the same from the installed version.",
        "",
    ]
    for path, sub, summary in walk_commands(parser):
        lines += _command_section(path, sub, summary)
    lines += _config_section()
    return "\n".join(lines).rstrip("\n") + "\n"


# ----------------------------------------------------------------------------- API


def _format_signature(obj: Callable[..., Any], skip_self: bool) -> str:
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    parts: list[str] = []
    seen_keyword_only = False
    params = list(signature.parameters.values())
    if skip_self and params and params[0].name in ("self", "cls"):
        params = params[1:]
    for param in params:
        if param.kind is param.KEYWORD_ONLY and not seen_keyword_only:
            parts.append("*")
        if param.kind in (param.KEYWORD_ONLY, param.VAR_POSITIONAL):
            seen_keyword_only = True
        text = {param.VAR_POSITIONAL: "*", param.VAR_KEYWORD: "**"}.get(param.kind, "") + param.name
        if param.annotation is not param.empty:
            text += f": {_type_text(param.annotation)}"
        if param.default is not param.empty:
            text += f" = {_repr_default(param.default)}"
        parts.append(text)
    result = f"({', '.join(parts)})"
    if signature.return_annotation not in (signature.empty, "None", None):
        result += f" -> {_type_text(signature.return_annotation)}"
    return result


def _repr_default(value: Any) -> str:
    text = repr(value)
    return "..." if " at 0x" in text else text


def _escape_prose(line: str) -> str:
    """Escape `<` outside backtick spans, so `runs/<model>` is not read as an HTML tag."""
    parts = line.split("`")
    return "`".join(part.replace("<", "&lt;") if i % 2 == 0 else part for i, part in enumerate(parts))


def _fence(code: list[str]) -> list[str]:
    while code and not code[-1].strip():
        code.pop()
    # doctest directives are for the test runner, not for the reader
    return ["", "```python", *(re.sub(r"\s*# doctest:.*$", "", line[4:]) for line in code), "```"]


def docstring_markdown(doc: str | None) -> list[str]:
    """A docstring as Markdown: prose kept, indented blocks after a `...:` line fenced as code."""
    if not doc:
        return []
    lines = inspect.cleandoc(doc).splitlines()
    out: list[str] = []
    code: list[str] = []
    previous = ""
    for line in [*lines, ""]:
        indented = line.startswith("    ")
        if code and (indented or not line.strip()):
            code.append(line)
            continue
        if code:
            out += [*_fence(code), ""]
            code = []
        if indented and previous.rstrip().endswith(":"):
            code.append(line)
        else:
            out.append(_escape_prose(line))
        previous = line if line.strip() else previous
    if code:
        out += _fence(code)
    while out and not out[-1].strip():
        out.pop()
    return [*out, ""]


def _fields_table(cls: type) -> list[str]:
    lines = ["| field | type | default |", "|---|---|---|"]
    for field in dataclasses.fields(cls):
        default = _default_of(field)
        shown = "required" if default is dataclasses.MISSING else f"`{_cell(repr(default))}`"
        lines.append(f"| `{field.name}` | `{_cell(_type_text(field.type))}` | {shown} |")
    return [*lines, ""]


def _members(cls: type) -> list[tuple[str, Any]]:
    """Public methods and properties defined on the class itself, in source order."""
    members = []
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if inspect.isfunction(value) or isinstance(value, property):
            members.append((name, value))
    return members


def _class_name(cls: type) -> str:
    module = cls.__module__
    if module.startswith("torch.nn"):
        return f"nn.{cls.__qualname__}"
    if module == "builtins" or module.startswith("torchsmith"):
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"


def _class_section(name: str, cls: type) -> list[str]:
    bases = [_class_name(b) for b in cls.__bases__ if b is not object and not b.__name__.startswith("_")]
    based = f"  (subclass of {', '.join(f'`{b}`' for b in bases)})" if bases else ""
    doc = cls.__doc__
    if dataclasses.is_dataclass(cls):
        if doc and doc.startswith(f"{cls.__name__}("):
            doc = None  # the signature dataclasses writes when there is no docstring
        lines = [f"### `{name}`{based}", "", *docstring_markdown(doc), *_fields_table(cls)]
    else:
        init = vars(cls).get("__init__")
        if init is not None and init.__qualname__ != f"{cls.__qualname__}.__init__":
            init = None  # set by a base (typing.Protocol), not written in the class
        signature = _format_signature(init, skip_self=True) if init else ""
        lines = [f"### `{name}{signature}`{based}", "", *docstring_markdown(doc)]
    inherited = {n for base in cls.__mro__[1:] for n in vars(base)}
    overrides = [n for n, m in _members(cls) if n in inherited and not m.__doc__]
    if overrides:
        lines += ["Implements " + ", ".join(f"`{n}`" for n in overrides) + ".", ""]
    for member_name, member in _members(cls):
        if member_name in overrides:
            continue
        if isinstance(member, property):
            lines += [f"#### `{name}.{member_name}` (property)", "", *docstring_markdown(member.__doc__)]
        else:
            signature = _format_signature(member, skip_self=True)
            lines += [f"#### `{name}.{member_name}{signature}`", "", *docstring_markdown(member.__doc__)]
    return lines


def api_reference() -> str:
    """The whole `docs/api.md` page, from the objects listed in `API`."""
    lines = [
        "# Python API reference",
        "",
        f"<!-- Generated from the docstrings by {REGENERATE}; do not edit by hand. -->",
        "",
        "The public classes and functions, with their signatures and docstrings. "
        "`from torchsmith import Trainer` is the entry point; everything else is imported from "
        "the module named in each section.",
        "",
    ]
    for title, module_name, names in API:
        module = importlib.import_module(module_name)
        lines += [f"## {title}: `{module_name}`", ""]
        for name in names:
            obj = getattr(module, name, None)
            if obj is None:
                raise LookupError(f"{module_name} has no {name!r}: update API in {Path(__file__).name}")
            if inspect.isclass(obj):
                lines += _class_section(name, obj)
            else:
                signature = _format_signature(obj, skip_self=False)
                lines += [f"### `{name}{signature}`", "", *docstring_markdown(obj.__doc__)]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).rstrip("\n") + "\n"


# ----------------------------------------------------------------------------- main


def pages() -> dict[Path, str]:
    return {CLI_PAGE: cli_reference(), API_PAGE: api_reference()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate docs/cli.md and docs/api.md from the code.")
    parser.add_argument("--check", action="store_true", help="only report whether the pages are up to date")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))  # document this checkout, not another installed copy
    stale = []
    for path, text in pages().items():
        current = path.read_text(encoding="utf-8") if path.is_file() else ""
        if current == text:
            continue
        stale.append(path.relative_to(ROOT))
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if args.check and stale:
        print(f"out of date: {', '.join(map(str, stale))}; run {REGENERATE}")
        return 1
    print(f"{'rewrote ' + ', '.join(map(str, stale)) if stale else 'reference pages up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
