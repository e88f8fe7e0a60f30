"""The README's layout table names every package and top-level module of the tree, and nothing that is gone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _layout_rows() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("- Layout, in pipeline order")
    end = readme.find("\n\n", readme.index("| where | what |", start))
    return readme[start:] if end < 0 else readme[start:end]


def test_readme_layout_names_every_package_and_module():
    table = _layout_rows()
    pkg = ROOT / "scrubber"
    for sub in sorted(p for p in pkg.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        assert f"`scrubber/{sub.name}/`" in table, f"scrubber/{sub.name}/ missing from the README layout"
    for mod in sorted(p for p in pkg.glob("*.py") if p.name != "__init__.py"):
        assert re.search(rf"`(scrubber/)?{re.escape(mod.name)}`", table), f"{mod.name} missing from the README layout"


def test_readme_layout_names_nothing_that_is_gone():
    for path in re.findall(r"`(scrubber/[\w/]+(?:\.py)?)`", _layout_rows()):
        assert (ROOT / path).exists(), f"README layout names {path}, which does not exist"


def test_each_edit_concept_lives_in_one_module():
    names = [p.stem for p in (ROOT / "scrubber").rglob("*.py") if p.stem != "__init__"]
    for concept in ("iau", "second_order", "first_order", "iterative", "kfac", "solvers"):
        assert names.count(concept) == 1, f"{concept}.py exists {names.count(concept)} times"
