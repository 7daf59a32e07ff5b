"""The layer rules of docs/architecture.md, checked on the import graph of the source (function-local
imports included), so a violation fails CI before anyone notices it at run time:

1. ``edgecompress.runtime`` imports nothing of edgecompress but ``runtime`` and ``errors``;
2. nothing imports ``edgecompress.pipeline`` or ``edgecompress.cli`` except ``cli`` (and ``pipeline``
   itself), ``python -m edgecompress`` and the package root's ``compress()`` facade;
3. the base layers (errors, files, config, data, models, report, runtime) import no stage layer
   (export, prune, train, quantize);
4. no import cycles between modules;
5. no function-local imports between edgecompress modules (lazy imports are for third-party
   libraries; the root facade is exempt, so ``import edgecompress`` stays light).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "edgecompress"
FACADE = "edgecompress"  # edgecompress/__init__.py: compress() and load_pruned() import lazily
BASE = ("errors", "files", "config", "data", "models", "report", "runtime")
STAGE = ("export", "prune", "train", "quantize")


def _modules(root: Path) -> dict[str, Path]:
    pkg = root.name
    out = {}
    for p in root.rglob("*.py"):
        parts = p.relative_to(root).with_suffix("").parts
        name = ".".join((pkg, *parts[:-1])) if parts[-1] == "__init__" else ".".join((pkg, *parts))
        out[name] = p
    return out


def _imports(name: str, path: Path, known: set[str]) -> list[tuple[str, bool]]:
    """(imported edgecompress module, is it function-local) for every import statement."""
    pkg = name.split(".")[0]
    tree = ast.parse(path.read_text())
    local_nodes = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
                   for n in ast.walk(f)}
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for t in targets:
            if t == pkg or t.startswith(pkg + "."):
                while t not in known and "." in t:
                    t = t.rsplit(".", 1)[0]
                out.append((t, id(node) in local_nodes))
    return out


def _layer(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def violations(root: Path = ROOT) -> list[str]:
    mods = _modules(root)
    known = set(mods)
    pkg = root.name
    graph: dict[str, set[str]] = {m: set() for m in mods}
    found: list[str] = []
    for m, p in mods.items():
        for t, local in _imports(m, p, known):
            src, dst = _layer(m), _layer(t)
            if m == pkg and t in (pkg,):
                continue
            if local and m != pkg:
                found.append(f"function-local import of {t} in {m}")
            if src == "runtime" and dst not in ("runtime", "errors"):
                found.append(f"{m} (runtime) imports {t}")
            if dst in ("pipeline", "cli") and src not in ("cli", dst, "__main__") and m != pkg:
                found.append(f"{m} imports {t} ({dst} is imported only by cli)")
            if src in BASE and dst in STAGE:
                found.append(f"{m} (base layer {src}) imports {t} (stage layer {dst})")
            if not local and t != m:
                graph[m].add(t)
    found += [f"import cycle: {' -> '.join(c)}" for c in _cycles(graph)]
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps


def test_the_package_keeps_its_layer_rules():
    assert violations() == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "edgecompress"
    for rel, text in {"__init__.py": "", "errors.py": "", "runtime/__init__.py": "", "runtime/session.py": "",
                      "quantize/__init__.py": "", "quantize/ptq.py": "", "pipeline/__init__.py": "",
                      "cli/__init__.py": "", "config/__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_each_rule_catches_a_deliberate_violation(tmp_path):
    root = _tree(tmp_path, {
        "runtime/session.py": "from edgecompress.quantize import ptq\n",
        "quantize/ptq.py": "def f():\n    from edgecompress.errors import x\n",
        "config/__init__.py": "import edgecompress.pipeline\nfrom edgecompress.quantize.ptq import q\n",
    })  # fmt: skip
    found = violations(root)
    assert "edgecompress.runtime.session (runtime) imports edgecompress.quantize.ptq" in found
    assert "function-local import of edgecompress.errors in edgecompress.quantize.ptq" in found
    assert "edgecompress.config imports edgecompress.pipeline (pipeline is imported only by cli)" in found
    assert any("base layer config" in v for v in found)


def test_a_cycle_is_found(tmp_path):
    root = _tree(tmp_path, {"quantize/ptq.py": "from edgecompress.quantize import graph\n",
                            "quantize/graph.py": "from edgecompress.quantize.ptq import q\n"})
    assert violations(root) == ["import cycle: edgecompress.quantize.graph -> edgecompress.quantize.ptq"]


def test_modules_stay_readable():
    """No module over ~400 lines (the zoo's declarative definitions included)."""
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > 420}
    assert long == {}
