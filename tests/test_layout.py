"""The layout rules: engine stages import only downward and never in circles; ``operators/`` holds operators;
the README's layout table names what is in the tree.

The engine is one package per stage. A module may import modules of its own stage and of lower stages, never
of a higher stage and never of another stage with the same rank. ``engine/__init__.py`` (the version) and
``engine/errors.py`` (the exception types every stage raises) are the base that all stages share;
``engine/__main__.py`` belongs to the app stage. Imports are read with :mod:`ast` from every ``.py`` file under
``engine/``, including imports inside functions and ``TYPE_CHECKING`` blocks: a late import is still a
dependency.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Low → high. One tuple per rank; stages of one rank must not import each other.
STAGES: tuple[tuple[str, ...], ...] = (
    ("io",),  # atomic files, JSON configs, images, JSON-line events, safetensors + JSON helpers
    ("pack",),  # the embedded model pack and its API (paths, manifest verification)
    ("mesh",),  # marching cubes, vertex colours, PLY/OBJ/NPZ (engine/mesh.py)
    ("generator",),  # the tri-grid generator, its checkpoints and inference
    ("guidance",),  # diffusers guidance (SD 1.5 + ControlNets)
    ("distill",),  # the distillation maths
    ("world",),  # the procedural head world the pack is trained on
    ("stylize",),  # the training loop
    ("evaluate", "heads"),  # identity/style metrics + recognition; scans → W+ latents, glb
    ("styles",),  # approved, versioned styles for production (library, verification)
    ("app",),  # command line, one-head pipeline, batch, demo
)
RANK = {stage: rank for rank, names in enumerate(STAGES) for stage in names}
BASE = {"engine", "engine.errors"}  # shared by every stage
ENTRY = {"engine.__main__": "app"}


def engine_modules(root: Path) -> dict[str, Path]:
    """Dotted module name → file, for every module of the ``engine`` package under ``root``."""
    modules = {}
    for path in sorted((root / "engine").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def engine_imports(root: Path) -> dict[str, list[tuple[int, str]]]:
    """Module → [(line, imported engine module)], relative imports resolved; ``from p import m`` means the
    module ``p.m`` when that is a module, else ``p``."""
    modules = engine_modules(root)
    result: dict[str, list[tuple[int, str]]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                found += [(node.lineno, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1])
                    target = f"{base}.{node.module}" if node.module else base
                else:
                    target = node.module or ""
                subs = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in modules]
                found += [(node.lineno, sub) for sub in subs] or [(node.lineno, target)]
        result[name] = [(line, target) for line, target in found if target == "engine" or target.startswith("engine.")]
    return result


def stage_of(module: str) -> str | None:
    """The stage a module belongs to, ``"base"`` for the shared root modules, None when unknown."""
    if module in BASE:
        return "base"
    if module in ENTRY:
        return ENTRY[module]
    top = module.split(".")[1]
    return top if top in RANK else None


def stage_violations(root: Path) -> list[str]:
    problems = []
    for module, imports in engine_imports(root).items():
        source = stage_of(module)
        if source is None:
            continue  # reported by test_every_engine_module_belongs_to_a_stage
        for line, target in imports:
            wanted = stage_of(target)
            if wanted == "base" or wanted == source:
                continue
            if source == "base":
                problems.append(f"{module}:{line}: the shared base imports {target} (stage {wanted!r})")
            elif wanted is None or RANK[wanted] >= RANK[source]:
                problems.append(f"{module}:{line}: stage {source!r} imports {target} (stage {wanted!r}, not lower)")
    return sorted(set(problems))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (or a self-loop), by Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def import_cycles(root: Path) -> dict[str, list[list[str]]]:
    """Import circles between engine modules and between engine stages."""
    imports = engine_imports(root)
    module_graph = {m: {t for _, t in targets if t != m and t in imports} for m, targets in imports.items()}
    # a package's __init__ importing its own submodules is how re-exports work, not a circle
    module_graph = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in module_graph.items()}
    stage_graph: dict[str, set[str]] = {}
    for module, targets in imports.items():
        source = stage_of(module)
        for _, target in targets:
            wanted = stage_of(target)
            if source and wanted and source != wanted:
                stage_graph.setdefault(source, set()).add(wanted)
    return {"modules": _cycles(module_graph), "stages": _cycles(stage_graph)}


# ---------------------------------------------------------------------------------------------------
def test_every_engine_module_belongs_to_a_stage():
    unknown = [m for m in engine_modules(REPO) if stage_of(m) is None]
    assert not unknown, f"modules outside every stage (add their package to STAGES): {unknown}"


def test_no_engine_module_imports_a_higher_stage():
    assert stage_violations(REPO) == []


def test_no_import_circles_between_engine_modules_or_stages():
    assert import_cycles(REPO) == {"modules": [], "stages": []}


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checks_find_upward_imports_and_circles(tmp_path):
    _write(tmp_path, {
        "engine/__init__.py": "",
        "engine/errors.py": "",
        "engine/io/__init__.py": "",
        "engine/io/atomic.py": "from ..errors import X\n",
        "engine/distill/__init__.py": "from .rank import r\n",
        "engine/distill/rank.py": "from .gradients import g\n",
        "engine/distill/gradients.py": "def f():\n    from .rank import r\n",
        "engine/stylize/__init__.py": "",
        "engine/stylize/loop.py": "from ..distill import x\nfrom ..io import atomic\n",
        "engine/heads/__init__.py": "",
        "engine/heads/scans.py": "from ..mesh import Mesh\n",
        "engine/mesh.py": "",
        "engine/evaluate/__init__.py": "",
        "engine/evaluate/metrics.py": "",
    })
    assert stage_violations(tmp_path) == []
    cycles = import_cycles(tmp_path)
    assert cycles["modules"] == [["engine.distill.gradients", "engine.distill.rank"]] and cycles["stages"] == []

    _write(tmp_path, {"engine/io/atomic.py": "def late():\n    from ..stylize.loop import run\n"})
    problems = stage_violations(tmp_path)
    assert problems == ["engine.io.atomic:2: stage 'io' imports engine.stylize.loop (stage 'stylize', not lower)"]
    assert import_cycles(tmp_path)["stages"] == [["io", "stylize"]]

    _write(tmp_path, {"engine/io/atomic.py": "", "engine/heads/scans.py": "import engine.evaluate.metrics\n"})
    assert stage_violations(tmp_path) == [
        "engine.heads.scans:1: stage 'heads' imports engine.evaluate.metrics (stage 'evaluate', not lower)"
    ]
    _write(tmp_path, {"engine/heads/scans.py": "", "engine/extra.py": "from .errors import X\n"})
    assert [m for m in engine_modules(tmp_path) if stage_of(m) is None] == ["engine.extra"]


# ---------------------------------------------------------------------------------------------------
def _operator_classes(path: Path) -> list[str]:
    def is_operator(base: ast.expr) -> bool:
        return (isinstance(base, ast.Attribute) and base.attr == "Operator") or (
            isinstance(base, ast.Name) and base.id == "Operator")

    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef) and any(map(is_operator, node.bases))]


def test_operators_hold_only_operator_modules_and_nothing_else_defines_one():
    modules = [p for p in sorted((REPO / "operators").glob("*.py")) if p.name != "__init__.py"]
    assert modules
    assert [p.name for p in modules if not _operator_classes(p)] == []
    elsewhere = [p for folder in ("bridge", "panels") for p in sorted((REPO / folder).glob("*.py"))]
    elsewhere += [REPO / "__init__.py"]
    assert {p.relative_to(REPO).as_posix(): _operator_classes(p) for p in elsewhere if _operator_classes(p)} == {}


# ---------------------------------------------------------------------------------------------------
def _layout_table_paths() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [path for row in rows for path in re.findall(r"`([^`]+)`", row.split(" | ")[0])]


def test_readme_layout_table_names_what_is_in_the_tree():
    listed = _layout_table_paths()
    missing = [p for p in listed if not (REPO / p).exists()]
    assert not missing, f"README layout table names paths that do not exist: {missing}"
    engine = REPO / "engine"
    wanted = [f"engine/{p.name}/" for p in sorted(engine.iterdir()) if (p / "__init__.py").is_file()]
    wanted += [f"engine/{p.name}" for p in sorted(engine.glob("*.py"))]
    wanted += [f"{name}/" for name in ("operators", "panels", "bridge", "tests", "bench", "scripts", "scripts/pack")]
    wanted += ["__init__.py", "blender_manifest.toml"]
    assert [p for p in wanted if p not in listed] == [], "README layout table misses these"
