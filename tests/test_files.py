"""Every file the package writes survives a full disk: the write fails with ENOSPC part-way, the existing file is whole.

The disk is simulated at the Python level: `open` (builtins and `io`) hands out files that accept a few bytes and then
raise OSError(ENOSPC), as a real full disk does mid-write. `test_every_writer_is_covered` reads the package's source
and fails when a function that writes files is not one of the cases here (or a listed scratch/lock writer).
"""
import ast, builtins, errno, io, json, sys, types, warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import crosssim_nb
from crosssim_nb.config import InferenceConfig

PACKAGE = Path(crosssim_nb.__file__).parent


class FillingFile:
    "A file on a nearly full disk: writes succeed until the shared budget is spent, then the rest fails with ENOSPC."
    def __init__(self, handle, disk):
        self._handle, self._disk = handle, disk
    def write(self, data):
        room = self._disk["free"]
        if len(data) > room:
            if room: self._handle.write(data[:room])           # part of it lands: the disk fills mid-write
            self._disk["free"] = 0
            self._handle.flush()
            raise OSError(errno.ENOSPC, "No space left on device", getattr(self._handle, "name", None))
        self._disk["free"] -= len(data)
        return self._handle.write(data)
    def writelines(self, lines):
        for line in lines: self.write(line)
    def __getattr__(self, name): return getattr(self._handle, name)
    def __iter__(self): return iter(self._handle)
    def __enter__(self): return self
    def __exit__(self, *exc):
        self._handle.close()
        return False


@pytest.fixture
def full_disk(monkeypatch, tmp_path):
    """`full_disk(only="name")` from then on fails writes (after 7 bytes) to files under tmp_path whose path contains `only`
    (every file when None). Returns the disk state; `disk["hits"]` counts the files that met the full disk."""
    real_open = builtins.open
    disk = {"free": 7, "hits": 0, "only": None, "on": False}
    def fake_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        writing = any(flag in mode for flag in "wax+")
        name = str(file) if isinstance(file, (str, Path)) else ""
        if disk["on"] and writing and name.startswith(str(tmp_path)) and (disk["only"] is None or disk["only"] in name):
            disk["hits"] += 1
            return FillingFile(handle, disk)
        return handle
    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    def start(only=None, free=7):
        disk.update(on=True, only=only, free=free)
        return disk
    return start


def snapshot(folder:Path) -> dict:
    "Every file under `folder` (relative path -> bytes)."
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_intact(folder:Path, before:dict, disk:dict):
    "The files are byte for byte what they were, no temporary is left behind, and the full disk was met."
    assert disk["hits"] >= 1, "the full disk was never reached: this case does not test the writer"
    after = snapshot(folder)
    leftovers = sorted(set(after) - set(before))
    assert not leftovers, f"left behind: {leftovers}"
    for name, content in before.items():
        assert after.get(name) == content, f"{name} was changed or lost by a failed write"


def enospc(call):
    with pytest.raises(OSError) as caught: call()
    assert caught.value.errno == errno.ENOSPC
    return caught.value


# --- the cases: write once (disk fine), then rewrite with other content on a full disk ---------------------------------

def _config(tmp_path, suffix):
    path = tmp_path / f"hw{suffix}"
    InferenceConfig(adc_bits=8, adc_range_option="MAX").to_file(path)
    return lambda: InferenceConfig(adc_bits=6, adc_range_option="MAX", weight_bits=5).to_file(path)

def _calibration(suffix):
    from crosssim_nb.calibration import Calibration
    def make(scale):
        return Calibration(model_name="m", weights_hash="h" * 8, settings={"adc_bits": 8}, method="max",
                           input_ranges={"dense": [0.0, float(scale)]}, adc_limits={"dense": [[-scale, scale]]})
    def case(tmp_path):
        make(1.0).save(tmp_path / f"limits{suffix}")
        return lambda: make(2.5).save(tmp_path / f"limits{suffix}")
    return case

def _calibration_crosssim(tmp_path):
    from crosssim_nb.calibration import Calibration
    network = types.SimpleNamespace(specs={"dense": None})
    first = Calibration(model_name="m", weights_hash="h", settings={}, method="max", input_ranges={"dense": [0.0, 1.0]},
                        adc_limits={"dense": [-4.0, 4.0]})
    first.to_crosssim(tmp_path / "adc.npy", tmp_path / "dac.npy", network)
    second = Calibration(model_name="m", weights_hash="h", settings={}, method="max", input_ranges={"dense": [0.0, 3.0]},
                         adc_limits={"dense": [-9.0, 9.0]})
    return lambda: second.to_crosssim(tmp_path / "adc.npy", tmp_path / "dac.npy", network)

def _profile(tmp_path):
    from crosssim_nb.calibration import ADCProfile
    ADCProfile("m", "h", {}, 10, False).save(tmp_path / "profile.npz")
    return lambda: ADCProfile("other", "h2", {"adc_bits": 8}, 20, True).save(tmp_path / "profile.npz")

def _crosssim_json(tmp_path):
    import crosssim_nb.crosssim_compat  # noqa: F401 -- adds to_crosssim
    InferenceConfig(adc_bits=8, adc_range_option="MAX").to_crosssim(tmp_path / "params.json")
    return lambda: InferenceConfig(adc_bits=4, adc_range_option="MAX").to_crosssim(tmp_path / "params.json")

def _device_table(tmp_path):
    from crosssim_nb.device_models import write_device_table
    write_device_table(tmp_path / "device.csv", [0.1, 0.5, 1.0], programming_sigma=[0.01, 0.02, 0.03])
    return lambda: write_device_table(tmp_path / "device.csv", [0.2, 0.6, 1.0], programming_sigma=[0.04, 0.05, 0.06])

def _result(outputs=None):
    from crosssim_nb.inference import InferenceResult
    return InferenceResult(model_name="m", dataset="d", config=InferenceConfig(), topk=(1,), float_accuracy=np.array([0.9]),
                           accuracies=np.array([[0.8]]), ntest=4, seconds_per_image=1e-3, float_seconds_per_image=1e-4,
                           nruns_requested=1, outputs=outputs)

def _result_json(tmp_path):
    _result().to_json(tmp_path / "r.json")
    later = _result(); later.accuracies = np.array([[0.5]])
    return lambda: later.to_json(tmp_path / "r.json")

def _result_outputs(tmp_path):
    _result(np.zeros((1, 4, 3))).save_outputs(tmp_path / "outputs.npy")
    return lambda: _result(np.ones((1, 4, 3))).save_outputs(tmp_path / "outputs.npy")

def _study_result(tmp_path):
    from crosssim_nb.studies import write_result
    table = pd.DataFrame({"alpha_error": [0.0, 0.1], "run": [0, 0], "accuracy": [0.99, 0.9]})
    write_result(table, tmp_path / "result.json", {"model": "m"})
    return lambda: write_result(table.assign(accuracy=[0.5, 0.4]), tmp_path / "result.json", {"model": "m2"})

CASES = {
    "InferenceConfig.to_file json": lambda tmp_path: _config(tmp_path, ".json"),
    "InferenceConfig.to_file yaml": lambda tmp_path: _config(tmp_path, ".yaml"),
    "Calibration.save json": _calibration(".json"),
    "Calibration.save yaml": _calibration(".yaml"),
    "Calibration.to_crosssim": _calibration_crosssim,
    "ADCProfile.save": _profile,
    "InferenceConfig.to_crosssim": _crosssim_json,
    "write_device_table": _device_table,
    "InferenceResult.to_json": _result_json,
    "InferenceResult.save_outputs": _result_outputs,
    "studies.write_result": _study_result,
}


@pytest.mark.parametrize("case", list(CASES))
def test_full_disk_keeps_the_existing_file(case, tmp_path, full_disk):
    rewrite = CASES[case](tmp_path)
    before = snapshot(tmp_path)
    assert before, "the first write wrote nothing"
    disk = full_disk()
    enospc(rewrite)
    assert_intact(tmp_path, before, disk)


# --- the sweep store: manifest, point folders (staging), results.csv, results.parquet -----------------------------------

def _fake_sweep(monkeypatch, outcomes:dict):
    "Points run in this process; `outcomes[label]` is 'ok' or 'failed'."
    from crosssim_nb import sweep
    def execute(task):
        label = task["parameters"]["label"]
        if outcomes[label] == "ok":
            return {"point_id": task["point_id"], "status": "ok", "notebook_text": None, "error": None,
                    "result_text": json.dumps({"runs": [{"run": 0, "accuracy": 0.5, "label_seen": label}]})}
        return {"point_id": task["point_id"], "status": "failed", "notebook_text": None, "result_text": None,
                "error": {"where": "notebook", "type": "RuntimeError", "message": f"{label} failed"}}
    monkeypatch.setattr(sweep, "_execute_point", execute)
    monkeypatch.setattr(sweep, "_notebook_parameters", lambda notebook: {"label", "result_path"})


TINY = Path(__file__).parent / "data" / "sweep_tiny.ipynb"


KEPT = {"sweep.json": "", ".incomplete": "points/", "results.csv": "results.csv"}   # what a failed write must leave whole


@pytest.mark.parametrize("target", list(KEPT))
def test_full_disk_in_a_sweep_keeps_every_file(target, tmp_path, monkeypatch, full_disk):
    """A re-run on a full disk (a failed point retried, a new point) leaves whole what the failed write was replacing: the
    manifest (the run stops before any point), the point folders (the table then says which points could not be written),
    results.csv (the points that were written are kept)."""
    from crosssim_nb.sweep import run_sweep
    _fake_sweep(monkeypatch, {"a": "ok", "b": "failed", "c": "ok"})
    out = tmp_path / "sweep"
    run_sweep(TINY, {"label": ["a", "b"]}, out, scheduler="serial", progress=False)
    before = {k: v for k, v in snapshot(out).items() if k != ".lock"}
    assert any(k.endswith("error.json") for k in before) and (out / "results.csv").is_file()
    _fake_sweep(monkeypatch, {"a": "ok", "b": "ok", "c": "ok"})      # b would now succeed, c is new
    disk = full_disk(only=target)                  # write_atomic's temporary is named after its target: .sweep.json.<hex>.tmp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if target == "sweep.json": enospc(lambda: run_sweep(TINY, {"label": ["a", "b", "c"]}, out, scheduler="serial", progress=False))
        else: run_sweep(TINY, {"label": ["a", "b", "c"]}, out, scheduler="serial", progress=False)
    after = {k: v for k, v in snapshot(out).items() if k != ".lock"}
    assert disk["hits"] >= 1
    for name, content in before.items():
        if name.startswith(KEPT[target]): assert after.get(name) == content, f"{name} changed or lost"
    assert not [k for k in after if k.endswith(".tmp") or k.startswith(".incomplete")], sorted(after)


def test_full_disk_keeps_results_parquet(tmp_path, monkeypatch):
    "results.parquet (written when pyarrow is installed) goes through the same temporary-and-rename as results.csv."
    from crosssim_nb import sweep
    monkeypatch.setitem(sys.modules, "pyarrow", types.ModuleType("pyarrow"))   # present, as far as _save_table asks
    calls = {"n": 0}
    def to_parquet(self, path, index=False):
        calls["n"] += 1
        with builtins.open(path, "wb") as handle:
            handle.write(b"PAR1" + str(calls["n"]).encode() * 10)
            if calls["n"] == 2: raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(pd.DataFrame, "to_parquet", to_parquet)
    table = pd.DataFrame({"a": [1]})
    sweep._save_table(table, tmp_path)
    before = snapshot(tmp_path)
    enospc(lambda: sweep._save_table(table, tmp_path))
    assert snapshot(tmp_path) == before and calls["n"] == 2


# --- no writer is left out ----------------------------------------------------------------------------------------------

FRAME_WRITERS = {"to_csv", "to_parquet", "to_json", "to_hdf", "to_pickle", "to_excel", "to_feather"}   # with a destination
MODULE_WRITERS = {"np": {"save", "savez", "savez_compressed", "savetxt"}, "numpy": {"save", "savez", "savez_compressed", "savetxt"},
                  "shutil": {"copy", "copyfile", "copy2", "copytree", "move"}, "json": {"dump"}, "yaml": {"dump", "safe_dump"},
                  "pickle": {"dump"}}

COVERED = {   # (module, outermost function or Class.method) -> the case above that fails it on a full disk
    ("config", "InferenceConfig.to_file"): "InferenceConfig.to_file json/yaml (patched onto the class)",
    ("files", "write_atomic"): "every case (the temporary file)",
    ("calibration", "ADCProfile.save"): "ADCProfile.save",
    ("calibration", "Calibration.save"): "Calibration.save json/yaml (patched onto the class)",
    ("calibration", "_to_crosssim"): "Calibration.to_crosssim",
    ("crosssim_compat", "InferenceConfig.to_crosssim"): "InferenceConfig.to_crosssim",
    ("device_models", "write_device_table"): "write_device_table",
    ("inference", "InferenceResult.to_json"): "InferenceResult.to_json",
    ("inference", "InferenceResult.save_outputs"): "InferenceResult.save_outputs",
    ("studies", "write_result"): "studies.write_result",
    ("sweep", "_store_record"): "sweep .incomplete",
    ("sweep", "_update_manifest"): "sweep sweep.json",
    ("sweep", "_save_table"): "sweep results.csv, results.parquet",
    # not user files: scratch in a fresh temporary folder, and the lock file
    ("sweep", "_execute_point"): "scratch: the point's temporary folder",
    ("sweep", "_locked"): "the lock file (holds a pid only)",
    ("keras_import", "_from_tf_keras"): "scratch: a temporary folder",
}


def _writes(call:ast.Call) -> bool:
    "Whether a call writes a file: open() in a writing mode, Path.write_text/bytes, array.tofile, np.save & co., shutil copies, json/yaml dumps, DataFrame.to_csv & co. with a destination."
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name == "open":
        modes = list(call.args[1:2]) + [k.value for k in call.keywords if k.arg == "mode"]
        return any(isinstance(m, ast.Constant) and isinstance(m.value, str) and set(m.value) & set("wax+") for m in modes)
    if name in ("write_text", "write_bytes", "tofile", "write_atomic"): return True
    if name in FRAME_WRITERS: return bool(call.args) or any(k.arg in ("path", "path_or_buf", "path_or_buffer") for k in call.keywords)
    receiver = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None
    return name in MODULE_WRITERS.get(receiver, ())


def _patched_name(function) -> str:
    "`Class.method` for a fastcore `@patch` function (its first argument annotated with the class), else the function's name."
    patched = any((d.id if isinstance(d, ast.Name) else getattr(getattr(d, "func", None), "id", None)) == "patch"
                  for d in function.decorator_list)
    first = function.args.args[0].annotation if function.args.args else None
    return f"{first.id}.{function.name}" if patched and isinstance(first, ast.Name) else function.name

def _writers(path:Path) -> set:
    tree, found = ast.parse(path.read_text()), set()
    def visit(node, owner):
        for child in ast.iter_child_nodes(node):
            here = owner
            if owner is None and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)): here = _patched_name(child)
            if isinstance(node, ast.ClassDef) and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                here = f"{node.name}.{child.name}"
            if isinstance(child, ast.Call) and _writes(child):
                found.add(owner or "<module>")
            visit(child, here)
    visit(tree, None)
    return found


def test_every_writer_is_covered():
    writers = {(path.stem, owner) for path in PACKAGE.glob("*.py") if path.stem != "_modidx" for owner in _writers(path)}
    missing = sorted(writers - set(COVERED))
    assert not missing, f"functions that write files without a full-disk case in tests/test_files.py: {missing}"
    assert {("inference", "InferenceResult.to_json"), ("sweep", "_save_table"), ("sweep", "_store_record")} <= writers   # the scan sees them
