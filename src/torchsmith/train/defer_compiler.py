"""Keep torch._dynamo (torch.compile's machinery, about a second to import) out of runs that
never compile.

torch marks some of its own functions as not to be traced by torch.compile with
`torch._disable_dynamo`, a decorator that imports torch._dynamo on the function's first
call to install the mark. So building any optimizer, or counting FLOPs with
FlopCounterMode, imports the compiler. Until something else imports torch._dynamo nothing
can trace those functions and the mark has nothing to do: `defer_dynamo_import` lets them
run as they are until then, and their first call after torch._dynamo is loaded installs
torch's own mark, exactly as without it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch


def defer_dynamo_import(*functions: Callable[..., Any] | None) -> None:
    """Defer the import for functions decorated with `torch._disable_dynamo`.

    None, functions whose decorator is not the one this was written against (its closure holds
    `fn` and `recursive`), or that torch._dynamo has already marked, are left as they are.
    """
    for inner in functions:
        code = getattr(inner, "__code__", None)
        fn = getattr(inner, "__wrapped__", None)
        closure = getattr(inner, "__closure__", None)
        if code is None or fn is None or closure is None or code.co_freevars != ("fn", "recursive"):
            continue
        if getattr(fn, "__dynamo_disable", None) is not None:
            continue
        recursive = closure[code.co_freevars.index("recursive")].cell_contents
        fn.__dynamo_disable = _until_dynamo_loads(fn, recursive)


def _until_dynamo_loads(fn: Callable[..., Any], recursive: bool) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        if "torch._dynamo" not in sys.modules:
            return fn(*args, **kwargs)
        disabled = torch._dynamo.disable(fn, recursive, wrapping=False)
        fn.__dynamo_disable = disabled  # type: ignore[attr-defined]  # torch's own mark from now on
        return disabled(*args, **kwargs)

    return call
