"""YAML in, safely: ``yaml.safe_load`` plus a bound on what aliases can expand to.

``safe_load`` builds an aliased node once and shares it, so a "billion laughs" file of a few
hundred bytes loads fast, but every walk over the result (number coercion, pydantic) visits each
share again: 9 levels of 9 aliases are 387 million values (measured: the process was killed by
the kernel at 22 GB). :func:`load_yaml` counts the expanded size first (each distinct node once)
and refuses a document larger than :data:`MAX_VALUES`, or one that contains itself.
"""

from __future__ import annotations

from typing import Any

import yaml

#: Most values (mapping keys and values, list items, scalars) a spec may expand to.
MAX_VALUES = 100_000
_IN_PROGRESS = -1


def _expanded(node: Any, sizes: dict[int, int]) -> int:
    """Values in ``node`` once every alias is expanded; -1 for a node containing itself."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if not isinstance(node, dict | list):
        return 1
    sizes[key] = _IN_PROGRESS
    children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
    total = 1
    for child in children:
        size = _expanded(child, sizes)
        if size == _IN_PROGRESS:
            return _IN_PROGRESS
        total += size
        if total > MAX_VALUES:
            break
    sizes[key] = total
    return total


def load_yaml(text: str, where: str) -> Any:
    """Parse YAML text with ``yaml.safe_load``; bounded expansion.

    Args:
        text: the document.
        where: the file (or option) it came from, for the error message.

    Raises:
        ValueError: naming ``where``: a syntax error, or aliases (``*name``) that expand past
            :data:`MAX_VALUES` values or into a cycle.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{where}: not valid YAML: {exc}") from None
    size = _expanded(data, {})
    if size == _IN_PROGRESS:
        raise ValueError(f"{where}: an alias (*name) refers to a node that contains it")
    if size > MAX_VALUES:
        raise ValueError(f"{where}: its aliases (*name) expand to more than {MAX_VALUES} "
                         "values; refusing it (an alias bomb?)")
    return data
