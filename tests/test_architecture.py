"""The shape of the code: layers that only point down, and no import cycles, read from the
source of edged/ (function-level imports included: a lazy import is still a dependency; those
under ``if TYPE_CHECKING:`` are not, since they never run).
docs/architecture.md describes the layers; a new top-level module or package must be placed
in one here."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "edged"

LAYERS: list[set[str]] = [
    # the shared base: configuration loading, logs, notify, files, the parts protocol, images
    {"edged", "edged.config", "edged.logs", "edged.notify", "edged.files", "edged.parts", "edged.images"},
    {"edged.models"},                      # model packages at run time
    {"edged.engine", "edged.capture"},     # the leaves: they know nothing of bus, agent or cli
    {"edged.bus"},
    {"edged.agent", "edged.client", "edged.mqtt", "edged.http"},
    # the top: the settings joined, the lifecycle, the commands, and the tools
    {"edged.settings", "edged.preflight", "edged.service", "edged.commands", "edged.cli", "edged.__main__",
     "edged.recipe", "edged.bench"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(part for part in parts if part != "__init__")


def imports() -> dict[str, set[str]]:
    """Each module of edged/ and the edged modules it imports."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            else:
                continue
            graph[name] |= {target for target in targets if target in modules and target != name}
    return graph


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            yield from (child for orelse in node.orelse for child in _runtime_nodes_of(orelse))
            continue
        yield node
        yield from _runtime_nodes(node)


def _runtime_nodes_of(node: ast.AST):
    yield node
    yield from _runtime_nodes(node)


def component(module: str) -> str:
    return ".".join(module.split(".")[:2])


def layer_of(module: str) -> int:
    for index, layer in enumerate(LAYERS):
        if component(module) in layer:
            return index
    raise AssertionError(f"{component(module)} is in no layer: place it in LAYERS (and docs/architecture.md)")


def test_every_import_points_down_or_within_its_layer() -> None:
    upward = [f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
              for module, targets in sorted(imports().items()) for target in sorted(targets)
              if layer_of(target) > layer_of(module)]
    assert not upward, "\n".join(upward)


def test_there_are_no_import_cycles() -> None:
    graph = imports()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph.get(module, ()):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            members = []
            while True:
                member = stack.pop()
                members.append(member)
                if member == module:
                    break
            if len(members) > 1:
                cycles.append(sorted(members))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(cycle) for cycle in cycles)


def test_the_graph_is_read_from_the_source() -> None:
    graph = imports()  # a reader that found nothing would pass the tests above
    assert "edged.engine.engine" in graph["edged.agent.agent_part"]
    assert "edged.config.loader" in graph["edged.config"]  # a package's own relative import
    assert len(graph) > 50
    assert "edged.engine.generation" in graph["edged.engine.engine"]
    assert "edged.engine.engine" not in graph["edged.engine.generation"]  # only for type checkers
