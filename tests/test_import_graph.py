"""The package's import structure, read from the source with `ast` (nothing is imported).

`import_graph` builds {module: modules of the package it imports} over the whole
`mmalign_jax` tree — every import statement, at module level or inside functions, relative
ones resolved, `from X import Y` resolved to the submodule X.Y when Y is one — so tests here
can check layering: the demo task's modules import each other without cycles, and the
library core never needs the demo package.
"""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "mmalign_jax"
PACKAGE = "mmalign_jax"
DEMO = "mmalign_jax.demo"


# --------------------------------------------------------------------------------- helpers
@dataclasses.dataclass(frozen=True)
class Import:
    importer: str             # the importing module, e.g. "mmalign_jax.demo.scorer"
    target: str               # the imported module of the package, e.g. "mmalign_jax.demo.answers"
    line: int
    function: Optional[str]   # the enclosing def, qualified ("Class.method"); None: module level


def module_files(package_dir, package_name: str) -> Dict[str, Path]:
    """{dotted module name: file} for every .py file under `package_dir` (a package's
    `__init__.py` is the package itself)."""
    root = Path(package_dir)
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join([package_name, *parts])] = path
    return out


def _resolve_relative(importer: str, is_package: bool, level: int, module: Optional[str]) -> str:
    base = importer.split(".")
    if not is_package:
        base = base[:-1]                      # a module's imports are relative to its package
    if level > 1:
        if level - 1 >= len(base):
            raise ValueError(f"{importer}: relative import beyond the top-level package")
        base = base[:len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


class _Visitor(ast.NodeVisitor):
    def __init__(self, importer: str, is_package: bool, modules: Set[str], package_name: str):
        self.importer, self.is_package = importer, is_package
        self.modules, self.package_name = modules, package_name
        self.scope: List[tuple] = []          # (name, is a def) of the enclosing defs/classes
        self.found: List[Import] = []

    def _enter(self, node, is_def: bool):
        self.scope.append((node.name, is_def))
        self.generic_visit(node)
        self.scope.pop()

    def visit_FunctionDef(self, node):
        self._enter(node, True)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):           # a class body runs at import: module level
        self._enter(node, False)

    def _function(self) -> Optional[str]:
        """The qualified name of the innermost enclosing def ("Class.method", "f.inner"), or
        None when the import runs at module import time."""
        defs = [i for i, (_, is_def) in enumerate(self.scope) if is_def]
        if not defs:
            return None
        return ".".join(n for n, _ in self.scope[:defs[-1] + 1])

    def _add(self, name: str, node) -> None:
        """An import of the dotted `name`: recorded as its longest prefix that is a module of
        the package (`pkg.sub.thing` → `pkg.sub` when `thing` is a name in it); imports from
        outside the package are ignored."""
        if name != self.package_name and not name.startswith(self.package_name + "."):
            return
        parts = name.split(".")
        while parts and ".".join(parts) not in self.modules:
            parts.pop()
        if parts:
            self.found.append(Import(self.importer, ".".join(parts), node.lineno,
                                     self._function()))

    def visit_Import(self, node):
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node):
        base = node.module or ""
        if node.level:
            base = _resolve_relative(self.importer, self.is_package, node.level, node.module)
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            self._add(sub if sub in self.modules else base, node)

    def visit_Call(self, node):
        # importlib.import_module("x.y") / __import__("x.y") with a literal name; a relative
        # one is taken relative to the importer's package (as with `package=__package__`)
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
        args = node.args
        if name in ("import_module", "__import__") and args and isinstance(args[0], ast.Constant) \
                and isinstance(args[0].value, str):
            target = args[0].value
            if target.startswith("."):
                level = len(target) - len(target.lstrip("."))
                target = _resolve_relative(self.importer, self.is_package, level,
                                           target.lstrip(".") or None)
            self._add(target, node)
        self.generic_visit(node)


def iter_imports(package_dir, package_name: str) -> Iterator[Import]:
    """Every import of a module of the package by a module of the package, with where it is."""
    files = module_files(package_dir, package_name)
    modules = set(files)
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        v = _Visitor(name, path.name == "__init__.py", modules, package_name)
        v.visit(tree)
        yield from v.found


def import_graph(package_dir, package_name: str) -> Dict[str, Set[str]]:
    """{module: set of the package's modules it imports} for every module of the package,
    counting imports anywhere in the file (module level and inside functions)."""
    graph: Dict[str, Set[str]] = {m: set() for m in module_files(package_dir, package_name)}
    for imp in iter_imports(package_dir, package_name):
        graph[imp.importer].add(imp.target)
    return graph


def subgraph(graph: Dict[str, Set[str]], prefix: str) -> Dict[str, Set[str]]:
    """The modules `prefix` and `prefix.*` with only the edges among them."""
    inside = lambda m: m == prefix or m.startswith(prefix + ".")  # noqa: E731
    return {m: {t for t in ts if inside(t)} for m, ts in graph.items() if inside(m)}


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One cycle as [a, b, ..., a], or None when the graph is acyclic."""
    state: Dict[str, int] = {}               # 1 = on the current path, 2 = done
    path: List[str] = []

    def visit(m: str) -> Optional[List[str]]:
        state[m] = 1
        path.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if t not in state:
                cycle = visit(t)
                if cycle:
                    return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m)
            if cycle:
                return cycle
    return None


# --------------------------------------------------------------------------------- the helpers
def _write(root: Path, files: Dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_import_graph_resolves_relative_submodule_and_function_imports(tmp_path):
    pkg = _write(tmp_path / "pkg", {
        "__init__.py": "from .a import f\n",
        "a.py": "import os\nfrom . import b\nfrom .sub import thing\n",
        "b.py": "def g():\n    from .sub.c import h\n    import pkg.a\n"
                "class K:\n    import pkg.sub\n    def m(self):\n        from . import a\n",
        "sub/__init__.py": "thing = 1\nfrom .. import b\n",
        "sub/c.py": "from ..a import f\nfrom pkg import sub\nimport importlib\n"
                    "x = importlib.import_module('..b', __package__)\n",
    })
    assert import_graph(pkg, "pkg") == {
        "pkg": {"pkg.a"},
        "pkg.a": {"pkg.b", "pkg.sub"},       # `thing` is a name in pkg.sub, not a module
        "pkg.b": {"pkg.sub.c", "pkg.a", "pkg.sub"},   # inside functions counts too
        "pkg.sub": {"pkg.b"},
        "pkg.sub.c": {"pkg.a", "pkg.sub", "pkg.b"},
    }
    lazy = [i for i in iter_imports(pkg, "pkg") if i.function]
    assert {(i.importer, i.target, i.function) for i in lazy} == {
        ("pkg.b", "pkg.sub.c", "g"), ("pkg.b", "pkg.a", "g"), ("pkg.b", "pkg.a", "K.m")}


def test_find_cycle_reports_the_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


# --------------------------------------------------------------------------------- the package
@pytest.fixture(scope="module")
def graph():
    return import_graph(PACKAGE_DIR, PACKAGE)


def test_demo_package_has_no_import_cycles(graph):
    demo = subgraph(graph, DEMO)
    # the reader sees the package (guards against a parser that finds nothing)
    assert {f"{DEMO}.scorer", f"{DEMO}.questions", f"{DEMO}.text_tasks"} <= set(demo)
    assert f"{DEMO}.answers" in demo[f"{DEMO}.scorer"]
    cycle = find_cycle(demo)
    assert cycle is None, "import cycle in the demo package: " + " -> ".join(cycle)


# Core modules that must work without the demo task (it is built on top of them).
CORE = ("models", "data", "convert", "remote", "annotate", "store", "parallel", "objectives")
# The only places the core may load the demo: inside these functions of CLI modules, where
# the user asked for the demo (`--annotator demo`, `python -m mmalign_jax.data demo`).
CLI_DEMO_IMPORTS = {
    ("mmalign_jax.annotate.__main__", "run_annotate"),
    ("mmalign_jax.data.__main__", "_demo"),
}


def _is_core(module: str) -> bool:
    return any(module == f"{PACKAGE}.{c}" or module.startswith(f"{PACKAGE}.{c}.") for c in CORE)


def test_core_does_not_import_demo():
    demo_imports = [i for i in iter_imports(PACKAGE_DIR, PACKAGE)
                    if _is_core(i.importer)
                    and (i.target == DEMO or i.target.startswith(DEMO + "."))]
    assert demo_imports, "expected the whitelisted CLI imports of the demo (reader broken?)"
    allowed = [i for i in demo_imports
               if i.importer.endswith(".__main__") and (i.importer, i.function) in CLI_DEMO_IMPORTS]
    bad = [f"{i.importer}:{i.line} imports {i.target}"
           + (f" (in {i.function})" if i.function else " (module level)")
           for i in demo_imports if i not in allowed]
    assert not bad, "the library core imports the demo package:\n  " + "\n  ".join(bad)
    stale = CLI_DEMO_IMPORTS - {(i.importer, i.function) for i in allowed}
    assert not stale, f"whitelisted CLI imports of the demo no longer exist: {sorted(stale)}"


# ------------------------------------------------------------------------------ layering
# Lower layers never import higher ones (DESIGN.md, "Layers and extension points"); inside a
# layer, `generate`, `annotate` and `evaluate` never import `train` (inference apart from
# training). Every import counts, also one inside a function.
LAYERS = {
    0: ("models", "data", "convert", "remote", "store", "parallel", "objectives", "variables",
        "loading", "stages", "xla_flags", "host_malloc", "runtime"),
    1: ("train", "generate", "annotate", "evaluate"),
    2: ("pipeline", "demo", "experiments", "bench", "bench_baselines", "configs"),
}
# Command-line entry points may offer the demo task by name (resolved inside the function
# that handles that choice): the `--annotator demo` and `data demo` subcommands.
ENTRY_POINT_EXCEPTIONS = {("mmalign_jax.annotate.__main__", DEMO),
                          ("mmalign_jax.data.__main__", DEMO)}


def _layer(module: str) -> Optional[int]:
    parts = module.split(".")
    if len(parts) == 1:
        return 0                                        # mmalign_jax/__init__.py
    for layer, names in LAYERS.items():
        if parts[1] in names:
            return layer
    return None


def test_every_module_has_a_layer():
    missing = sorted({m.split(".")[1] for m in module_files(PACKAGE_DIR, PACKAGE)
                      if "." in m and _layer(m) is None})
    assert not missing, f"add {missing} to LAYERS in tests/test_import_graph.py"


def test_no_import_from_a_lower_layer_to_a_higher_one():
    bad = []
    for imp in iter_imports(PACKAGE_DIR, PACKAGE):
        src, dst = _layer(imp.importer), _layer(imp.target)
        if src is None or dst is None or dst <= src:
            continue
        top = ".".join(imp.target.split(".")[:2])
        if (imp.importer, top) in ENTRY_POINT_EXCEPTIONS:
            continue
        bad.append(f"{imp.importer}:{imp.line} imports {imp.target}")
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_inference_does_not_import_training():
    bad = [f"{imp.importer}:{imp.line} imports {imp.target}"
           for imp in iter_imports(PACKAGE_DIR, PACKAGE)
           if imp.importer.split(".")[1:2] and imp.importer.split(".")[1] in
           ("generate", "evaluate", "annotate")
           and imp.target.startswith("mmalign_jax.train")]
    assert not bad, "\n".join(bad)


def test_subpackages_import_each_other_without_cycles(graph):
    """Collapsed to top-level subpackages (mmalign_jax.models, .train, ...), the graph is
    acyclic: no two parts of the library need each other."""
    top = {}
    for src, dsts in graph.items():
        a = ".".join(src.split(".")[:2])
        top.setdefault(a, set()).update(
            b for b in (".".join(d.split(".")[:2]) for d in dsts)
            if b != a and (src, b) not in ENTRY_POINT_EXCEPTIONS)
    top.pop(PACKAGE, None)
    for v in top.values():
        v.discard(PACKAGE)
    cycle = find_cycle(top)
    assert cycle is None, " -> ".join(cycle)
