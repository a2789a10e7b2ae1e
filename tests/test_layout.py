"""The house (docs/architecture.md): streamlm's modules sit in subpackages by layer, and
every module imports only modules of its own layer or of the layers below
(function-level imports included). A job never imports the CLI, the network never
imports a job, and nothing imports in a circle.

    streamlm/errors.py, options.py   foundations: what every layer uses
    streamlm/compute/                the machine: kernels, BLAS, threads, the plan
    streamlm/data/                   text and inputs in, token ids and files out
    streamlm/nn/                     the network: parameters, cells, heads, the model
    streamlm/jobs/                   prepare, train, score, query, report ...
    streamlm/cli/, api.py            the faces: the command line and the Python API
"""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "streamlm"

LAYERS = ["foundations", "compute", "data", "nn", "jobs", "faces"]
TOP = {"errors": "foundations", "options": "foundations", "version": "foundations",
       "api": "faces", "stream": "faces",
       "kenlm_config": "faces", "__init__": "faces", "__main__": "faces"}


def modules() -> dict[str, Path]:
    """Dotted module name (without ``streamlm.``) -> file, for every module."""
    out = {}
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG).with_suffix("")
        out[".".join(rel.parts)] = p
    return out


def layer_of(mod: str) -> str:
    head = mod.split(".")[0]
    if head == "cli":
        return "faces"
    if head in ("compute", "data", "nn", "jobs"):
        return head
    return TOP[head]


def imports_of(path: Path) -> set[str]:
    """The streamlm modules a file imports (dotted, without ``streamlm.``)."""
    known = set(modules())
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "streamlm" or node.module.startswith("streamlm."):
                base = node.module[len("streamlm."):] if node.module != "streamlm" else ""
                for a in node.names:
                    sub = f"{base}.{a.name}" if base else a.name
                    if sub in known:
                        out.add(sub)
                    elif base in known:
                        out.add(base)
                    elif f"{base}.__init__" in known or base == "":
                        out.add(f"{base}.__init__" if base else "__init__")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("streamlm."):
                    name = a.name[len("streamlm."):]
                    if name in known:
                        out.add(name)
    return out


def test_every_module_sits_in_a_layer():
    for mod in modules():
        assert layer_of(mod) in LAYERS, mod


def test_nothing_imports_a_higher_layer():
    bad = []
    for mod, path in sorted(modules().items()):
        for dep in imports_of(path):
            if LAYERS.index(layer_of(dep)) > LAYERS.index(layer_of(mod)):
                bad.append(f"{mod} ({layer_of(mod)}) imports {dep} ({layer_of(dep)})")
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
    """Modules of one layer may import each other, but never round in a circle (a
    package's __init__ re-exporting a module is not a cycle of code)."""
    graph = {m: imports_of(p) - {m} for m, p in modules().items()
             if not m.endswith("__init__")}
    graph = {m: {d for d in deps if not d.endswith("__init__")} for m, deps in graph.items()}
    assert cycles(graph) == []


def test_the_cycle_check_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_check_itself_sees_an_upward_import(tmp_path):
    f = tmp_path / "kernels.py"
    f.write_text("def f():\n    from streamlm.cli.app import app\n")
    assert imports_of(f) == {"cli.app"}
    assert LAYERS.index(layer_of("cli.app")) > LAYERS.index(layer_of("compute.kernels"))


def test_modules_stay_small():
    """About 500 lines at most; kernels.py is the exception (every @njit function
    lives in one module, because numba's cache does not see changes across modules)."""
    sizes = {m: len(p.read_text().splitlines()) for m, p in modules().items()}
    assert {m: n for m, n in sizes.items() if n > 520 and m != "compute.kernels"} == {}
