"""The package's shape: one top-level package, no file-level import cycles, the config only at the
command line, and no cross-file imports of private names (an AST scan of every module)."""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "scoresde"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: dict) -> list[tuple[str, list[str]]]:
    """``(module, [names])`` for each ``import`` / ``from ... import`` of a scoresde module in ``path``,
    at any depth (an import inside a function is still an edge). ``from pkg import sub`` counts as an
    import of ``pkg.sub`` when ``sub`` is a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.split(".")[0] == "scoresde"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "scoresde":
            names = [alias.name for alias in node.names]
            subs = [f"{node.module}.{n}" for n in names if f"{node.module}.{n}" in known]
            found += [(s, []) for s in subs]
            rest = [n for n in names if f"{node.module}.{n}" not in known]
            if rest or not subs:
                found.append((node.module, rest))
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    graph = {}
    for name, path in known.items():
        edges = set()
        for target, _ in imports(path, known):
            # importing a.b.c runs a/__init__ and a/b/__init__ first: edges to those too
            parts = target.split(".")
            edges |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)} & known.keys()
        edges.discard(name)
        # a package's own __init__ runs before its submodules: not an edge back from them
        graph[name] = {e for e in edges if not name.startswith(e + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_file_level_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_ml_collections_stays_at_the_command_line():
    users = sorted(name for name, path in modules().items()
                   if not name.startswith("scoresde.configs") and "ml_collections" in path.read_text()
                   and any(isinstance(n, (ast.Import, ast.ImportFrom)) and "ml_collections" in ast.dump(n)
                           for n in ast.walk(ast.parse(path.read_text()))))
    assert len(users) <= 3 and all(u.startswith("scoresde.cli") for u in users), users


def test_only_the_cli_reads_the_configs():
    readers = sorted(name for name, path in modules().items() if not name.startswith(("scoresde.configs", "scoresde.cli"))
                     and any(t.startswith("scoresde.configs") for t, _ in imports(path, modules())))
    assert readers == []


def test_no_mode_imports_another():
    known = modules()
    modes = [n for n in known if n.startswith("scoresde.cli.modes.")]
    crossing = [(m, t) for m in modes for t, _ in imports(known[m], known) if t in modes and t != m]
    assert crossing == []


def test_no_cross_file_private_imports():
    known = modules()
    private = [(name, target, n) for name, path in known.items() for target, names in imports(path, known)
               for n in names if n.startswith("_") and not n.startswith("__")]
    assert private == []


def test_the_wheel_installs_only_scoresde():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    setuptools = config["tool"]["setuptools"]
    assert setuptools["packages"]["find"]["include"] == ["scoresde*"]
    assert "py-modules" not in setuptools
    assert config["project"]["scripts"]["scoresde"] == "scoresde.cli.main:cli"


@pytest.mark.parametrize("mode", ["train", "eval", "sample", "fid"])
def test_every_mode_is_reachable_from_the_command_line(mode):
    from scoresde.cli.main import MODES
    assert mode in MODES


# The library's lower layers, bottom first: a module may import its own layer and those below, never one
# above (nor train / evaluate / run / data / cli, which sit above them all).
LAYERS = [{"utils"}, {"sde_lib"}, {"score", "integrate"}, {"models", "likelihood"}, {"samplers"}, {"distill"}]


def test_lower_layers_import_only_downward():
    level = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
    top = lambda name: name.split(".")[1] if "." in name else name  # noqa: E731
    upward = sorted((name, target) for name, targets in import_graph().items() if top(name) in level
                    for target in targets if level.get(top(target), len(LAYERS)) > level[top(name)])
    assert upward == []
