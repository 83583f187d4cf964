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
    pyproject = ROOT / "pyproject.toml"
    before = pyproject.read_bytes(), pyproject.stat().st_mtime_ns
    run = subprocess.run(["bash", str(ROOT / "scripts" / "docs.sh"), "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=3600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (pyproject.read_bytes(), pyproject.stat().st_mtime_ns) == before, \
        "the docs build rewrote pyproject.toml (scripts/setup.sh then reinstalls the package)"
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
    for name, page in pages.items():
        assert '{target="_blank"' not in page, f"{name} shows show_doc's Quarto link attributes as text"
        assert not re.search(r"\b(VBox|HBox)\(children=", page), f"{name} shows a widget's text repr instead of what it draws"
    for name in ("36_calibration.html", "60_array_viewer.html", "61_device_viewer.html"):   # widgets: the figure they show
        widget = re.search(r'An interactive widget in Jupyter, shown here as the notebook left it.*?(<img[^>]+src="data:image/png)', pages[name], re.S)
        assert widget, f"{name}: no static figure where the viewer widget is"
    _check_rendering(out / "00_backend.html", out / "61_device_viewer.html")
    # API docs: every exported function of the backend has its show_doc section, with its docments table
    backend = pages["00_backend.html"]
    for name in ("gpu_status", "get_array_module", "to_numpy", "available_cpus"):
        assert f'id="{name}"' in backend, f"no API section for {name}"
    assert "use_gpu" in backend and "run on a CUDA GPU" in backend
    # links between chapters point at pages that exist
    targets = {t for page in pages.values() for t in re.findall(r'href="([\w.-]+\.html)', page)}
    assert targets <= set(pages), f"links to missing pages: {sorted(targets - set(pages))}"
    print(f"{len(pages)} pages, {sum(p.stat().st_size for p in out.rglob('*') if p.is_file()) / 1e6:.1f} MB")


_PROBE = """<script>
window.addEventListener('load', () => {
  const blocks = [...document.querySelectorAll('#cs-content pre')];
  const content = document.querySelector('#cs-content').getBoundingClientRect();
  const clipped = blocks.filter(e => e.scrollWidth > e.clientWidth + 2 && !['auto', 'scroll'].includes(getComputedStyle(e).overflowX));
  const beyond = blocks.filter(e => e.getBoundingClientRect().right > content.right + 2);
  const images = [...document.querySelectorAll('#cs-content img')].filter(e => e.naturalWidth > 0);
  document.body.setAttribute('data-probe', JSON.stringify({blocks: blocks.length, clipped: clipped.length, beyond: beyond.length,
                                                           images: images.length}));
});
</script>"""


def _check_rendering(*pages):
    """Render pages in headless Chromium (when installed) as a reader's browser would, 1280 px wide: no code block is
    wider than its box without a scroll bar (long lines wrap), none runs past the content column, the figures load."""
    import shutil, html as html_module
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        print("(no chromium: pages not rendered)")
        return
    for page in pages:
        probe = page.with_name("probe_" + page.name)
        probe.write_text(page.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>", 1), encoding="utf-8")
        dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                              "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
        found = re.search(r'data-probe="([^"]*)"', dom)
        assert found, f"{page.name}: chromium rendered nothing ({dom[:200]!r})"
        result = json.loads(html_module.unescape(found[1]))
        assert result["blocks"] > 0 and result["images"] == page.read_text(encoding="utf-8").count("<img"), (page.name, result)
        assert result["clipped"] == 0 and result["beyond"] == 0, f"{page.name}: code lines cut off: {result}"
        probe.unlink()


NARRATIVE = [p.name for p in runner.narrative_notebooks()]


def test_narrative_notebooks_committed_with_outputs():
    "The chapters a reader opens on the code host show their results, and stay small."
    for name in ("57_tour.ipynb", "51_studies.ipynb", "60_array_viewer.ipynb", "21_units_and_physics.ipynb"):
        assert name in NARRATIVE, f"{name} is committed without outputs"
    chapters = sorted(p.name for p in (ROOT / "nbs").glob("*.ipynb") if p.name != "index.ipynb")
    bare = [name for name in chapters if name not in NARRATIVE]
    assert not bare, (f"chapters committed without their examples' outputs: {bare} "
                      "(python scripts/execute_notebooks.py --examples-only nbs/NAME)")
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
    executed = runner.execute(path, skip_flagged=not runner.executed_whole(committed), allow_errors=True)
    problems = runner.differences(committed, executed)
    assert not problems, f"{name} is out of sync (python scripts/execute_notebooks.py nbs/{name}):\n" + "\n".join(problems)


# --- the index, and notebooks that stay as committed ------------------------------------------------------------------
def test_index_links_every_chapter():
    "The index's chapter table links every notebook of nbs/ (a chapter added later must be added there too)."
    index = json.loads((ROOT / "nbs" / "index.ipynb").read_text())
    text = "".join("".join(cell["source"]) for cell in index["cells"] if cell["cell_type"] == "markdown")
    linked = set(re.findall(r"\]\(([\w.-]+\.ipynb)\)", text))
    chapters = {p.name for p in (ROOT / "nbs").glob("*.ipynb") if p.name != "index.ipynb" and not p.name.startswith(("_", "."))}
    assert not chapters - linked, f"chapters missing from nbs/index.ipynb: {sorted(chapters - linked)}"
    assert not linked - chapters, f"index links to notebooks that do not exist: {sorted(linked - chapters)}"


def test_nbdev_export_leaves_pyproject_alone(tmp_path, monkeypatch):
    """nbdev-export ends with `add_init`, which rewrites pyproject.toml (same text, new mtime) unless `update_pyproject`
    is false; scripts/setup.sh reinstalls the package whenever pyproject.toml is newer than its stamp."""
    from nbdev.config import add_init
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    (tmp_path / "crosssim_nb").mkdir()
    (tmp_path / "crosssim_nb" / "__init__.py").write_text('__version__ = "0.1.0"\n')
    (tmp_path / "crosssim_nb" / "core.py").write_text('"A module."\n')
    before = (tmp_path / "pyproject.toml").stat().st_mtime_ns
    monkeypatch.chdir(tmp_path)
    import time; time.sleep(0.01)
    add_init(tmp_path / "crosssim_nb")
    assert (tmp_path / "pyproject.toml").read_bytes() == (ROOT / "pyproject.toml").read_bytes()
    assert (tmp_path / "pyproject.toml").stat().st_mtime_ns == before, "pyproject.toml was rewritten"


_JUPYTERLAB_METADATA = {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
                        "language_info": {"codemirror_mode": {"name": "ipython", "version": 3}, "file_extension": ".py",
                                          "mimetype": "text/x-python", "name": "python", "nbconvert_exporter": "python",
                                          "pygments_lexer": "ipython3", "version": "3.11.9"}}


def _as_jupyterlab_leaves_it(nb: dict) -> dict:
    "A notebook as JupyterLab saves it after a session: its kernel's metadata, cell timings and view flags added."
    import copy
    nb = copy.deepcopy(nb)
    nb["metadata"].update(copy.deepcopy(_JUPYTERLAB_METADATA))
    for number, cell in enumerate(nb["cells"], start=1):
        cell["metadata"].update({"execution": {"iopub.execute_input": "2026-12-07T10:00:00.000Z", "shell.execute_reply": "2026-12-07T10:00:01.000Z"},
                                 "scrolled": True, "collapsed": False, "editable": True})
        if cell["cell_type"] == "code":
            cell["execution_count"] = number
            for output in cell.get("outputs", []):
                if "execution_count" in output: output["execution_count"] = number
    return nb


HYGIENE_NOTEBOOKS = ["index.ipynb", "60_array_viewer.ipynb", "61_device_viewer.ipynb"]


@pytest.mark.parametrize("name", HYGIENE_NOTEBOOKS)
def test_nbdev_clean_restores_the_committed_notebook(name, tmp_path):
    "A notebook with JupyterLab's metadata added is, after `nbdev-clean`, byte-identical to the committed one."
    import nbformat
    committed = ROOT / "nbs" / name
    copy = tmp_path / name
    nbformat.write(nbformat.from_dict(_as_jupyterlab_leaves_it(json.loads(committed.read_text()))), str(copy))
    assert copy.read_bytes() != committed.read_bytes()
    subprocess.run([str(ROOT / ".venv" / "bin" / "nbdev-clean"), "--fname", str(copy)], cwd=ROOT, check=True,
                   capture_output=True)
    assert copy.read_bytes() == committed.read_bytes()


def _save_hook():
    "The pre-save hook that scripts/jupyter_server_config.py gives Jupyter, loaded as Jupyter loads a config file."
    from traitlets.config.loader import PyFileConfigLoader
    config = PyFileConfigLoader("jupyter_server_config.py", path=str(ROOT / "scripts")).load_config()
    return config.ContentsManager.pre_save_hook


@pytest.mark.parametrize("name", HYGIENE_NOTEBOOKS)
def test_jupyterlab_save_leaves_notebook_as_committed(name, tmp_path):
    """JupyterLab saves through the server's contents manager; with the project's pre-save hook, a notebook saved after a
    session (kernel metadata, timings, view flags) is byte-identical to the committed file."""
    import nbformat
    from jupyter_server.services.contents.filemanager import FileContentsManager
    (tmp_path / "nbs").mkdir()
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    committed = ROOT / "nbs" / name
    (tmp_path / "nbs" / name).write_bytes(committed.read_bytes())
    manager = FileContentsManager(root_dir=str(tmp_path), pre_save_hook=_save_hook())
    def after_a_session(manager):
        model = manager.get(f"nbs/{name}")
        model["content"] = nbformat.from_dict(_as_jupyterlab_leaves_it(json.loads(json.dumps(model["content"]))))
        return model
    manager.save(after_a_session(manager), f"nbs/{name}")
    assert (tmp_path / "nbs" / name).read_bytes() == committed.read_bytes()
    # without the hook the same save leaves the notebook modified: the test sees what it claims to
    bare = FileContentsManager(root_dir=str(tmp_path))
    bare.save(after_a_session(bare), f"nbs/{name}")
    assert (tmp_path / "nbs" / name).read_bytes() != committed.read_bytes()


def test_setup_installs_the_save_hook():
    "scripts/setup.sh puts the hook where `.venv/bin/jupyter lab` reads its configuration."
    assert "scripts/jupyter_server_config.py .venv/etc/jupyter/jupyter_server_config.py" in (ROOT / "scripts" / "setup.sh").read_text()
    installed = Path(sys.prefix) / "etc" / "jupyter" / "jupyter_server_config.py"
    if Path(sys.prefix).resolve() == (ROOT / ".venv").resolve():
        assert installed.read_bytes() == (ROOT / "scripts" / "jupyter_server_config.py").read_bytes(), "run bash scripts/setup.sh"
