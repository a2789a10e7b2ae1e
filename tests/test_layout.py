"""The house: every module of streamlm imports only modules on its own floor or
below (function-level imports included), as the README's Layout table says.
A job never imports the CLI, and the core never imports a job."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "streamlm"

FLOORS = [
    {"errors", "atomic", "formats", "options", "metrics", "memory", "cpus"},  # foundations
    {"kernels", "numba_setup", "blas", "threads", "plan", "store", "text", "vocab",  # compute
     "subword", "classes", "buckets"},
    {"params", "heads", "cells", "model", "optim", "pipeline", "engines", "tokenizer",
     "shards", "batcher", "rows", "inputs", "manifest"},
    {"schedule", "records", "mix", "checkpoint", "outputs", "report", "plots",  # job parts
     "evaluation"},
    {"prepare", "train", "score", "generate", "distributed", "demo"},  # the jobs
    {"api", "query", "cli", "cli_tools", "console", "progress", "kenlm_config", "__init__",
     "__main__"},  # faces
]
FLOOR = {m: k for k, mods in enumerate(FLOORS) for m in mods}


def imports_of(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "streamlm":
                out |= {a.name for a in node.names if a.name in FLOOR}
            elif node.module.startswith("streamlm."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("streamlm.")}
    return out


def test_every_module_has_a_floor():
    assert {p.stem for p in PKG.glob("*.py")} == set(FLOOR)


def test_nothing_imports_upward():
    bad = []
    for p in sorted(PKG.glob("*.py")):
        for dep in imports_of(p):
            if FLOOR[dep] > FLOOR[p.stem]:
                bad.append(f"{p.stem} (floor {FLOOR[p.stem]}) imports {dep} (floor {FLOOR[dep]})")
    assert bad == []


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of a module graph (each as a path that returns to its start)."""
    found, state = [], {}

    def visit(m, path):
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                found.append(path[path.index(d):] + [d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return found


def test_no_import_cycles():
    """Modules of one floor may import each other, but never round in a circle."""
    graph = {p.stem: imports_of(p) - {p.stem} for p in PKG.glob("*.py")}
    assert cycles(graph) == []


def test_the_cycle_check_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_check_itself_sees_an_upward_import(tmp_path):
    f = tmp_path / "kernels.py"
    f.write_text("def f():\n    from streamlm.cli import app\n")
    assert imports_of(f) == {"cli"} and FLOOR["cli"] > FLOOR["kernels"]


def test_modules_stay_small():
    """About 500 lines at most; kernels.py is the exception (every @njit function
    lives in one module, because numba's cache does not see changes across modules)."""
    sizes = {p.stem: len(p.read_text().splitlines()) for p in PKG.glob("*.py")}
    assert {m: n for m, n in sizes.items() if n > 520 and m != "kernels"} == {}
