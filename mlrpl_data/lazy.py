"""Package roots that re-export their public names, importing each module on first use (so
`import mlrpl_data` does not pull in pandas, pyarrow or torch)."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, public: dict[str, str], namespace: dict[str, Any]) -> tuple[Callable, Callable]:
    """(__getattr__, __dir__) for `package` whose names map to their submodule in `public`."""

    def __getattr__(name: str):
        if name in public:
            return getattr(importlib.import_module(f"{package}.{public[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(list(namespace) + list(public))

    return __getattr__, __dir__
