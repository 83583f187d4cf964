"""The package declares what it imports: a `pip install crosssim_nb` (no dev extra) must not miss a module."""
import ast, sys, tomllib
from importlib.metadata import packages_distributions
from pathlib import Path
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = {"cupy": "the gpu extra (use_gpu=True)", "pyarrow": "parquet copies of sweep tables, when installed",
            "threadpoolctl": "BLAS thread limits, when installed (else the OpenBLAS bundled with NumPy)",
            "torch": "the torch extra (AnalogNetwork.from_torch)"}

def _normal(name): return name.lower().replace("_", "-").replace(".", "-")

def imported_modules():
    "Top-level third-party modules imported anywhere in the package (function-level imports too) -> the files importing them."
    found = {}
    for path in sorted((ROOT / "crosssim_nb").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import): names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module: names = [node.module]
            else: continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("crosssim_nb", "__future__"): found.setdefault(top, set()).add(path.name)
    return found

def test_every_imported_module_is_a_declared_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = set()
    for line in project["dependencies"]:
        requirement = Requirement(line)
        declared |= {_normal(requirement.name)} | {_normal(extra) for extra in requirement.extras}   # dask[distributed] brings distributed
    distributions = packages_distributions()
    missing = {}
    for module, files in imported_modules().items():
        if module in OPTIONAL: continue
        names = {_normal(d) for d in distributions.get(module, [module])}
        if not names & declared: missing[module] = (sorted(names), sorted(files))
    assert not missing, f"imported but not in [project].dependencies of pyproject.toml (module: distributions, files): {missing}"
    assert {"numpy", "keras", "fastcore"} <= set(imported_modules())        # (the scan sees the package's imports)
