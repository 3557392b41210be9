"""The package's layers only point down (docs/design.md §1) and its modules import each other without cycles."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "missrec_recbole"

# Lowest first; a module may import its own layer and the layers before it.
LAYERS = [
    ("errors", "files", "command", "compat", "released", "config_schema", "config"),
    ("data",),
    ("interests",),
    ("model",),
    ("evaluation",),
    ("trainer",),
    ("tools",),
    ("quick_start", "baselines"),
    ("inference", "bench", "train", "cli", "__main__"),  # entry points: cli imports the others only when they run
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import of the package in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("missrec_recbole"):
            names = [node.module] if node.module != "missrec_recbole" else [f"missrec_recbole.{a.name}" for a in node.names]
            found += [(name, node.lineno, node.col_offset == 0) for name in names]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno, node.col_offset == 0) for a in node.names if a.name.startswith("missrec_recbole")]
    return found


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "compat"  # the package itself only applies compat
    for rank, names in enumerate(LAYERS):
        if top in names:
            return rank
    raise AssertionError(f"{module}: not in any layer of tests/test_layers.py")


def _graph() -> dict[str, list[tuple[str, int, bool]]]:
    return {_module_name(path): _imports(path) for path in PACKAGE.rglob("*.py")}


def test_layers_point_down():
    upward = [f"{module}:{line} imports {target}" for module, imports in _graph().items() if module != "missrec_recbole"
              for target, line, _ in imports if _layer(target) > _layer(module)]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    graph = {module: {target for target, _, top_level in imports if top_level and target != module}
             for module, imports in _graph().items()}
    state, cycles = {}, []

    def visit(module, stack):
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            target = target if target in graph else target.rsplit(".", 1)[0]
            if target.startswith(module + ".") or target == module:
                continue  # a package importing its own modules
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, "\n".join(cycles)
