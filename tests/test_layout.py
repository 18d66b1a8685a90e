"""Facts about the code's layout that anyone can check (issue 22): no import circle among the
modules of train/ and transfer/, and the decode CLI does not import the evaluation package."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("train", "transfer")


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports anywhere in it (a function's body included): for
    `from a.b import c`, a.b.c where that is a module, else a.b."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in modules and target != name)
    return found


def test_no_import_circle_among_train_and_transfer_modules():
    modules = project_modules()
    assert "transfer.decode.engine" in modules and "train.pairing" in modules
    graph = {name: imports_of(path, name, modules) for name, path in modules.items()}
    assert "transfer.deltas" in graph["transfer.decode.engine"]  # the walk sees imports
    circles, state = [], {}

    def visit(module: str, stack: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                circles.append(" -> ".join(stack[stack.index(imported):] + [imported]))
            elif imported not in state:
                visit(imported, [*stack, imported])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_the_decode_cli_does_not_import_the_evaluation_package():
    code = ("import sys, transfer.generate; "
            "print([m for m in sys.modules if m.startswith('transfer.eval')])")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=300, check=True)
    assert result.stdout.strip() == "[]"
    modules = project_modules()
    direct = imports_of(modules["transfer.generate"], "transfer.generate", modules)
    assert "transfer.runlog" in direct
    assert not [name for name in direct if name.startswith("transfer.eval")]
