"""Lazy package facades: a package names its public API without importing the modules behind it.

``import fastembed_tune`` then stays cheap (no torch, no onnxruntime); the first use of a name imports
the module that defines it, and the name becomes a plain attribute of the package.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_exports(package: str, where: Mapping[str, str], namespace: dict) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for the package ``package`` whose name ``n`` lives in module ``where[n]``;
    ``namespace`` is the package's ``globals()``, where a loaded name is kept.

    >>> ns = {}
    >>> getattr_, dir_ = lazy_exports("pkg", {"sqrt": "math"}, ns)
    >>> getattr_("sqrt")(9.0), "sqrt" in ns, dir_()
    (3.0, True, ['sqrt'])
    >>> getattr_("nope")
    Traceback (most recent call last):
    AttributeError: module 'pkg' has no attribute 'nope'
    """
    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # the next access is a plain attribute read
        return value

    def __dir__() -> list[str]:
        return sorted((set(namespace) - {"__getattr__", "__dir__"}) | set(where))

    return __getattr__, __dir__
