"""The package is layered: no import circle and no upward import, lazy and ``TYPE_CHECKING`` ones included.

Every ``jtln_hf/**/*.py`` is read with :mod:`ast`: module-level imports, imports inside functions (lazy) and
imports under ``if TYPE_CHECKING`` all count, relative imports are resolved, and importing ``a.b.c`` also runs
the package ``a.b`` (an implicit edge to that ``__init__``; the root facade ``jtln_hf`` is left out of these,
since every import runs it; a module's edge to its own package counts for layers, not for circles, since a
package's ``__init__`` may import its own modules). Each module has a layer (``LAYER``); a module may import its own layer
(acyclically) and lower layers only. ``KNOWN_UPWARD`` lists the upward edges that are still to go: an edge
not on it fails, and so does a row whose edge is gone, so the list only shrinks.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "jtln_hf"
ROOT = "jtln_hf"

FOUNDATIONS, MODEL, DATA, PRESENTATION, TRAINING, REGISTRIES, RESULTS, CLI, FACADE, SCRIPTS = range(10)
LAYER_NAMES = ("foundations", "model and maths", "data", "presentation", "training", "registries",
               "comparison output", "CLI and orchestration", "package facade", "scripts")  # fmt: skip

#: Module (without the ``jtln_hf.`` prefix) -> layer. A new module must be listed here.
LAYER = {
    "version": FOUNDATIONS,
    "errors": FOUNDATIONS,
    "configuration_jtln": FOUNDATIONS,
    "utils": FOUNDATIONS,
    "utils.io": FOUNDATIONS,
    "utils.stats": FOUNDATIONS,
    "metrics": FOUNDATIONS,
    "metrics.classification.classification": FOUNDATIONS,
    "modeling_jtln": MODEL,
    "image_processing_jtln": MODEL,
    "sinkhorn": MODEL,
    "sinkhorn.settings": MODEL,
    "sinkhorn.solve": MODEL,
    "sinkhorn.api": MODEL,
    "cost": MODEL,
    "cost.agreement": MODEL,
    "cost.normalize": MODEL,
    "cost.priors": MODEL,
    "cost.features": MODEL,
    "cost.relationship": MODEL,
    "cost.files": MODEL,
    "cost.shuffle": MODEL,
    "cost.stability": MODEL,
    "cost.pseudo_labels": MODEL,
    "data": DATA,
    "data.pools": DATA,
    "data.domains": DATA,
    "data.image_stats": DATA,
    "data.fashion_mnist": DATA,
    "data.splits": DATA,
    "data.transforms": DATA,
    "data.decode": DATA,
    "data.checks": DATA,
    "data.joint": DATA,
    "data.sampler": DATA,
    "data.bad_images": DATA,
    "data.loader": DATA,
    "data.labels": DATA,
    "data.stream_source": DATA,
    "data.stream": DATA,
    "data.stream_loader": DATA,
    "data.known": DATA,
    "data.sources": DATA,
    "data.fgvc_aircraft": DATA,
    "backbones": DATA,
    # what tables, figures and cards call a method: below training, which names its loss parts with it
    "utils.styles": PRESENTATION,
    "sharing": PRESENTATION,
    "sharing.figures": PRESENTATION,
    "sharing.modelcard": PRESENTATION,
    "sharing.modelcard.facts": PRESENTATION,
    "sharing.modelcard.render": PRESENTATION,
    "sharing.hub": PRESENTATION,
    "sharing.examples": PRESENTATION,
    "sharing.timm_export": PRESENTATION,
    "sharing.demo": PRESENTATION,
    "training": TRAINING,
    "training.loss": TRAINING,
    "training.arguments": TRAINING,
    "training.state": TRAINING,
    "training.streaming": TRAINING,
    "training.bad_images": TRAINING,
    "training.trainer": TRAINING,
    "training.cotuning": TRAINING,
    "training.lora": TRAINING,
    # a run's cost: built from the data (and the model, through the methods' predictor), resolved, refreshed
    "cost.pixels": DATA,
    "cost.builders": REGISTRIES,
    "cost.flags": REGISTRIES,
    "cost.resolve": REGISTRIES,
    "cost.refresh": REGISTRIES,
    "methods": REGISTRIES,
    "methods.registry": REGISTRIES,
    "methods.stages": REGISTRIES,
    "methods.predict": REGISTRIES,
    "methods.builtins": REGISTRIES,
    "methods.run": REGISTRIES,
    "experiment.results": CLI,
    # the recipe's model/ folder: weights, card, demo and timm export of a run's result
    "sharing.folder": RESULTS,
    "experiment": CLI,
    "experiment.arguments": CLI,
    "experiment.checks": CLI,
    "experiment.trials": CLI,
    "experiment.cli": CLI,
    "experiment.plan": CLI,
    # the root ``__init__`` re-exports the model files; nothing inside the package imports it
    "": FACADE,
    # copied into a model folder and run there as a script (``python model/app.py``)
    "sharing.demo_app": SCRIPTS,
}

#: Upward edges still to remove, (importer, imported) -> how (top / lazy / TC). Shrink only.
KNOWN_UPWARD: dict[tuple[str, str], str] = {}

MAX_LINES = 400
#: Modules still over ``MAX_LINES``, to be split. Shrink only.
KNOWN_OVERSIZE: set[str] = set()


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _full(name: str) -> str:
    return f"{ROOT}.{name}" if name else ROOT


def _short(full: str) -> str:
    return "" if full == ROOT else full.removeprefix(f"{ROOT}.")


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module):
    """Every import node with how it runs: ``top``, ``lazy`` (in a function) or ``TC``."""

    def walk(node, how):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.body:
                    yield from walk_one(sub, "TC")
                for sub in child.orelse:
                    yield from walk_one(sub, how)
                continue
            yield from walk_one(child, how)

    def walk_one(node, how):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, how
        inner = "lazy" if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) else how
        yield from walk(node, inner)

    yield from walk(tree, "top")


def _targets(module: str, path: Path, node, modules: dict[str, Path]) -> set[str]:
    """The package modules (short names) that ``node`` in ``module`` runs."""
    full_names = {_full(m) for m in modules}
    package = _full(module) if path.name == "__init__.py" else _full(module).rpartition(".")[0]
    found = set()
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            base = ".".join(base + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        for alias in node.names:
            if f"{base}.{alias.name}" in full_names:
                found.add(f"{base}.{alias.name}")
            elif base in full_names:
                found.add(base)
    else:
        found |= {alias.name for alias in node.names if alias.name in full_names}
        # ``import jtln_hf.a.b`` binds ``jtln_hf``: only the named module counts, its parents come below
    return {_short(full) for full in found}


def _parents(module: str) -> list[str]:
    """The packages that running ``module`` runs first, the root facade left out: ``a.b.c`` -> ``a``, ``a.b``."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))] if module else []


def _edges() -> dict[tuple[str, str], set[str]]:
    modules = _modules()
    edges: dict[tuple[str, str], set[str]] = {}
    for module, path in modules.items():
        running = set(_parents(module))  # running ``a.b.c`` runs the package ``a.b`` first
        for parent in running & set(modules):
            edges.setdefault((module, parent), set()).add("parent")
        for node, how in _imports(ast.parse(path.read_text(), str(path))):
            for target in _targets(module, path, node, modules):
                if target != module:
                    edges.setdefault((module, target), set()).add(how)
                for parent in set(_parents(target)) & set(modules) - running - {module}:
                    edges.setdefault((module, parent), set()).add("parent")  # another package's __init__ runs
    return edges


def _cycles(edges) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _name(module: str) -> str:
    return module or ROOT


def test_every_module_has_a_layer():
    modules = set(_modules())
    assert modules <= set(LAYER), f"give these modules a layer in LAYER: {sorted(modules - set(LAYER))}"
    assert set(LAYER) <= modules, f"gone, remove from LAYER: {sorted(set(LAYER) - modules)}"


def test_no_upward_import():
    edges = _edges()
    upward = {(a, b): hows for (a, b), hows in edges.items() if LAYER.get(b, -1) > LAYER.get(a, -1)}
    new = {edge: hows for edge, hows in upward.items() if edge not in KNOWN_UPWARD}
    assert not new, "upward imports (a module imports a higher layer): " + "; ".join(
        f"{_name(a)} ({LAYER_NAMES[LAYER[a]]}) -> {_name(b)} ({LAYER_NAMES[LAYER[b]]}) [{', '.join(sorted(h))}]"
        for (a, b), h in sorted(new.items())
    )
    gone = sorted(edge for edge in KNOWN_UPWARD if edge not in upward)
    assert not gone, f"these upward edges are gone, delete them from KNOWN_UPWARD: {gone}"


def test_no_internal_import_of_the_root_facade_beyond_the_allowlist():
    edges = _edges()
    into_root = {a for (a, b) in edges if b == "" and a != ""} - {"sharing.demo_app"}
    assert into_root <= {a for (a, b) in KNOWN_UPWARD if b == ""}, into_root


def test_no_import_cycle():
    """Among the edges left after the allowlisted upward ones (those are the cycles still to break), none."""
    edges = {edge: hows for edge, hows in _edges().items() if edge not in KNOWN_UPWARD}
    # a module's implicit edge to its own package is no circle: that package's __init__ is already running
    edges = {(a, b): hows for (a, b), hows in edges.items() if not (hows == {"parent"} and a.startswith(f"{b}."))}
    assert not _cycles(edges), f"import cycles: {_cycles(edges)}"


def test_every_relative_import_resolves():
    """A relative import that names no module of the package fails only when it runs (a lazy one: late)."""
    modules = _modules()
    bad = []
    for module, path in modules.items():
        for node, how in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level and not _targets(module, path, node, modules):
                bad.append(f"{_name(module)}:{node.lineno} ({how}) from {'.' * node.level}{node.module or ''}")
    assert not bad, bad


def test_module_size():
    sizes = {m: len(p.read_text().splitlines()) for m, p in _modules().items()}
    over = {m for m, n in sizes.items() if n > MAX_LINES}
    assert over <= KNOWN_OVERSIZE, f"over {MAX_LINES} lines, split: { {m: sizes[m] for m in over - KNOWN_OVERSIZE} }"
    shrunk = sorted(KNOWN_OVERSIZE - over)
    assert not shrunk, f"no longer over {MAX_LINES} lines, delete from KNOWN_OVERSIZE: {shrunk}"


def test_the_walker_sees_lazy_and_type_checking_imports():
    """Guards the test itself: the three kinds of import are all read."""
    tree = ast.parse("from typing import TYPE_CHECKING\nimport a\nif TYPE_CHECKING:\n    import b\n"
                     "def f():\n    import c\n")  # fmt: skip
    kinds = {node.names[0].name: how for node, how in _imports(tree)}
    assert kinds == {"TYPE_CHECKING": "top", "a": "top", "b": "TC", "c": "lazy"}


def test_the_top_level_reads_like_the_layer_diagram():
    """The model trio, the facade, version and errors, at most three other modules; everything else in packages."""
    top = {p.stem for p in PACKAGE.glob("*.py")}
    core = {"__init__", "version", "errors", "configuration_jtln", "modeling_jtln", "image_processing_jtln"}
    assert core <= top and len(top - core) <= 3, sorted(top - core)
