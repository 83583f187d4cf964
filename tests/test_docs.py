"""The documentation site builds offline, and the notebooks committed with outputs are in sync with the code (slow)."""
import json, re, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import execute_notebooks as runner   # noqa: E402


def _draws_figures(notebook: Path) -> bool:
    "A notebook whose (not notest/slow-flagged, or committed-output) code draws a matplotlib figure."
    nb = json.loads(notebook.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] != "code": continue
        if any("image/png" in o.get("data", {}) for o in cell.get("outputs", [])): return True
        source = "".join(cell["source"])
        if runner.flagged(cell) or "#| export" in source: continue
        if re.search(r"plt\.subplots|plt\.figure|\bplot_\w+\(|\.plot\(|\.hist\(", source): return True
    return False


@pytest.mark.slow
def test_docs_site_builds_offline(tmp_path):
    out = tmp_path / "site"
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_docs.py"), "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=3600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    notebooks = sorted((ROOT / "nbs").glob("*.ipynb"))
    assert any(p.name == "index.ipynb" for p in notebooks)
    pages = {p.name: p.read_text(encoding="utf-8") for p in out.glob("*.html")}
    missing = [nb.name for nb in notebooks if nb.stem + ".html" not in pages]
    assert not missing, f"notebooks without a page: {missing}"
    for name, page in pages.items():
        assert "example.invalid" not in page, f"{name} links to a fake host"
        leaves_site = re.search(r'(?:href|src)="\.\./', page)          # a relative link above the site's folder
        assert "DESIGN.md" not in page and not leaves_site, f"{name} points outside the repository"
    without_images = [nb.name for nb in notebooks if _draws_figures(nb) and not re.search(r'<img[^>]+src="data:image/png', pages[nb.stem + ".html"])]
    assert not without_images, f"pages of notebooks that draw figures but show none: {without_images}"
    # API docs: every exported function of the backend has its show_doc section, with its docments table
    backend = pages["00_backend.html"]
    for name in ("gpu_status", "get_array_module", "to_numpy", "available_cpus"):
        assert f'id="{name}"' in backend, f"no API section for {name}"
    assert "use_gpu" in backend and "run on a CUDA GPU" in backend
    # links between chapters point at pages that exist
    targets = {t for page in pages.values() for t in re.findall(r'href="([\w.-]+\.html)', page)}
    assert targets <= set(pages), f"links to missing pages: {sorted(targets - set(pages))}"
    print(f"{len(pages)} pages, {sum(p.stat().st_size for p in out.rglob('*') if p.is_file()) / 1e6:.1f} MB")


NARRATIVE = [p.name for p in runner.narrative_notebooks()]


def test_narrative_notebooks_committed_with_outputs():
    "The chapters a reader opens on the code host show their results, and stay small."
    for name in ("31_tour.ipynb", "32_studies.ipynb", "51_array_viewer.ipynb", "015_units_and_physics.ipynb"):
        assert name in NARRATIVE, f"{name} is committed without outputs"
    for name in NARRATIVE:
        path = ROOT / "nbs" / name
        assert path.stat().st_size < 1_000_000, f"{name} is {path.stat().st_size / 1e6:.1f} MB"
        nb = json.loads(path.read_text())
        errors = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"{name} was committed with an error output"


@pytest.mark.slow
@pytest.mark.parametrize("name", NARRATIVE)
def test_committed_outputs_in_sync(name):
    """Re-executing the notebook gives the same kinds of outputs cell by cell (an image stays an image), equal tables and
    printed text (timings masked), and no error. Refresh with `python scripts/execute_notebooks.py nbs/NAME`."""
    path = ROOT / "nbs" / name
    committed = json.loads(path.read_text())
    executed = runner.execute(path, skip_flagged=False, allow_errors=True)
    problems = runner.differences(committed, executed)
    assert not problems, f"{name} is out of sync (python scripts/execute_notebooks.py nbs/{name}):\n" + "\n".join(problems)
