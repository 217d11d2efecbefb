"""The package's import structure, read from the source with ``ast`` (nothing is imported): every module sits in a
layer and imports only from its own layer or lower ones, and no two modules import each other, directly or round a
longer loop. Imports inside functions count: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import REPO

PACKAGE = REPO / "ds_kronos"

LAYERS = {
    # 0: plumbing every module may use
    "ds_kronos": 0, "errors": 0, "console": 0, "atomic": 0, "jsonio": 0, "plotting": 0, "shm_buffers": 0,
    "memory_usage": 0,
    # 0 too: the option groups and renamed options that the option system (config, layer 1) builds parsers from
    "option_groups": 0,
    # 1: the option system, the scripts' error handling, the models, the view of a DeepSpeed JSON, the LoRA/freeze
    # rules over a model
    "config": 1, "cli": 1, "model": 1, "deepspeed_json": 1, "adapters": 1,
    # 2: market data and the process runtime
    "data": 2, "runtime": 2,
    # 3: forecasting
    "forecast": 3,
    # 4: evaluation (over forecasting)
    "evaluation": 4,
    # 5: the training and planning jobs, which use all of the above and not each other
    "train": 5, "plan": 5,
    # 6: what launches training jobs: sweeps (they read the train config and the files a run writes) and the
    # container entrypoint (it forwards the signals training saves on)
    "sweep": 6, "entrypoint": 6,
}
"""Above layer 0, two packages of one layer are siblings: neither imports the other."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the ds_kronos modules it imports (``from ds_kronos.x import y`` names ``ds_kronos.x.y`` when y is a
    module, else ``ds_kronos.x``)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.split(".")[0] == "ds_kronos")
            elif isinstance(node, ast.ImportFrom):
                assert not node.level, f"{name}: a relative import (the package imports by absolute names)"
                base = node.module or ""
                if base.split(".")[0] != "ds_kronos":
                    continue
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in files else base)
        graph[name] = {t for t in targets if t != name}
    return graph


def top_level(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def layer(module: str) -> int:
    top = top_level(module)
    assert top in LAYERS, f"{module}: give ds_kronos/{top} a layer in tests/test_import_layers.py::LAYERS"
    return LAYERS[top]


def test_no_module_imports_from_a_higher_layer_or_a_sibling():
    wrong = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
             for a, targets in sorted(import_graph().items()) for b in sorted(targets)
             if layer(b) > layer(a) or (layer(b) == layer(a) > 0 and top_level(a) != top_level(b))]
    assert not wrong, "\n".join(wrong)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_two_modules_import_each_other():
    assert not cycles(import_graph())


TRAIN_TOP = {"config", "tasks", "position", "step", "inputs", "context", "build", "trainer"}
"""The modules at the top of ds_kronos/train: the job's options, the task, the run's position, the micro-step, the
inputs, the frozen run context, the set-up and the loop. Everything else sits in a subpackage with one job."""
TRAIN_COMPONENTS = {"checkpoint": "checkpointer", "control": "run_control", "observe": "observer",
                    "validation": "validator", "engine": "build"}
"""Each subpackage of ds_kronos/train and its one entry point (docs/architecture.md)."""
TRAIN_ASSEMBLY = {"ds_kronos.train.build", "ds_kronos.train.trainer"}
"""Where the components meet: the set-up that builds them and the loop that calls them (the run context names
what the engine's set-up built, a type only)."""


def test_the_training_job_is_a_few_subpackages_whose_components_meet_only_in_the_loop():
    graph = import_graph()
    train = {m for m in graph if m.startswith("ds_kronos.train.")}
    stray = sorted(m for m in train if m.split(".")[2] not in TRAIN_TOP | set(TRAIN_COMPONENTS))
    assert not stray, f"put these in a subpackage of ds_kronos/train (or name them in TRAIN_TOP): {stray}"
    entry_points = {f"ds_kronos.train.{package}.{module}" for package, module in TRAIN_COMPONENTS.items()}
    assert entry_points <= set(graph), sorted(entry_points - set(graph))
    wrong = [f"{a} imports {b}" for a in sorted(graph) for b in sorted(graph[a])
             if (b in entry_points and a not in TRAIN_ASSEMBLY | {"ds_kronos.train.context"}
                 and a.rsplit(".", 1)[0] != b.rsplit(".", 1)[0])
             or (b in TRAIN_ASSEMBLY and a not in TRAIN_ASSEMBLY and b != "ds_kronos.train.trainer")
             or (b == "ds_kronos.train.trainer" and a.startswith("ds_kronos.train."))]
    assert not wrong, "\n".join(wrong)


def test_the_checks_see_a_planted_cycle_and_an_upward_import():
    graph = import_graph()
    graph["ds_kronos.data.verify"] = graph["ds_kronos.data.verify"] | {"ds_kronos.train.trainer"}
    assert any("ds_kronos.data.verify" in c and "ds_kronos.train.trainer" in c for c in cycles(graph))
    assert layer("ds_kronos.data.verify") < layer("ds_kronos.train.trainer")


def test_every_module_imports():
    """The launch scripts import the jobs only after their arguments are checked, so a broken import would otherwise
    first show in a launched run (the slow lane): import every module here."""
    import importlib

    failed = []
    for name in sorted(import_graph()):
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, whatever its kind
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
    assert not failed, "\n".join(failed)
