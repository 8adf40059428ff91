"""The package's tree tells its flow, with one name per thing: no two modules share a name."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import barctl

PACKAGE = Path(barctl.__file__).parent


def test_module_names_are_unique():
    names = Counter(p.stem for p in PACKAGE.rglob("*.py") if p.stem not in ("__init__", "__main__"))
    assert [name for name, count in names.items() if count > 1] == []


def test_no_module_shadows_the_standard_library():
    import sys

    shadowing = [p.relative_to(PACKAGE) for p in PACKAGE.rglob("*.py") if p.stem in sys.stdlib_module_names]
    assert shadowing == []


def test_the_flow_has_its_folders():
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert {"manifest", "engine", "runners", "training", "model", "data", "rewards", "evaluate"} <= folders
    assert (PACKAGE / "manifest" / "manifest.schema.json").is_file()
