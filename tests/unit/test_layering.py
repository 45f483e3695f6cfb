"""The architecture's one rule, checked on every import of the project's own modules (top level and
inside functions alike, `if TYPE_CHECKING:` blocks included):

    sgpo.cli -> flows -> tasks -> {train, generate, llm, evals, report, data, models, prompts} -> core -> config -> artifacts

A module imports its own layer or the layers below it, never above; the domain packages may use one
another but never in a circle; no stage imports another stage; and no module imports itself back
through others (no import circle of modules)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOTS = ("sgpo", "artifacts", "tasks", "flows")
DOMAINS = ("train", "generate", "llm", "evals", "report", "data", "models", "prompts")
LAYERS = [
    ("artifacts",),
    ("sgpo.config",),
    ("sgpo.core",),
    tuple(f"sgpo.{d}" for d in DOMAINS),
    ("tasks",),
    ("flows",),
    ("sgpo.cli",),
]


def _modules() -> dict[str, Path]:
    out = {}
    for root in ROOTS:
        for path in (REPO / root).rglob("*.py"):
            out[
                ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            ] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module an import names (`from a.b import c`: the module a.b.c or a.b)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(path: Path) -> set[str]:
    """Every project module a file imports, wherever the import statement is."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import of {node.module}"
            names = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        out.update(m for n in names if (m := _resolve(n)))
    return out


GRAPH = {mod: _imports(path) - {mod} for mod, path in MODULES.items()}


def _unit(mod: str) -> str:
    """The package a module belongs to for layering: sgpo.<domain>, sgpo.core, tasks, ..."""
    for layer in LAYERS:
        for unit in layer:
            if mod == unit or mod.startswith(unit + "."):
                return unit
    raise AssertionError(f"{mod} belongs to no layer: add it to LAYERS or move it into a package")


def _layer(unit: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def test_every_module_belongs_to_a_layer():
    for mod in MODULES:
        if mod != "sgpo":
            _unit(mod)


def test_imports_go_down_the_layers_only():
    wrong = [
        f"{mod} -> {dep}"
        for mod, deps in GRAPH.items()
        if mod != "sgpo"
        for dep in deps
        if dep != "sgpo" and _layer(_unit(dep)) > _layer(_unit(mod))
    ]
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep] if dep in path else [node, dep]
            if dep not in state and (found := visit(dep, path + [dep])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [node])):
            return found
    return None


def test_no_import_circle_between_modules():
    cycle = _cycle(GRAPH)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_no_circle_between_domain_packages():
    units: dict[str, set[str]] = {}
    for mod, deps in GRAPH.items():
        if mod == "sgpo":
            continue
        units.setdefault(_unit(mod), set()).update(_unit(d) for d in deps if d != "sgpo")
    units = {u: deps - {u} for u, deps in units.items()}
    cycle = _cycle(units)
    assert cycle is None, "packages in a circle: " + " -> ".join(cycle or [])


def test_no_stage_imports_another_stage():
    for mod, deps in GRAPH.items():
        if mod.startswith("tasks.") and (
            sideways := sorted(d for d in deps if d.startswith("tasks"))
        ):
            raise AssertionError(
                f"{mod} imports {sideways}: what two stages share belongs in sgpo/"
            )


def test_the_stage_framework_imports_no_ml_library():
    """torch, transformers, trl, accelerate, peft, vllm, openai reach the framework only as hooks."""
    ml = (
        "torch",
        "transformers",
        "trl",
        "accelerate",
        "peft",
        "vllm",
        "openai",
        "datasets",
        "deepspeed",
    )
    for mod, path in MODULES.items():
        if mod.startswith("sgpo.core"):
            names = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names.add(node.module.split(".")[0])
            assert not names & set(ml), f"{mod} imports {sorted(names & set(ml))}"


def test_the_checker_sees_function_level_imports(tmp_path):
    """A circle hidden by an import inside a function is still a circle."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("import b\n")
    b.write_text("def f():\n    import a\n")
    global MODULES
    saved = MODULES
    try:
        MODULES = {"a": a, "b": b}
        graph = {m: _imports(p) - {m} for m, p in MODULES.items()}
    finally:
        MODULES = saved
    assert _cycle(graph) == ["a", "b", "a"]
