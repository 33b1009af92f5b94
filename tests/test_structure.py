"""The shape of the tree: the library never imports the command line, its imports have no cycle, each method owns its
facts in its own module, and the generated command line covers the config."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sm_jax"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The sm_jax modules `path` imports, at any depth of the file (function-level imports too; not those only type
    checkers see, under `if TYPE_CHECKING:`)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and getattr(block.test, "id", "") == "TYPE_CHECKING" for n in ast.walk(block)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("sm_jax")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sm_jax"):
            for a in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in modules else node.module)
    return out & modules


@pytest.fixture(scope="module")
def graph():
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: imports(p, set(files)) for m, p in files.items()}


def test_the_library_never_imports_the_command_line(graph):
    cli = lambda m: m == "sm_jax.cli" or m.startswith("sm_jax.cli.")  # noqa: E731
    assert [m for m, deps in graph.items() if not cli(m) and any(cli(d) for d in deps)] == []


def test_no_import_cycle(graph):
    # a module importing its own package's __init__ is how a package initialises, not a cycle
    edges = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(m, path):
        state[m] = 1
        for d in sorted(edges[m]):
            assert state.get(d) != 1, "import cycle: " + " -> ".join([*path[path.index(d):], d])
            if d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])


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
