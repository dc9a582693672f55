"""The house rules, checked on the source: imports run one way (lower layer to higher), no module imports a
private name of another, no import circle, no function longer than ~60 lines, and ``import fastembed_tune``
loads neither torch nor onnxruntime."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fastembed_tune"
# lowest first: a module may import from its own layer and the layers before it
LAYERS = ["core", "kernels", "data", "evaluation", "embed", "mining", "training", "export", "adapt", "serve", "run",
          "cli"]
NATIVE = {"kernels", "_native", "_torch_ref"}
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str):
    parts = module.split(".")
    if len(parts) < 2:
        return None
    return LAYERS.index("kernels") if parts[1] in NATIVE else (LAYERS.index(parts[1]) if parts[1] in LAYERS else None)


def _imports():
    """(importer, imported module, names, line, at module level) for every ``from fastembed_tune... import``."""
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fastembed_tune"):
                yield _module_name(path), node.module, [a.name for a in node.names], node.lineno, id(node) in top
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("fastembed_tune."):
                        yield _module_name(path), a.name, [], node.lineno, id(node) in top


def test_imports_run_from_a_lower_layer_up_never_down():
    up = [f"{a}:{line} imports {b}" for a, b, _, line, _ in _imports()
          if _layer(a) is not None and _layer(b) is not None and _layer(b) > _layer(a)]
    assert not up, "\n".join(up)


def test_no_module_imports_a_private_name_of_another():
    private = [f"{a}:{line} imports {n} from {b}" for a, b, names, line, _ in _imports() for n in names
               if n.startswith("_") and not n.startswith("__") and n not in NATIVE]
    assert not private, "\n".join(private)


def test_no_import_circle():
    """Imports inside functions count too: a lazy import is still an arrow between two modules."""
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for a, b, names, _, _ in _imports():
        submodules = {f"{b}.{n}" for n in names} & modules  # ``from package import module``: an arrow to the module
        graph.setdefault(a, set()).update(submodules or {b})
        if len(submodules) < len(names):
            graph[a].add(b)
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                pytest.fail("import circle: " + " -> ".join(trail[trail.index(nxt):] + [nxt]))
            if nxt in graph and not state.get(nxt):
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in list(graph):
        if not state.get(node):
            visit(node, [node])


def test_every_function_fits_on_a_screen():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for n in ast.walk(ast.parse(path.read_text())):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = n.body[1:] if isinstance(n.body[0], ast.Expr) and isinstance(
                    getattr(n.body[0], "value", None), ast.Constant) else n.body
                if body and body[-1].end_lineno - body[0].lineno + 1 > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{n.lineno} {n.name}")
    assert not long, "functions over 60 lines of code: " + ", ".join(long)


def test_import_is_light_and_the_public_api_resolves():
    code = ("import sys, fastembed_tune as ft; heavy = {'torch', 'onnxruntime', 'transformers'} & set(sys.modules); "
            "print(sorted(heavy)); print(sorted(n for n in ft.__all__ if getattr(ft, n, None) is None))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["[]", "[]"], out
