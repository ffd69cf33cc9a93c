"""Run every benchmark module of this package (each ``bench/<name>.py`` with a ``main()``),
or only those named: ``python -m bench [NAME ...]``."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

REQUIREMENTS = Path(__file__).with_name("requirements.txt")


def benchmarks() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if not m.name.startswith("_"))


def main(names: list[str]) -> int:
    available = benchmarks()
    unknown = [n for n in names if n not in available]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available)}", file=sys.stderr)
        return 2
    for name in names or available:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as missing:
            print(f"{name}: needs {missing.name}: pip install -r {REQUIREMENTS}", file=sys.stderr)
            continue
        if callable(getattr(module, "main", None)):
            print(f"== bench {name}")
            module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
