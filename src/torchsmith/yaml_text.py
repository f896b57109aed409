"""YAML from outside (configs, run files, --set values) parsed with bounds: safe tags only, and no
alias bomb. `yaml.safe_load` expands aliases: a few hundred bytes of `&a [*b, *b, ...]` become
billions of values the moment anything walks the result (a merge, a copy, an error message), so
the document's expanded size is counted on the composed nodes, where aliases are still shared,
and refused before anything is built."""

from __future__ import annotations

from typing import Any

import yaml

from torchsmith.errors import UsageError

MAX_YAML_VALUES = 100_000  # values a document may expand to through its aliases; a config holds hundreds


def load_yaml_text(text: str, name: str = "<text>") -> Any:
    """`yaml.safe_load(text)`, refusing (UsageError) a document whose aliases expand past
    MAX_YAML_VALUES values or that is nested too deeply; YAML syntax errors propagate as
    `yaml.YAMLError` for the caller to describe.

    Example:
        >>> load_yaml_text("a: &x {b: 1}\nc: *x\n")
        {'a': {'b': 1}, 'c': {'b': 1}}
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()  # aliases are shared nodes here: nothing expanded yet
        if node is None:
            return None
        size = expanded_size(node, {})
        if size > MAX_YAML_VALUES:
            raise UsageError(
                f"{name}: the YAML expands to {size:,} values through its aliases (&name / *name), more "
                f"than the {MAX_YAML_VALUES:,} a config may hold; write the values out without aliases."
            )
        return loader.construct_document(node)
    except RecursionError:
        raise UsageError(f"{name}: the YAML is nested too deeply to be a config; flatten it.") from None
    finally:
        loader.dispose()


def expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values the document holds once every alias is expanded, counted without expanding
    (each shared node once, memoised): an alias bomb of a few hundred bytes counts in the billions."""
    key = id(node)
    if key not in sizes:
        sizes[key] = 1  # a node that holds itself (a recursive alias) counts once
        if isinstance(node, yaml.SequenceNode):
            sizes[key] = 1 + sum(expanded_size(child, sizes) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            sizes[key] = 1 + sum(expanded_size(k, sizes) + expanded_size(v, sizes) for k, v in node.value)
    return sizes[key]
