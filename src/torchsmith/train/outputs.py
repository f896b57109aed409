"""Models that return more than a tensor: a dict (`{"logits": ...}`), Hugging Face's `ModelOutput`
(`.logits`, `.loss`), a tuple `(logits, aux)`. The prediction is `logits` or the first element
unless `model.output` names another key (or tuple index); a returned `loss` is the loss as is."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import torch

from torchsmith.errors import UsageError
from torchsmith.io import rank


class OutputSelector:
    """Picks the prediction (and a returned loss) from what the model returns; says once which.

    Example:
        >>> select = OutputSelector(None, announce=False)
        >>> logits, loss = select({"logits": torch.ones(2, 3), "aux": torch.zeros(1)})
        >>> tuple(logits.shape), loss is None
        ((2, 3), True)
    """

    def __init__(self, key: str | None = None, announce: bool = True) -> None:
        self.key = key
        self.announced = not announce

    def __call__(self, raw: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(raw, torch.Tensor):
            if self.key is not None:
                raise UsageError(
                    f"model.output is '{self.key}' but the model returns a plain tensor; unset model.output"
                )
            return raw, None
        if isinstance(raw, Mapping):
            return self._from_mapping(raw)
        if isinstance(raw, (tuple, list)) and raw:
            index = self._index(len(raw))
            return self._checked(raw[index], f"element {index}", f"a {type(raw).__name__} of {len(raw)}"), None
        if hasattr(raw, "logits"):  # an output object that is no mapping
            return self._from_mapping(
                {k: getattr(raw, k) for k in ("logits", "loss") if getattr(raw, k, None) is not None}
            )
        raise UsageError(
            f"the model returned {type(raw).__name__}; torchsmith takes a tensor, a dict or ModelOutput "
            f"(with 'logits'), or a tuple whose first element is the prediction"
        )

    def _from_mapping(self, raw: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        keys = [str(k) for k in raw]
        loss = raw.get("loss")
        candidates = [k for k in keys if k != "loss"]
        key = self.key or ("logits" if "logits" in raw else (candidates[0] if candidates else ""))
        if key not in raw:
            raise UsageError(
                f"the model returns a {type(raw).__name__} with keys {keys}"
                + (f", which has no '{self.key}' (model.output)" if self.key else " and no prediction besides the loss")
                + f"; choose its prediction with --set model.output=KEY (one of {', '.join(candidates) or 'none'})"
            )
        own_loss = loss if isinstance(loss, torch.Tensor) else None
        return self._checked(raw[key], f"'{key}'", f"a {type(raw).__name__} with keys {keys}", own_loss), own_loss

    def _index(self, length: int) -> int:
        if self.key is None:
            return 0
        if not self.key.isdigit() or int(self.key) >= length:
            raise UsageError(
                f"the model returns a tuple of {length}: model.output must be an index "
                f"0..{length - 1}, got '{self.key}'"
            )
        return int(self.key)

    def _checked(self, value: Any, which: str, returned: str, own_loss: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(value, torch.Tensor):
            raise UsageError(
                f"the model returns {returned}; its {which} is {type(value).__name__}, not a tensor: "
                f"choose the prediction with --set model.output=KEY"
            )
        if not self.announced:
            self.announced = True
            if rank.is_writer():
                extra = "; its returned 'loss' is used as the loss" if own_loss is not None else ""
                print(f"the model returns {returned}: using {which} as its prediction{extra}", file=sys.stderr)
        return value
