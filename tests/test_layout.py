"""The house: every module of streamlm imports only modules on its own floor or
below (function-level imports included), as the README's Layout table says.
A job never imports the CLI, and the core never imports a job."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "streamlm"

FLOORS = [
    {"errors", "atomic", "formats", "options", "metrics"},  # foundations
    {"kernels", "blas", "threads", "store", "text", "vocab", "subword",  # compute, reading
     "classes"},
    {"params", "heads", "model", "engines", "tokenizer", "shards", "batcher", "rows", "inputs"},
    {"schedule", "records", "mix", "checkpoint", "outputs", "report", "plots"},  # job parts
    {"prepare", "train", "score", "generate", "distributed", "demo"},  # the jobs
    {"api", "query", "cli", "console", "progress", "__init__", "__main__"},  # faces
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


def test_the_check_itself_sees_an_upward_import(tmp_path):
    f = tmp_path / "kernels.py"
    f.write_text("def f():\n    from streamlm.cli import app\n")
    assert imports_of(f) == {"cli"} and FLOOR["cli"] > FLOOR["kernels"]


def test_modules_stay_small():
    """About 500 lines at most; kernels.py is the exception (every @njit function
    lives in one module, because numba's cache does not see changes across modules)."""
    sizes = {p.stem: len(p.read_text().splitlines()) for p in PKG.glob("*.py")}
    assert {m: n for m, n in sizes.items() if n > 520 and m != "kernels"} == {}
