"""The package's layers (docs/ARCHITECTURE.md), checked on the source with `ast`.

Rules: an import between raytag modules goes at module level (only `raytag.cli` may
import lazily, for start-up time); it may point down the layers or within its own
group, never up and never sideways into another group of the same layer; and the
module graph has no cycles. Every module must belong to a layer, so a new module is
placed on purpose. The checker is tested on small synthetic packages first, so a
passing check on raytag means something.
"""
from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "raytag"

# bottom to top; a module may import its own group and any group of a lower layer
LAYERS: list[dict[str, tuple[str, ...]]] = [
    {"base": ("raytag", "raytag.errors", "raytag.config", "raytag.metrics", "raytag.storage",
              "raytag.session", "raytag.cluster")},
    {"data": ("raytag.data",)},
    {"features": ("raytag.features",)},
    {"models": ("raytag.models",), "pipeline": ("raytag.pipeline",)},
    {"training": ("raytag.training",)},
    {"search": ("raytag.search",)},
    {"ensemble": ("raytag.ensemble",)},
    {"predict": ("raytag.predict",), "scoring": ("raytag.scoring",)},
    {"serve": ("raytag.serve",), "report_html": ("raytag.report_html",)},
    {"console": ("raytag.console",)},
    {"demo": ("raytag.demo",), "testing": ("raytag.testing",)},
    {"cli": ("raytag.cli", "raytag.cli_help")},
]
LAZY_ALLOWED = {"raytag.cli"}  # typer start-up: each command imports its machinery when run


# ----------------------------------------------------------------------------- the checker
def module_names(root: Path) -> dict[str, Path]:
    """Dotted name -> file for every module of the package at `root`."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _target(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(source: str, module: str, is_package: bool, package: str, known: set[str]):
    """[(target module, lazy, line)] of the imports of `package` in `source`.

    `from a.b import c` names the module a.b.c when that module exists, else a.b.
    lazy: the import sits inside a function (anywhere below a def)."""
    tree = ast.parse(source)
    found = []

    def visit(node, lazy):
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name == package or alias.name.startswith(package + "."):
                        found.append((alias.name, lazy, child.lineno))
            elif isinstance(child, ast.ImportFrom):
                target = _target(child, module, is_package)
                if target == package or target.startswith(package + "."):
                    for alias in child.names:
                        sub = f"{target}.{alias.name}"
                        found.append((sub if sub in known else target, lazy, child.lineno))
            visit(child, inner)

    visit(tree, False)
    return sorted(set(found), key=lambda f: (f[2], f[0]))


def _group_of(module: str, layers) -> tuple[int, str] | None:
    best = None
    for rank, groups in enumerate(layers):
        for group, prefixes in groups.items():
            for prefix in prefixes:
                # the package itself ("raytag") names its __init__ only, not everything below
                if module == prefix or ("." in prefix and module.startswith(prefix + ".")):
                    if best is None or len(prefix) > best[2]:
                        best = (rank, group, len(prefix))
    return None if best is None else best[:2]


def check_package(root: Path, layers, lazy_allowed=frozenset()) -> list[str]:
    """Every broken rule in the package at `root`, one line each (empty: all good)."""
    package = root.name
    files = module_names(root)
    known = set(files)
    problems, graph = [], {m: set() for m in files}
    for module, path in files.items():
        place = _group_of(module, layers)
        if place is None:
            problems.append(f"{module}: belongs to no layer (add it to LAYERS and docs/ARCHITECTURE.md)")
            continue
        for target, lazy, line in imports_of(path.read_text(), module, path.name == "__init__.py",
                                             package, known):
            if target == module:
                continue
            where = f"{path.relative_to(root.parent)}:{line}"
            if lazy and module not in lazy_allowed:
                problems.append(f"{where}: {module} imports {target} inside a function; import it at the top")
            graph[module].add(target)
            other = _group_of(target, layers)
            if other is None:
                continue  # reported as a module of its own
            if other[0] > place[0]:
                problems.append(f"{where}: {module} ({place[1]}) imports {target} ({other[1]}), a higher layer")
            elif other[0] == place[0] and other[1] != place[1]:
                problems.append(f"{where}: {module} ({place[1]}) imports {target} ({other[1]}), "
                                "a sibling group of the same layer")
    problems += [f"import cycle among {', '.join(c)}" for c in _cycles(graph)]
    return problems


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


# ----------------------------------------------------------------------------- the checker, checked
TOY_LAYERS = [{"base": ("toy", "toy.low")}, {"mid": ("toy.mid",), "side": ("toy.side",)},
              {"top": ("toy.top",)}]


def _toy(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "toy"
    for rel, text in {"__init__.py": "", "low.py": "", "mid/__init__.py": "", "side.py": "",
                      "top.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    return root


def test_checker_accepts_a_clean_package(tmp_path):
    root = _toy(tmp_path, {
        "mid/__init__.py": "from toy.mid.a import x\n",
        "mid/a.py": "import os\nfrom toy import low\nfrom .. import low as l2\nx = 1\n",
        "top.py": "from toy.mid import x\nfrom toy.side import y\n\ndef f():\n    import json\n",
        "side.py": "from toy.low import *\ny = 2\n",
    })
    assert check_package(root, TOY_LAYERS) == []


@pytest.mark.parametrize("files, expected", [
    ({"low.py": "from toy.top import z\n"}, "toy.low (base) imports toy.top (top), a higher layer"),
    ({"mid/a.py": "from ..top import z\n"}, "toy.mid.a (mid) imports toy.top (top), a higher layer"),
    ({"side.py": "import toy.mid\n"}, "toy.side (side) imports toy.mid (mid), a sibling group"),
    ({"top.py": "def f():\n    from toy import low\n"}, "toy.top imports toy.low inside a function"),
    ({"top.py": "class A:\n    def f(self):\n        import toy.mid.a\n", "mid/a.py": ""},
     "toy.top imports toy.mid.a inside a function"),
    ({"mid/a.py": "from toy.mid import b\n", "mid/b.py": "from toy.mid.a import x\n"},
     "import cycle among toy.mid.a, toy.mid.b"),
    ({"extra.py": ""}, "toy.extra: belongs to no layer"),
])
def test_checker_reports_each_broken_rule(tmp_path, files, expected):
    problems = check_package(_toy(tmp_path, files), TOY_LAYERS)
    assert any(expected in p for p in problems), problems


def test_checker_lets_an_allowed_module_import_lazily(tmp_path):
    root = _toy(tmp_path, {"top.py": "def f():\n    from toy import low\n"})
    assert check_package(root, TOY_LAYERS, lazy_allowed={"toy.top"}) == []


# ----------------------------------------------------------------------------- raytag itself
def test_raytag_imports_follow_the_layers():
    problems = check_package(PACKAGE, LAYERS, LAZY_ALLOWED)
    assert not problems, "\n".join(problems)
