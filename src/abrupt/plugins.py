"""Discovery of the packages a new thing is one file of (tasks/, interventions/): every module on
the package's path (`__path__`, which a test or a user may extend with a folder of their own) that
defines the object `attr`, keyed by that object's `name`."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Iterable


def find(package: str, path: Iterable[str], attr: str) -> dict[str, Any]:
    """{obj.name: obj} for each module `package.<module>` on `path` that defines `attr`, sorted by
    name."""
    found = {}
    for info in pkgutil.iter_modules(list(path)):
        obj = getattr(importlib.import_module(f"{package}.{info.name}"), attr, None)
        if obj is not None:
            found[obj.name] = obj
    return dict(sorted(found.items()))
