"""Package namespaces whose names load on first use (PEP 562), so that importing one module of a package runs no
other module of it (no import has a side effect another module depends on)."""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any, Callable

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: dict[str, str], namespace: dict[str, Any]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`: name -> the module that defines it, imported when first asked
    for and then cached in the package's `namespace`.

    An export named like the submodule that defines it (`nodes.train`, the function, in `nodes/train.py`) stays the
    export: importing a submodule binds it on its package, and would otherwise replace the function by the module
    whenever some import ran `import nodes.train` first (`from nodes.train import ...` still reads the module)."""
    _keep_exports(package, exports)

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace.get("__all__", ()), *exports})

    return __getattr__, __dir__


def _keep_exports(package: str, exports: dict[str, str]) -> None:
    """Make the import system's binding of submodule `package.name` over an export `name` bind the export."""
    module = sys.modules[package]
    shadowed = {n for n, m in exports.items() if m == f"{package}.{n}"}
    if not shadowed:
        return

    class _Package(types.ModuleType):
        def __setattr__(self, name: str, value: Any) -> None:
            if name in shadowed and isinstance(value, types.ModuleType) and value.__name__ == f"{package}.{name}":
                value = getattr(value, name)
            super().__setattr__(name, value)

    module.__class__ = _Package
