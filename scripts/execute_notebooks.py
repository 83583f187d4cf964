"""Execute notebooks the way their committed outputs are made, and compare executions.

The narrative notebooks (those committed with outputs: the tour, the studies, the viewers, the reference chapters) are
refreshed with

    python scripts/execute_notebooks.py nbs/57_tour.ipynb nbs/60_array_viewer.ipynb ...   # in place, then nbdev-clean

(no arguments: every notebook of nbs/ that has committed outputs; only the notebooks executed are cleaned). Every cell runs, also those flagged `#| notest` or
`#| slow` (nbdev-test skips them; a reader wants their results); TensorFlow's start-up lines on stderr are dropped. `tests/test_docs.py` uses
`execute` and `differences` to check that the committed outputs are in sync with the code.
"""
from __future__ import annotations
import copy, json, os, re, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"
SKIP_FLAGS = ("notest", "slow")
_NOISE = re.compile(r"^(WARNING: All log messages before absl|I0000 |W0000 |E0000 |.*(oneDNN custom operations|cudart_stub|"
                    r"cuda_executor|Unable to register cu|computation placer|TF-TRT Warning|rebuild TensorFlow|"
                    r"AVX2 FMA|cuInit|absl::InitializeLog)|\s*$)")


def flagged(cell) -> bool:
    "A code cell that nbdev-test skips (`#| notest`, `#| slow`) or that is not evaluated (`#| eval: false`)."
    for line in cell.get("source", "").splitlines() if isinstance(cell.get("source"), str) else "".join(cell.get("source", [])).splitlines():
        line = line.strip()
        if not line.startswith("#|"): continue
        words = line[2:].replace(":", " ").split()
        if words and (words[0] in SKIP_FLAGS or (words[0] == "eval" and words[1:2] == ["false"])): return True
    return False


def executed_whole(nb) -> bool:
    """Whether a committed notebook was executed with its flagged cells (a flagged cell carries outputs): the narrative
    chapters. The library chapters show their examples' outputs and skip their notest/slow cells (benchmarks, long runs)."""
    return any(flagged(cell) and cell.get("outputs") for cell in nb["cells"] if cell["cell_type"] == "code")


def has_outputs(path: Path) -> bool:
    nb = json.loads(Path(path).read_text())
    return any(cell.get("outputs") for cell in nb["cells"] if cell["cell_type"] == "code")


def narrative_notebooks() -> list[Path]:
    "Notebooks committed with outputs."
    return [p for p in sorted(NBS.glob("*.ipynb")) if has_outputs(p)]


_RETRACING = re.compile(r"^WARNING:tensorflow:.*(retracing|tf.function)")


def _relative(output: dict) -> dict:
    "An output with this checkout's own path written relative to it (`.data/...`, `.venv/...`): the same on every machine."
    root = str(ROOT) + os.sep
    strip = lambda value: ([v.replace(root, "") for v in value] if isinstance(value, list) else
                           value.replace(root, "") if isinstance(value, str) else value)
    if "text" in output: output = dict(output, text=strip(output["text"]))
    if "data" in output: output = dict(output, data={mime: strip(v) for mime, v in output["data"].items()})
    return output


def _quiet(outputs: list) -> list:
    "Outputs without TensorFlow's start-up and retracing lines, and without this checkout's path."
    kept = []
    for output in map(_relative, outputs):
        if output.get("output_type") == "stream" and output.get("name") == "stdout":
            text = "".join(output["text"]) if isinstance(output["text"], list) else output["text"]
            lines = [line for line in text.splitlines() if not _RETRACING.match(line)]
            if not lines: continue
            output = dict(output, text="\n".join(lines) + "\n")
        if output.get("output_type") == "stream" and output.get("name") == "stderr":
            text = "".join(output["text"]) if isinstance(output["text"], list) else output["text"]
            lines = [line for line in text.splitlines() if not _NOISE.match(line)]
            if not lines: continue
            output = dict(output, text="\n".join(lines) + "\n")
        kept.append(output)
    return kept


def execute(path, timeout: int = 1800, allow_errors: bool = False,
            skip_flagged: bool = True, # skip cells flagged notest/slow (they keep no outputs); False runs every cell
            keep_stderr: bool = True, # keep what cells wrote to stderr (warnings); a library chapter's examples show results only
           ):
    "The notebook at `path` executed in its folder, as an nbformat node."
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(str(path), as_version=4)
    work = copy.deepcopy(nb)
    skipped = [i for i, cell in enumerate(work.cells) if cell.cell_type == "code" and skip_flagged and flagged(cell)]
    for i in skipped: work.cells[i].source = ""
    env_path = os.environ.get("PYTHONPATH", "")
    if str(ROOT) not in env_path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env_path) if p)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    in_test = os.environ.get("IN_TEST")
    os.environ["IN_TEST"] = "1"       # as under nbdev-test: a notebook's closing `nbdev_export()` writes no module (nor pyproject.toml)
    backend = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"   # figures become outputs, as in Jupyter
    try:
        NotebookClient(work, timeout=timeout, kernel_name="python3", allow_errors=allow_errors,
                       resources={"metadata": {"path": str(Path(path).parent)}}).execute()
    finally:
        if backend is None: os.environ.pop("MPLBACKEND", None)
        else: os.environ["MPLBACKEND"] = backend
        if in_test is None: os.environ.pop("IN_TEST", None)
        else: os.environ["IN_TEST"] = in_test
    for i, cell in enumerate(work.cells):
        if cell.cell_type != "code": continue
        cell.source = nb.cells[i].source
        cell.outputs = [] if i in skipped else [nbformat.from_dict(o) for o in _quiet(cell.outputs)
                                                if keep_stderr or not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
    return work


# --- comparing two executions --------------------------------------------------------------------------------------
_TIMING = re.compile(r"(speed|ms/image|s/image|seconds|elapsed|took|per second|it/s|\b[nµm]?s\b)", re.I)
_NUMBER = re.compile(r"[-+]?\d[\d,]*\.?\d*(e[-+]?\d+)?", re.I)


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _masked(text: str) -> str:
    "Text with the numbers of timing lines (and memory addresses) masked."
    text = re.sub(r"0x[0-9a-f]+", "0x?", text)
    return "\n".join(_NUMBER.sub("#", line) if _TIMING.search(line) else line for line in text.splitlines())


def _summary(output) -> tuple:
    kind = output.get("output_type")
    if kind == "stream": return ("stream", output.get("name"))
    if kind == "error": return ("error", output.get("ename"))
    mimes = tuple(sorted(m for m in output.get("data", {}) if m != "application/vnd.jupyter.widget-view+json"))
    return ("data", mimes)


def _merged_streams(outputs: list) -> list:
    "Outputs with consecutive writes to one stream joined (how a kernel splits a cell's printing depends on timing)."
    merged = []
    for output in outputs:
        if (output.get("output_type") == "stream" and merged and merged[-1].get("output_type") == "stream"
                and merged[-1].get("name") == output.get("name")):
            merged[-1] = dict(merged[-1], text=_text(merged[-1]["text"]) + _text(output["text"]))
        else: merged.append(output)
    return merged


def differences(committed, executed) -> list[str]:
    """What differs between two executions of one notebook: errors; per code cell, the kinds of outputs (streams, MIME
    types: an image stays an image); tables and printed text equal, with the numbers of timing lines masked.
    Pixels of figures are not compared."""
    problems = []
    code = lambda nb: [c for c in nb["cells"] if c["cell_type"] == "code"]
    a, b = code(committed), code(executed)
    if len(a) != len(b): return [f"{len(a)} code cells committed, {len(b)} executed"]
    for index, (old, new) in enumerate(zip(a, b)):
        lines = [line for line in _text(old["source"]).splitlines() if line.strip() and not line.startswith("#|")]
        where = f"code cell {index} ({(lines[0][:50] if lines else 'empty')!r})"
        for output in list(old.get("outputs", [])) + list(new.get("outputs", [])):
            if output.get("output_type") == "error": problems.append(f"{where}: error {output.get('ename')}: {output.get('evalue')}")
        old_outputs = _merged_streams([o for o in old.get("outputs", []) if not (o.get("output_type") == "stream" and o.get("name") == "stderr")])
        new_outputs = _merged_streams([o for o in new.get("outputs", []) if not (o.get("output_type") == "stream" and o.get("name") == "stderr")])
        if [_summary(o) for o in old_outputs] != [_summary(o) for o in new_outputs]:
            problems.append(f"{where}: outputs {[_summary(o) for o in old_outputs]} committed, {[_summary(o) for o in new_outputs]} now")
            continue
        for o1, o2 in zip(old_outputs, new_outputs):
            if o1.get("output_type") == "stream": t1, t2 = _text(o1["text"]), _text(o2["text"])
            elif "text/html" in o1.get("data", {}) and "<table" in _text(o1["data"]["text/html"]):
                t1, t2 = _text(o1["data"].get("text/plain", "")), _text(o2["data"].get("text/plain", ""))
            else: continue
            if _masked(t1) != _masked(t2):
                problems.append(f"{where}: text differs\n--- committed\n{t1[:800]}\n--- now\n{t2[:800]}")
    return problems


def main(argv=None):
    """Execute the notebooks named (all committed with outputs when none is), in place. `--examples-only` skips the
    notest/slow cells (a library chapter's first execution); otherwise a notebook keeps the mode it was committed in."""
    import nbformat
    args = list(argv if argv is not None else sys.argv[1:])
    examples_only = "--examples-only" in args
    paths = [Path(p).resolve() for p in args if p != "--examples-only"] or narrative_notebooks()
    for path in paths:
        print(f"[execute] {path.name}", flush=True)
        whole = not examples_only and (executed_whole(json.loads(path.read_text())) or not has_outputs(path))
        nbformat.write(execute(path, skip_flagged=not whole, keep_stderr=whole), str(path))
    for path in paths:           # these notebooks only: others may be open in an editor
        subprocess.run([str(ROOT / ".venv" / "bin" / "nbdev-clean"), "--fname", str(path)], cwd=ROOT, check=True)
    for path in paths: print(f"[execute] {path.name}: {path.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
