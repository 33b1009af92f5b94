"""The shape of the tree: the library never imports the command line, its imports have no cycle, each method owns its
facts in its own module, and the generated command line covers the config."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sm_jax"


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str], top: str) -> set[str]:
    """The modules of package `top` that `path` imports, at any depth of the file: function-level imports and those
    only type checkers see (`if TYPE_CHECKING:`) too, and each imported module's parent packages, whose __init__
    Python runs first (`from a.b.c import x` runs a.b's __init__)."""
    out = {m for m in imported(path, whole=True) if m.split(".")[0] == top}
    parents = {".".join(m.split(".")[:i]) for m in out for i in range(1, m.count(".") + 1)}
    return (out | parents) & modules


def import_graph(package: Path) -> dict[str, set[str]]:
    """module -> the modules of `package` it imports; a module's own parent packages left out (importing them is
    how a package initialises its modules, not a cycle)."""
    files = {module_name(p, package): p for p in package.rglob("*.py")}
    return {m: {d for d in imports(p, set(files), package.name) if d != m and not m.startswith(d + ".")}
            for m, p in files.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """An import cycle of the graph as the path a -> ... -> a, or None."""
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(m, path):
        state[m] = 1
        for d in sorted(edges[m]):
            if state.get(d) == 1:
                return [*path[path.index(d):], d]
            if d not in state and (found := visit(d, [*path, d])):
                return found
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (found := visit(m, [m])):
            return found
    return None


@pytest.fixture(scope="module")
def graph():
    return import_graph(PACKAGE)


def test_the_library_never_imports_the_command_line(graph):
    cli = lambda m: m == "sm_jax.cli" or m.startswith("sm_jax.cli.")  # noqa: E731
    assert [m for m, deps in graph.items() if not cli(m) and any(cli(d) for d in deps)] == []


def test_the_launcher_imports_no_jax():
    """experiments.launch only starts, watches and signals the processes of a run: nothing it runs imports JAX (a
    second or two of start and hundreds of MB on every host, for nothing). Followed: every import of the launcher's
    module, functions included (launch_main runs them), and the module-level imports of what those reach."""
    files = {module_name(p, PACKAGE): p for p in PACKAGE.rglob("*.py")}
    reached, todo = set(), [("sm_jax.cli.launch", True)]
    while todo:
        m, whole = todo.pop()
        if m in reached:
            continue
        reached.add(m)
        found = imported(files[m], whole)
        parents = {".".join(d.split(".")[:i]) for d in found | {m} for i in range(1, d.count(".") + 1)}
        todo += [(d, False) for d in found | parents if d in files]
        assert not {d.split(".")[0] for d in found} & {"jax", "jaxlib", "flax"}, m
    assert {"sm_jax.launch", "sm_jax.cli.parser", "sm_jax.errors", "sm_jax.lifecycle", "sm_jax"} <= reached


def imported(path: Path, whole: bool) -> set[str]:
    """The modules a file imports (`from a import b`: a.b and a): all of them, or (not `whole`) those its body runs
    on import, outside functions."""
    tree, out = ast.parse(path.read_text()), set()
    nodes = list(ast.walk(tree)) if whole else list(_outside_functions(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return out


def _outside_functions(node):
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield child
            yield from _outside_functions(child)


def test_no_import_cycle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("plant, cycle", [
    # a type-only import closes it
    ({"a.py": "from pkg import b", "b.py": "import typing\nif typing.TYPE_CHECKING:\n    from pkg.a import X"},
     ["pkg.a", "pkg.b", "pkg.a"]),
    # importing a package's submodule runs the package's __init__, which imports a module that imports back
    ({"low.py": "def f():\n    from pkg.sub.x import y", "sub/__init__.py": "from pkg.sub import z",
      "sub/x.py": "", "sub/z.py": "import pkg.low"}, ["pkg.low", "pkg.sub", "pkg.sub.z", "pkg.low"]),
    # no cycle: a module importing its own package and a sibling
    ({"__init__.py": "from pkg.a import f", "a.py": "import pkg\nfrom pkg import b", "b.py": ""}, None),
])
def test_the_cycle_check_finds_a_planted_cycle(tmp_path, plant, cycle):
    """The check itself, on a package planted in tmp_path: it must fail on a cycle, or it proves nothing."""
    pkg = tmp_path / "pkg"
    for name, text in {"__init__.py": "", **plant}.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text + "\n")
    assert find_cycle(import_graph(pkg)) == cycle


def test_each_method_owns_its_presets_in_its_module_and_the_registry_names_it():
    from sm_jax.methods import METHODS, PRESETS, Method

    assert {"dc", "dsa", "idc", "dm"} <= set(METHODS)
    for name, cls in METHODS.items():
        assert cls.__module__ == f"sm_jax.methods.{name}" and issubclass(cls, Method) and cls.name == name
        assert {"name", "paper_preset", "cpu_preset"} <= set(vars(cls)), name
        for preset in PRESETS:
            assert cls.preset(preset, 10, "cifar10")["iterations"] > 0
    assert METHODS["dsa"].match_policy and METHODS["idc"].match_policy and not METHODS["dc"].match_policy
    assert METHODS["dm"].match_policy == METHODS["dsa"].match_policy
