"""A trainer's ground truth as the text of a request's `reference`.

Trainers and datasets hold the known answer in many shapes: a string, a number, a list of
acceptable answers, verl's Search-R1 form ``{"target": [...]}``, numpy arrays of any of
these (verl reads its parquet columns into numpy). The judge reads text, so every shape
becomes one string here, the one rule shared by the adapters and `scribe eval`:

* a string is itself (stripped); a number its decimal text;
* a list is its items' texts: one item is that item's text, several a JSON array of them
  (the judge prompt says that any item of an array is a correct answer);
* a mapping with ``"target"`` is its target; another mapping its JSON text;
* nothing usable (None, NaN, an empty string or list) is no reference.

A text over the request's limit keeps its head and tail: the final answer usually closes a
reference solution, and one long ground truth must not make its sample unscorable.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from .protocol import MAX_REFERENCE_CHARS

__all__ = ["reference_text"]

_MARK = "\n[…]\n"


def _items(value: Any) -> list[str]:
    texts = (reference_text(item, limit=None) for item in value)
    return [text for text in texts if text is not None]


def _shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    keep = limit - len(_MARK)
    head = keep * 2 // 3
    return text[:head] + _MARK + text[len(text) - (keep - head) :]


def reference_text(value: Any, *, limit: int | None = MAX_REFERENCE_CHARS) -> str | None:
    """The reference text of a ground-truth `value`, or None when it holds none."""
    if hasattr(value, "tolist") and not isinstance(value, str):
        value = value.tolist()  # numpy arrays and scalars, without importing numpy
    text: str | None
    if value is None:
        text = None
    elif isinstance(value, str):
        text = value.strip() or None
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float):
        text = None if isinstance(value, float) and not math.isfinite(value) else str(value)
    elif isinstance(value, Mapping):
        if "target" in value:
            return reference_text(value["target"], limit=limit)
        text = json.dumps(value, ensure_ascii=False, default=str)
    elif isinstance(value, list | tuple):
        items = _items(value)
        if len(items) > 1:
            text = json.dumps(items, ensure_ascii=False)
        else:
            text = items[0] if items else None
    else:
        text = str(value).strip() or None
    return text if text is None or limit is None else _shorten(text, limit)
