"""starft_cli's modules import each other without a cycle, function-level imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import starft_cli

PACKAGE = Path(starft_cli.__file__).parent


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the starft_cli modules it imports anywhere in its source (module level, in functions, under
    ``TYPE_CHECKING``). ``from PKG import NAME`` counts as an import of ``PKG.NAME`` when that is a module, else of
    ``PKG``. The implicit import of a module's parent packages is not an edge (it is no dependency of the module)."""
    modules = _modules()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(owner(alias.name) for alias in node.names if alias.name.startswith("starft_cli"))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if source.split(".")[0] != "starft_cli":
                    continue
                for alias in node.names:
                    full = f"{source}.{alias.name}"
                    targets.add(full if full in modules else owner(source))
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (``[a, b, ..., a]``), or None when the graph is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_sees_function_level_and_relative_imports() -> None:
    graph = import_graph()
    assert "starft_cli.zoo" in graph["starft_cli.models"]  # `from starft_cli import zoo` inside functions
    assert "starft_cli.train.text" in graph["starft_cli.train.bank"]  # inside encode_texts
    assert "starft_cli.runs" in graph["starft_cli.zoo.publish"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_bank_and_step_share_encode_text_through_text_module() -> None:
    from starft_cli.train import step, text

    assert step.encode_text is text.encode_text  # re-exported where it used to live
    graph = import_graph()
    assert "starft_cli.train.step" not in graph["starft_cli.train.bank"]


def test_zoo_recipes_name_their_builder_by_import_path() -> None:
    from starft_cli import demo
    from starft_cli.errors import ZooError
    from starft_cli.zoo import manifest
    from starft_cli.zoo.recipes import RECIPES, get_recipe

    assert manifest.RECIPES is RECIPES
    recipe = get_recipe("starft-demo")
    assert (recipe.folder, recipe.build, recipe.verify) == (
        demo.zero_shot_dir,
        demo.ensure_zero_shot,
        demo.verify_zero_shot,
    )
    assert "starft_cli.demo" not in import_graph()["starft_cli.zoo.hub"]
    with pytest.raises(ZooError) as raised:
        get_recipe("nope")
    assert raised.value.one_line() == "unknown recipe 'nope'. Locally built models: recipe:starft-demo"
