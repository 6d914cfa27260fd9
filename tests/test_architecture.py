"""The tree shows the architecture: the import rules of pyproject.toml hold (import-linter), no
module imports itself round a cycle, no package is a corridor of more than 12 modules, and
docs/architecture.md's table names exactly the modules the tree has."""
import re
import subprocess
import sys
from pathlib import Path

import grimp
import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dfcl", "flows", "tasks", "models")


def test_the_import_layers_of_pyproject_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 kept, 0 broken" in done.stdout


def test_no_import_cycle():
    graph = grimp.build_graph(*PACKAGES, cache_dir=None, exclude_type_checking_imports=True)
    edges = nx.DiGraph()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            # a package's __init__ re-exporting its own modules is not a cycle of the design
            if not imported.startswith(module + "."):
                edges.add_edge(module, imported)
    cycles = [sorted(c) for c in nx.strongly_connected_components(edges) if len(c) > 1]
    assert cycles == []


def _modules(folder: Path) -> set[str]:
    """A package's own modules and subpackages, as the table names them (`web/`, `plugins/`)."""
    names = {p.stem for p in folder.glob("*.py") if p.name != "__init__.py"}
    names |= {f"{p.name}/" for p in folder.iterdir() if p.is_dir() and not p.name.startswith("__")}
    return names


def test_no_package_has_more_than_12_modules_at_its_top():
    for folder in [ROOT / "dfcl", *sorted(p for p in (ROOT / "dfcl").rglob("*") if (p / "__init__.py").is_file())]:
        modules = {m for m in _modules(folder) if not m.endswith("/")}
        assert len(modules) <= 12, f"{folder.relative_to(ROOT)}: {len(modules)} modules"


def test_the_architecture_table_names_the_tree():
    text = (ROOT / "docs" / "architecture.md").read_text()
    rows = dict(re.findall(r"^\| `(dfcl/[a-z_/]*)` \| (.*) \|$", text, re.M))
    packages = {"dfcl/"} | {f"dfcl/{p.name}/" for p in (ROOT / "dfcl").iterdir()
                            if (p / "__init__.py").is_file()}
    assert set(rows) == packages
    for package, cell in rows.items():
        named = set(re.findall(r"`([a-z_]+/?)`(?: \(|,|$)", cell))
        tree = _modules(ROOT / package)
        if package == "dfcl/":
            tree -= {f"{p}/" for p in ("data", "learning", "measure", "ops", "serving")}
        assert named == tree, f"{package}: the table names {sorted(named - tree)} that are not there, " \
                              f"and not {sorted(tree - named)}"
