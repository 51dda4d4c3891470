"""The repository documents itself: docs/design.md's layout and module map name every module, and every relative
link of the README and the docs resolves."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "jtln_hf"


def _layout() -> str:
    """The code block of docs/design.md's "Layout" (the README links to it)."""
    design = (ROOT / "docs" / "design.md").read_text()
    return re.search(r"## Layout\n\n```\n(.*?)```", design, re.S).group(1)


#: Folders of the package that are not sub-packages of modules (checked by name in the layout).
_FOLDERS = ("metrics", "resources")


#: A module path as the texts write it: ``errors.py``, ``utils/io.py``, ``sharing/modelcard/facts.py``.
_MODULE = r"(?:[a-z_]+/)*[a-z_]+\.py"


def _modules() -> set[str]:
    """Every module by its path in the package, sub-packages at any depth: ``__init__.py`` (the facade),
    ``utils/io.py``, ``data/__init__.py``, ``sharing/modelcard/facts.py``."""
    return {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
            if p.relative_to(PACKAGE).parts[0] not in _FOLDERS and "__pycache__" not in p.parts}  # fmt: skip


def test_design_layout_names_every_module_and_nothing_else():
    layout = _layout()
    named = set(re.findall(rf"(?<![\w/])({_MODULE})\b", layout.split("recipes/")[0]))
    assert _modules() <= named, _modules() - named
    assert named <= _modules(), named - _modules()  # no module that is gone
    for folder in ("metrics/", "resources/"):
        assert folder in layout and (PACKAGE / folder).is_dir()
    for path in ("recipes/train_jtln.py", "recipes/sweep.py", "recipes/write_space.py", "recipes/configs/",
                 "docs/design.md", "benchmarks/", "model_card_template.md", "Makefile", "pyproject.toml", ".ci/run",
                 "CHANGELOG.md"):  # fmt: skip
        assert path in layout and (ROOT / path).exists(), path


def test_design_module_map_names_every_module():
    design = (ROOT / "docs" / "design.md").read_text()
    table = design.split("## Module map")[1].split("\n## ")[0]
    named = set(re.findall(rf"`({_MODULE})`", table))
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


# ------------------------------------------------------------------ links between the pages
_PAGES = ("README.md", "CHANGELOG.md", "docs/*.md")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)  # a # in a code block is no heading
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#+ (.+)$", text, re.M):
        slug = _slug(heading)
        out.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return out


def test_every_relative_link_of_the_readme_and_the_docs_resolves():
    """Each ``[text](path#anchor)`` outside code blocks names a file of the repository and, with ``#``, a heading
    of that page (GitHub's anchors): a page moved or a heading renamed breaks no link silently."""
    pages = [p for pattern in _PAGES for p in sorted(ROOT.glob(pattern))]
    assert len(pages) >= 8, pages
    broken = []
    for page in pages:
        text = re.sub(r"^ *```.*?^ *```", "", page.read_text(), flags=re.S | re.M)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists() or (anchor and path.suffix == ".md" and anchor not in _anchors(path)):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_the_readme_is_a_front_door():
    """At most 250 lines: the rest lives in docs/ pages and CHANGELOG.md, which the README links."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for page in ("docs/results.md", "docs/cli.md", "docs/scale.md", "docs/sharing.md", "docs/errors.md", "docs/design.md"):
        assert (ROOT / page).is_file() and page in text, page
