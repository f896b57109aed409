"""The search space of a sweep: `--search 'optim.lr=log(1e-4,1e-1)'` and friends, as Optuna calls.

    optim.lr=log(1e-4,1e-1)         a float, sampled on a log scale
    optim.weight_decay=float(0,0.1) a float, uniform
    model.args.width=int(32,256)    an integer (int(32,256,32) steps by 32)
    train.batch_size=[64,128,256]   one of the listed values (YAML: lists, strings, numbers)

Example:
    >>> parse_search("optim.lr=log(1e-4,1e-1)")
    SearchParam(key='optim.lr', kind='log', low=0.0001, high=0.1, step=None, choices=())
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import yaml

from torchsmith.errors import UsageError

_RANGE = re.compile(r"^(log|float|int)\(\s*([^,]+?)\s*,\s*([^,]+?)\s*(?:,\s*([^,]+?)\s*)?\)$")
EXAMPLES = "e.g. optim.lr=log(1e-4,1e-1), model.args.width=int(32,256) or train.batch_size=[64,128,256]"


@dataclass(frozen=True)
class SearchParam:
    key: str  # a config path, as for --set
    kind: str  # log | float | int | choice
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """The value Optuna's `trial` picks for this setting."""
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1))
        if self.kind in ("log", "float"):
            return trial.suggest_float(self.key, self.low, self.high, log=self.kind == "log", step=self.step)
        return decode(trial.suggest_categorical(self.key, [encode(c) for c in self.choices]))

    def grid(self) -> list[Any]:
        """Every value, for the grid sampler (Optuna's own encoding of choices)."""
        if self.kind == "choice":
            return [encode(c) for c in self.choices]
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        raise UsageError(
            f"--sampler grid needs a finite set of values, but --search {self.key}={self.kind}(...) is continuous: "
            f"list the values, e.g. {self.key}=[{self.low:g},{self.high:g}]"
        )

    def base_value(self, value: Any) -> Any | None:
        """The base config's value in Optuna's encoding when it lies inside this range, else None."""
        if self.kind == "choice":
            return encode(value) if encode(value) in [encode(c) for c in self.choices] else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self.low <= value <= self.high:
            return None
        return int(value) if self.kind == "int" else float(value)


def encode(value: Any) -> Any:
    """Optuna's categorical choices must be None, bool, int, float or str: lists travel as JSON."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def decode(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        return json.loads(value)
    return value


def parse_search(text: str) -> SearchParam:
    key, sep, spec = text.partition("=")
    key, spec = key.strip(), spec.strip()
    if not sep or not key or not spec:
        raise UsageError(f"--search expects KEY=SPACE ({EXAMPLES}), got '{text}'")
    if spec.startswith("["):
        return SearchParam(key, "choice", choices=tuple(_choices(key, spec)))
    match = _RANGE.match(spec)
    if not match:
        raise UsageError(f"--search {key}: cannot read '{spec}'; write log(a,b), float(a,b), int(a,b) or [a,b,c]")
    kind, *bounds = match.groups()
    numbers = [_number(key, b) for b in bounds if b is not None]
    low, high = numbers[0], numbers[1]
    step = numbers[2] if len(numbers) == 3 else None
    if not low < high:
        raise UsageError(f"--search {key}: the range {kind}({low:g},{high:g}) must have low < high")
    if kind == "log" and low <= 0:
        raise UsageError(f"--search {key}: log({low:g},{high:g}) needs a positive low end; use float(a,b) for 0")
    if kind == "int" and not (low.is_integer() and high.is_integer()):
        raise UsageError(f"--search {key}: int({low:g},{high:g}) needs whole numbers")
    return SearchParam(key, kind, low, high, step)


def _choices(key: str, spec: str) -> list[Any]:
    try:
        values = yaml.safe_load(spec)
    except yaml.YAMLError as error:
        raise UsageError(f"--search {key}: '{spec}' is not a list: {error}") from None
    if not isinstance(values, list) or not values:
        raise UsageError(f"--search {key}: the choices must be a non-empty list like [64,128,256], got '{spec}'")
    if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
        raise UsageError(f"--search {key}: '{spec}' lists a value twice")
    return values


def _number(key: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"--search {key}: '{text}' is not a number") from None


def parse_space(texts: list[str]) -> list[SearchParam]:
    """Every --search, checked: at least one, each key once."""
    if not texts:
        raise UsageError(f"torchsmith sweep needs at least one --search KEY=SPACE ({EXAMPLES})")
    space = [parse_search(text) for text in texts]
    keys = [param.key for param in space]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise UsageError(f"--search names {', '.join(repeated)} more than once; give each setting one range")
    return space


def assign(tree: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of the nested config dict `tree` with `key` (a.b.c) set to `value`."""
    head, _, rest = key.partition(".")
    out = dict(tree)
    out[head] = assign(dict(out.get(head) or {}), rest, value) if rest else value
    return out


def lookup(tree: dict[str, Any], key: str) -> Any:
    """The value at `key` (a.b.c) in the nested dict, or None."""
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def as_set_value(value: Any) -> str:
    """A value written for `--set key=VALUE` (read back as YAML)."""
    if isinstance(value, float):
        return repr(value)
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
