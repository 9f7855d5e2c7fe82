"""The package's modules import one another one way: parsed with ``ast`` (relative imports resolved, imports inside
functions included), the module graph has no cycle, and ``gf_lightning.optim`` never imports Lightning (the optimizers
work in any PyTorch loop). Breakage: a module that imports one that imports it back, e.g. a report importing the sweep
that imports the report (tried: such a pair fails, naming its modules)."""

from __future__ import annotations

import ast
from pathlib import Path

from support import ROOT

PACKAGE = ROOT / "gf_lightning"
#: cycles known and accepted (none: keep it so)
KNOWN_CYCLES: set[frozenset[str]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` but those under ``if TYPE_CHECKING:`` (imports for annotations only, never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
            else:
                stack.append(child)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports (``from .x import y`` names ``x``, or ``x.y`` where that is a
    module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            targets = [f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in modules else origin
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # a name inside a module: the module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports(p, modules) for p in paths}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_itself_through_others():
    edges = graph()
    # a package's __init__ importing its own modules, and they importing the package, is not a layering cycle
    edges = {m: {t for t in ts if not (m.startswith(t + ".") and (PACKAGE / Path(*t.split(".")[1:]) / "__init__.py")
                                       .is_file())} for m, ts in edges.items()}
    found = [c for c in cycles(edges) if frozenset(c) not in KNOWN_CYCLES]
    assert not found, "import cycles: " + "; ".join(" ↔ ".join(c) for c in found)


def test_the_study_package_has_no_cycle_at_all():
    edges = graph()
    study = {m: {t for t in ts if t.startswith("gf_lightning.study")} for m, ts in edges.items()
             if m.startswith("gf_lightning.study")}
    assert not cycles(study), cycles(study)


def test_optim_never_imports_lightning():
    for path in sorted((PACKAGE / "optim").rglob("*.py")):
        for node in runtime_nodes(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            bad = [n for n in names if n.split(".")[0] in ("lightning", "pytorch_lightning")]
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
        # nor a module of this package that does
    edges = graph()
    for module in (m for m in edges if m.startswith("gf_lightning.optim")):
        for target in edges[module]:
            assert target.startswith("gf_lightning.optim") or target in ("gf_lightning", "gf_lightning.errors"), (
                f"{module} imports {target}")
