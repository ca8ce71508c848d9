"""Each kind of code in its folder, and no import circle (README, "What is where").

Every module of jml_jax/, data_pipeline/, launch/ and tools/ is parsed with
`ast`; every import in it counts, at module level or inside a function (a lazy
import is still a dependency). The edges are project modules: ``import a.b``
and ``from a import b`` name ``a.b`` when that is a module, else ``a``.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
FOLDERS = ("jml_jax", "data_pipeline", "launch", "tools")
# Which folder may import which (README): entry points compose the rest, tools
# use the library and the data, the library uses neither, the data no library
# but its import-free facts (jml_jax/facts.py: the image statistics).
MAY_IMPORT = {
    "jml_jax": {"jml_jax"},
    "data_pipeline": {"data_pipeline", "jml_jax.facts"},
    "tools": {"tools", "jml_jax", "data_pipeline", "configs"},
    "launch": {"launch", "tools", "jml_jax", "data_pipeline", "configs"},
}
# Never imported by the library, not even lazily.
NOT_IN_LIBRARY = {"tensorflow", "tensorflow_datasets", "data_pipeline", "launch", "tools"}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for folder in FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imported_names(name: str, path: pathlib.Path, modules) -> set[str]:
    """The dotted names the file's import statements bring in: ``from a import b``
    is ``a.b`` when that is a project module, else ``a``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            for alias in node.names:
                names.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module)
    return names


def _resolve(name: str, modules) -> str | None:
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _graph():
    """(module -> project modules it imports, module -> top-level names it imports)."""
    modules = _modules()
    graph, external = {}, {}
    for name, path in modules.items():
        names = _imported_names(name, path, modules)
        targets = {_resolve(n, modules) for n in names}
        graph[name] = sorted(t for t in targets if t and t != name)
        external[name] = {n.split(".")[0] for n in names}
    return graph, external


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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


def test_the_graph_sees_lazy_imports():
    graph, _ = _graph()
    assert "tools.render" in graph["launch.predict"]  # imported inside main()
    assert len(graph) > 60


def test_no_import_circle():
    graph, _ = _graph()
    cycles = _cycles(graph)
    assert not cycles, "import circles (each line: modules that import each other):\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("folder", FOLDERS)
def test_each_folder_imports_only_what_its_kind_may(folder):
    graph, external = _graph()
    wrong = [f"{m} imports {t}" for m, targets in graph.items() if m.split(".")[0] == folder
             for t in targets if t.split(".")[0] not in MAY_IMPORT[folder] and t not in MAY_IMPORT[folder]]
    # configs/ is not parsed as a node; imports of it are checked here.
    wrong += [f"{m} imports configs" for m, names in external.items()
              if m.split(".")[0] == folder and "configs" in names and "configs" not in MAY_IMPORT[folder]]
    assert not wrong, "\n".join(wrong)


def test_the_facts_module_imports_nothing():
    """jml_jax/facts.py is read by the data pipeline and the PyTorch twin: no JAX, no Flax."""
    graph, external = _graph()
    assert graph["jml_jax.facts"] == [] and external["jml_jax.facts"] == set()


def test_the_library_never_imports_tensorflow_data_launch_or_tools():
    _, external = _graph()
    wrong = {m: sorted(names & NOT_IN_LIBRARY) for m, names in external.items()
             if m.split(".")[0] == "jml_jax" and names & NOT_IN_LIBRARY}
    assert not wrong, wrong


FACTS = {"IMAGE_MEAN", "IMAGE_STD", "MASK_VALUE", "IMAGE_REGIONS", "GRID_CHANNELS", "GRID_SIDE"}
IMAGE_STAT_VALUES = {0.48, 0.498, 0.531, 0.214, 0.207}
# The mask value as a literal, in model code (a decoding threshold of -1e4 elsewhere is not one).
MODEL_CODE = ("jml_jax.models", "tools.torch_jml")


def test_each_model_fact_has_one_owner():
    """Image statistics, the mask value and the grid size are written down
    only in jml_jax/facts.py; everything else imports them."""
    wrong = []
    for name, path in _modules().items():
        if name == "jml_jax.facts":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Assign) and isinstance(node.value, (ast.Constant, ast.Tuple, ast.UnaryOp)):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id in FACTS:
                        wrong.append(f"{name}:{node.lineno} assigns {target.id}")
            if isinstance(node, ast.Constant) and isinstance(node.value, float) and node.value in IMAGE_STAT_VALUES:
                wrong.append(f"{name}:{node.lineno} writes {node.value}")
            if (name.startswith(MODEL_CODE) and isinstance(node, ast.Constant)
                    and isinstance(node.value, (int, float)) and abs(node.value) == 10000):
                wrong.append(f"{name}:{node.lineno} writes the mask value {node.value}")
            if isinstance(node, ast.Tuple) and [getattr(e, "value", None) for e in node.elts] in ([49, 2048],):
                wrong.append(f"{name}:{node.lineno} writes the grid shape (49, 2048)")
    assert not wrong, "\n".join(wrong)
