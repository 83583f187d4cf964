"""Build the documentation site into `_docs/` from the notebooks in `nbs/`, offline.

With Quarto on the PATH (or in `.venv/bin`, e.g. from `pip install -e ".[docs]"` on a machine with internet) this is
`nbdev-docs`. Without it, the same nbdev processing runs (front matter, `show_doc` API sections for every exported
symbol, hidden cells and directives removed) and nbconvert renders each processed notebook, with its committed
outputs (figures embedded as PNG, tables as HTML) — notebooks committed without outputs are executed first, cells
flagged `notest`/`slow` skipped — to one static HTML page; `index.html` comes from `nbs/index.ipynb`
and every page carries a sidebar of all chapters. Nothing is fetched from the network. A page has no kernel, so a
widget is shown as the notebook left it: its controls' values, then the figures and tables its Output widgets hold
(from the widget state saved with the notebook). show_doc's `[source]` links (they need a git host) are dropped, and
long code lines wrap. pyproject.toml is left as it was (content and modification time).

    python scripts/build_docs.py [--out _docs] [--engine auto|quarto|nbconvert]
"""
from __future__ import annotations
import argparse, ast, html, os, re, shutil, subprocess, sys, warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quarto_path():
    "The Quarto executable, or None."
    local = ROOT / ".venv" / "bin" / "quarto"
    return str(local) if local.exists() else shutil.which("quarto")


def _imports_only(trees):
    return all(isinstance(tree, (ast.Import, ast.ImportFrom)) for tree in trees)


def _strict_do_eval(cell):
    "nbdev's rule for which cells run while documenting, minus cells that mix imports with other code."
    from nbdev.processors import cell_lang
    if cell_lang(cell) != "python" or not cell.source or "nbdev_export" + "()" in cell.source: return
    trees = cell.parsed_()
    if cell.cell_type != "code" or not trees: return
    if cell.directives_.get("eval", "").lower() == "false": return
    if cell.directives_.keys() & {"export", "exports", "exporti", "exec_doc"}: return True
    if _imports_only(trees): return True
    return "show_doc" in cell.source and not cell.directives_.keys() & {"notest", "slow"}


def notebooks():
    "The notebooks of the site, in reading order (index first)."
    found = sorted(p for p in (ROOT / "nbs").glob("*.ipynb") if not p.name.startswith(("_", ".")))
    return sorted(found, key=lambda p: (p.name != "index.ipynb", p.name))


def page_name(notebook: Path) -> str:
    return notebook.stem + ".html"


def _title(nb):
    "Title and summary from the processed notebook's front matter (a raw `---` cell)."
    import yaml
    for cell in nb.cells:
        if cell.cell_type == "raw" and cell.source.lstrip().startswith("---"):
            try: meta = yaml.safe_load(cell.source.strip().strip("-")) or {}
            except yaml.YAMLError: meta = {}
            return meta.get("title", ""), meta.get("description", ""), cell
    return "", "", None


def process(notebook: Path, cwd: Path):
    "The notebook as nbdev prepares it for docs: show_doc sections executed, hidden/export-only cells dropped."
    import nbdev.processors as processors
    from nbdev.processors import FilterDefaults
    from fastcore.nbio import read_nb
    processors._do_eval = _strict_do_eval
    nb = read_nb(notebook)
    os.environ["IN_TEST"] = "1"
    before = os.getcwd(); os.chdir(cwd)
    try: FilterDefaults()(nb)
    finally: os.chdir(before); os.environ.pop("IN_TEST", None)
    return nb


STYLE = """
<style>
body { margin: 0; }
#cs-sidebar { position: fixed; top: 0; left: 0; bottom: 0; width: 15rem; overflow-y: auto; padding: 1rem;
  background: #f6f7f9; border-right: 1px solid #ddd; font: 14px/1.4 system-ui, sans-serif; }
#cs-sidebar a { display: block; padding: 2px 0; color: #1a4f8b; text-decoration: none; }
#cs-sidebar a.current { font-weight: bold; color: #000; }
#cs-content { margin-left: 17rem; max-width: 62rem; padding: 1rem 1.5rem; }
#cs-content h1.cs-title { margin-bottom: 0.2rem; }
#cs-content p.cs-summary { font-size: 1.1rem; color: #555; margin-top: 0; }
#cs-content p.cs-widget-note { color: #555; font-size: 0.9rem; margin: 0.2rem 0; }
/* long lines wrap instead of running under the page's edge: code, printed output, API signatures */
#cs-content pre { white-space: pre-wrap; overflow-wrap: anywhere; }
#cs-content .jp-RenderedHTMLCommon table { display: block; max-width: 100%; overflow-x: auto; }
</style>
"""


def _sidebar(pages, current):
    links = "".join(f'<a href="{html.escape(name)}"{" class=current" if name == current else ""}>{html.escape(title)}</a>'
                    for name, title in pages)
    return f'<nav id="cs-sidebar"><a href="index.html"><b>crosssim_nb</b></a><hr>{links}</nav>'


_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
_SOURCE_LINK = re.compile(r'\[source\]\([^)]*\)\{target="_blank"[^}]*\}\s*')


def _without_source_links(markdown: str) -> str:
    "show_doc's `[source](URL){target=...}` line (Quarto link attributes; the URL needs a git host) removed."
    return _SOURCE_LINK.sub("", markdown)


def _widget_as_static(model_id: str, state: dict) -> list:
    """The outputs that stand for a widget on a page without a kernel: its controls' values as a line of text, its HTML
    parts, and the figures and tables its Output widgets hold, from the widget state saved with the notebook."""
    controls, outputs, seen = [], [], set()
    def visit(ref):
        key = ref[len("IPY_MODEL_"):] if isinstance(ref, str) and ref.startswith("IPY_MODEL_") else ref
        if key in seen or key not in state: return
        seen.add(key)
        model = state[key].get("state", {})
        name = state[key].get("model_name", "")
        if name == "OutputModel": outputs.extend(model.get("outputs", []))
        elif name == "HTMLModel" and model.get("value"):
            outputs.append({"output_type": "display_data", "metadata": {}, "data": {"text/html": model["value"]}})
        elif "_options_labels" in model and model.get("index") is not None:
            controls.append(f"{model.get('description') or 'value'}: {model['_options_labels'][model['index']]}")
        elif name in ("TextModel", "IntTextModel", "FloatTextModel", "BoundedIntTextModel", "BoundedFloatTextModel",
                      "IntSliderModel", "FloatSliderModel", "FloatLogSliderModel", "CheckboxModel"):
            controls.append(f"{model.get('description') or 'value'}: {model.get('value')}")
        for child in model.get("children", []): visit(child)
    visit(model_id)
    line = html.escape(" · ".join(controls))
    note = ('<p class="cs-widget-note"><i>An interactive widget in Jupyter, shown here as the notebook left it'
            + (f" ({line})" if line else "") + ".</i></p>")
    return [{"output_type": "display_data", "metadata": {}, "data": {"text/html": note}}] + outputs


def _static_outputs(outputs: list, state: dict) -> list:
    "Cell outputs fit for a static page: widgets replaced by what they show, show_doc's source links removed."
    static = []
    for output in outputs:
        data = output.get("data", {})
        if _WIDGET_VIEW in data:
            model_id = data[_WIDGET_VIEW].get("model_id")
            static.extend(_widget_as_static(model_id, state) if model_id in state else
                          [{"output_type": "display_data", "metadata": {},
                            "data": {"text/html": '<p class="cs-widget-note"><i>An interactive widget: run the notebook in Jupyter to use it.</i></p>'}}])
            continue
        if "text/markdown" in data:
            text = data["text/markdown"]
            text = "".join(text) if isinstance(text, list) else text
            output = dict(output, data=dict(data, **{"text/markdown": _without_source_links(text)}))
        static.append(output)
    return static


_CELL_KEYS = {"markdown": {"cell_type", "id", "metadata", "source", "attachments"},
              "raw": {"cell_type", "id", "metadata", "source", "attachments"},
              "code": {"cell_type", "id", "metadata", "source", "outputs", "execution_count"}}


def _clean(nb):
    "A valid nbformat notebook: nbdev's bookkeeping keys dropped, `#|` directives out of the source, `echo: false` inputs hidden."
    import nbformat
    widgets = (nb.get("metadata", {}).get("widgets") or {}).get("application/vnd.jupyter.widget-state+json") or {}
    state = widgets.get("state") or {}
    cells = []
    for cell in nb.cells:
        kept = {k: v for k, v in dict(cell).items() if k in _CELL_KEYS[cell["cell_type"]]}
        kept.setdefault("metadata", {})
        kept["metadata"] = {}
        if cell["cell_type"] == "code":
            lines = cell["source"].splitlines()
            directives = [l for l in lines if l.startswith("#|")]
            kept["source"] = "\n".join(l for l in lines if not l.startswith("#|")).strip("\n")
            if any(re.match(r"#\|\s*echo:\s*false", l) for l in directives): kept["metadata"]["tags"] = ["remove_input"]
            kept.setdefault("outputs", []); kept.setdefault("execution_count", None)
            kept["outputs"] = _static_outputs(kept["outputs"], state)
            if not kept["source"] and not kept["outputs"]: continue
        cells.append(kept)
    return nbformat.from_dict({"cells": cells, "metadata": {"language_info": {"name": "python"}}, "nbformat": 4, "nbformat_minor": 5})


def _with_outputs(notebook: Path, scratch: Path, execute: bool) -> Path:
    "The notebook itself when it was committed with outputs; else (with `execute`) a copy executed now, flagged cells skipped."
    sys.path.insert(0, str(ROOT / "scripts"))
    from execute_notebooks import has_outputs, execute as run
    if has_outputs(notebook) or not execute: return notebook
    import nbformat
    try: executed = run(notebook)
    except Exception as exc:
        print(f"[docs] WARNING: {notebook.name} failed to execute ({type(exc).__name__}: {str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else ''}); "
              "rendered without outputs", flush=True)
        return notebook
    copy = scratch / notebook.name
    nbformat.write(executed, str(copy))
    return copy


def build_nbconvert(out: Path, execute: bool = True):
    import tempfile
    from nbconvert import HTMLExporter
    warnings.filterwarnings("ignore")
    out.mkdir(parents=True, exist_ok=True)
    rendered = []
    scratch = Path(tempfile.mkdtemp(prefix="crosssim_nb_docs_"))
    for notebook in notebooks():
        print(f"[docs] {notebook.name}", flush=True)
        nb = process(_with_outputs(notebook, scratch, execute), cwd=notebook.parent)
        title, summary, fm_cell = _title(nb)
        if fm_cell is not None: nb.cells.remove(fm_cell)
        title = title or notebook.stem
        rendered.append((notebook, title, summary, _clean(nb)))
    pages = [(page_name(nb), "Home" if nb.name == "index.ipynb" else title) for nb, title, _, _ in rendered]
    from traitlets.config import Config
    config = Config(); config.TagRemovePreprocessor.remove_input_tags = {"remove_input"}; config.TagRemovePreprocessor.enabled = True
    exporter = HTMLExporter(template_name="lab", config=config)
    exporter.exclude_input_prompt = exporter.exclude_output_prompt = True
    for notebook, title, summary, nb in rendered:
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
        body = re.sub(r'href="(?!https?:)([^"#]+?)\.ipynb(#[^"]*)?"', lambda m: f'href="{m[1]}.html{m[2] or ""}"', body)
        heading = f'<h1 class="cs-title">{html.escape(title)}</h1>' + (f'<p class="cs-summary">{html.escape(summary)}</p>' if summary else "")
        body = re.sub(r"(<body[^>]*>)", lambda m: m[1] + STYLE + _sidebar(pages, page_name(notebook)) + '<div id="cs-content">' + heading, body, count=1)
        body = body.replace("</body>", "</div></body>", 1)
        (out / page_name(notebook)).write_text(body, encoding="utf-8")
    return [out / name for name, _ in pages]


def build_quarto(out: Path):
    env = dict(os.environ, PATH=f"{Path(quarto_path()).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    subprocess.run([str(ROOT / ".venv" / "bin" / "nbdev-docs")], cwd=ROOT, env=env, check=True)
    if out.resolve() != (ROOT / "_docs").resolve():
        shutil.rmtree(out, ignore_errors=True); shutil.copytree(ROOT / "_docs", out)
    return sorted(out.glob("*.html"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "_docs"), help="output folder (default: _docs)")
    parser.add_argument("--engine", default="auto", choices=["auto", "quarto", "nbconvert"],
                        help="quarto (nbdev-docs), nbconvert (offline), or auto: quarto when installed (default: auto)")
    parser.add_argument("--no-execute", action="store_true",
                        help="render notebooks committed without outputs as they are (default: execute them first, "
                             "skipping cells flagged notest/slow)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    engine = args.engine if args.engine != "auto" else ("quarto" if quarto_path() else "nbconvert")
    if engine == "quarto" and not quarto_path():
        parser.error("--engine quarto: no quarto executable (pip install -e '.[docs]' needs the internet; or use --engine nbconvert)")
    if engine == "nbconvert" and out.exists(): shutil.rmtree(out)
    pyproject = ROOT / "pyproject.toml"
    kept = pyproject.read_bytes(), pyproject.stat().st_mtime_ns
    try: pages = build_quarto(out) if engine == "quarto" else build_nbconvert(out, execute=not args.no_execute)
    finally:    # nbdev rewrites pyproject.toml unless `update_pyproject = false`; setup.sh reinstalls when it looks newer
        if pyproject.read_bytes() == kept[0] and pyproject.stat().st_mtime_ns != kept[1]: os.utime(pyproject, ns=(kept[1], kept[1]))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"[docs] {engine}: {len(pages)} pages, {size / 1e6:.1f} MB in {out}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
