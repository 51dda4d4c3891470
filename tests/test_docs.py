"""The repository documents itself: README's layout and docs/design.md's module map name every module."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "jtln_hf"


def _layout() -> str:
    readme = (ROOT / "README.md").read_text()
    return re.search(r"## Layout\n\n```\n(.*?)```", readme, re.S).group(1)


#: Folders of the package that are not sub-packages of modules (checked by name in the layout).
_FOLDERS = ("metrics", "resources")


def _modules() -> set[str]:
    """Every module by its path in the package: ``io.py``, ``data/pools.py``, ``data/__init__.py``."""
    out = {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    for init in PACKAGE.glob("*/__init__.py"):
        if init.parent.name not in _FOLDERS:
            out |= {f"{init.parent.name}/{p.name}" for p in init.parent.glob("*.py")}
    return out


def test_readme_layout_names_every_module_and_nothing_else():
    layout = _layout()
    named = set(re.findall(r"(?<![\w/])((?:[a-z_]+/)?[a-z_]+\.py)\b", layout.split("recipes/")[0]))
    assert _modules() <= named, _modules() - named
    assert named <= _modules(), named - _modules()  # no module that is gone
    for folder in ("metrics/", "resources/"):
        assert folder in layout and (PACKAGE / folder).is_dir()
    for path in ("recipes/train_jtln.py", "recipes/sweep.py", "recipes/configs/", "docs/design.md", "benchmarks/",
                 "model_card_template.md", "Makefile", "pyproject.toml", ".ci/run"):  # fmt: skip
        assert path in layout and (ROOT / path).exists(), path


def test_design_module_map_names_every_module():
    design = (ROOT / "docs" / "design.md").read_text()
    table = design.split("## Module map")[1].split("\n## ")[0]
    named = set(re.findall(r"`((?:[a-z_]+/)?[a-z_]+\.py)`", table))
    assert _modules() <= named, _modules() - named
    assert named <= _modules(), named - _modules()


def test_card_template_copy_in_the_package_is_the_top_level_one():
    """The package ships a copy (installed wheels have no repository root); both must say the same."""
    assert (PACKAGE / "resources" / "model_card_template.md").read_text() == (ROOT / "model_card_template.md").read_text()


def test_every_markdown_file_the_texts_name_is_in_the_repository():
    """No code, test or doc points its reader at notes outside the repository (users would not have them)."""
    texts = [p for p in ROOT.rglob("*") if p.suffix in (".py", ".md", ".yaml", ".toml") and ".venv" not in p.parts
             and "outputs" not in p.parts and p.is_file()]  # fmt: skip
    in_repo = {p.name for p in ROOT.rglob("*.md") if ".venv" not in p.parts}
    for path in texts:
        text = path.read_text(errors="ignore")
        assert not re.search(r"\.\./\w+/\w+\.md", text), path  # a note in a folder beside the repository
        for name in re.findall(r"\b([A-Z][A-Z_]+\.md)\b", text):  # README.md-style names
            assert name in in_repo, (path, name)
