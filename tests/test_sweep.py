"""End-to-end tests of the sweep runner (crosssim_nb.sweep) on tests/data/sweep_tiny.ipynb (numpy only, no TensorFlow)."""
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import numpy as np
import pandas as pd
import psutil
import pytest
from matplotlib.figure import Figure
from scipy import stats

from crosssim_nb import sweep
from crosssim_nb.sweep import expand_grid, load_results, load_sweep_file, plot, point_id, run_sweep

TINY = Path(__file__).parent / "data" / "sweep_tiny.ipynb"
GRID = {"alpha": [0.0, 0.5]}
FIXED = {"nruns": 3, "seed": 7}


def reference_runs(alpha, seed, nruns):
    "What sweep_tiny computes, written independently: accuracy = 1 - alpha*U, then one normal draw, per seeded run."
    runs = []
    for run in range(nruns):
        rng = np.random.default_rng([seed, run])
        runs.append((1.0 - alpha * rng.uniform(), rng.normal()))
    return runs


def mtimes(out_dir):
    return {path: path.stat().st_mtime_ns for path in Path(out_dir, "points").rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def cluster_sweep(tmp_path_factory):
    "The 2-point sweep on a 2-worker LocalCluster started (and closed) by run_sweep."
    out_dir = tmp_path_factory.mktemp("cluster")
    table = run_sweep(TINY, GRID, out_dir, n_workers=2, parameters=FIXED, progress=False)
    return out_dir, table


def test_cluster_sweep_rows_and_values(cluster_sweep):
    out_dir, table = cluster_sweep
    assert len(table) == 2 * FIXED["nruns"]
    assert list(table.columns) == ["point_id", "status", "alpha", "nruns", "seed", "run", "accuracy", "noise",
                                   "mean_accuracy", "error"]
    assert (table["status"] == "ok").all() and table["error"].isna().all()
    assert table["run"].tolist() == [0, 1, 2, 0, 1, 2]
    for alpha, rows in table.groupby("alpha", sort=False):
        expected = reference_runs(alpha, FIXED["seed"], FIXED["nruns"])
        np.testing.assert_allclose(rows["accuracy"], [a for a, _ in expected], rtol=0, atol=1e-15)
        np.testing.assert_allclose(rows["noise"], [n for _, n in expected], rtol=0, atol=1e-15)
        assert rows["point_id"].nunique() == 1
        assert rows["point_id"].iloc[0] == point_id({"alpha": alpha, **FIXED})
    # every point's folder: the executed notebook, point.json, result.json; the table on disk
    for identifier in table["point_id"].unique():
        folder = out_dir / "points" / identifier
        assert sorted(p.name for p in folder.iterdir()) == ["point.json", "result.json", "sweep_tiny.ipynb"]
        executed = json.loads((folder / "sweep_tiny.ipynb").read_text())
        assert any("injected-parameters" in cell["metadata"].get("tags", []) for cell in executed["cells"])
        assert json.loads((folder / "point.json").read_text())["parameters"]["nruns"] == 3
    assert not list(out_dir.rglob("*.tmp")), "temporary files left behind"
    on_disk = pd.read_csv(out_dir / "results.csv")
    np.testing.assert_allclose(on_disk["accuracy"], table["accuracy"], rtol=1e-15)
    try:
        import pyarrow  # noqa: F401
        assert (out_dir / "results.parquet").is_file()
    except ImportError:
        assert not (out_dir / "results.parquet").exists()
    pd.testing.assert_frame_equal(load_results(out_dir), table)


def test_cluster_kernels_run_single_threaded_in_this_python(cluster_sweep):
    out_dir, table = cluster_sweep
    for identifier in table["point_id"].unique():
        environment = json.loads((out_dir / "points" / identifier / "result.json").read_text())["environment"]
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTEROP_THREADS",
                     "TF_NUM_INTRAOP_THREADS"):
            assert environment[name] == "1", name
        assert Path(environment["python"]).resolve() == Path(sys.executable).resolve()
        assert Path(environment["cwd"]).resolve() == TINY.parent.resolve()   # kernel runs in the notebook's folder


def test_rerun_executes_nothing(cluster_sweep, monkeypatch):
    out_dir, table = cluster_sweep
    before = mtimes(out_dir)
    def must_not_run(*args, **kwargs): raise AssertionError("a finished point was executed again")
    monkeypatch.setattr(sweep, "_execute_point", must_not_run)
    monkeypatch.setattr(sweep, "_run_on_dask", must_not_run)   # nothing pending: no cluster is even started
    start = time.perf_counter()
    again = run_sweep(TINY, GRID, out_dir, n_workers=2, parameters=FIXED, progress=False)
    assert time.perf_counter() - start < 10
    pd.testing.assert_frame_equal(again, table)
    assert mtimes(out_dir) == before


def test_serial_run_gives_identical_results(cluster_sweep, tmp_path):
    _, table = cluster_sweep
    serial = run_sweep(TINY, GRID, tmp_path, scheduler="serial", parameters=FIXED, progress=False)
    pd.testing.assert_frame_equal(serial, table, check_exact=True)
    one_point = run_sweep(TINY, {"alpha": [0.5]}, tmp_path / "zero", n_workers=0, parameters=FIXED, progress=False)
    pd.testing.assert_frame_equal(one_point, table[table.alpha == 0.5].reset_index(drop=True), check_exact=True)


def test_failing_point_is_recorded_and_others_go_on(tmp_path):
    grid = [{"alpha": 0.5}, {"alpha": 0.25, "fail": True}]
    table = run_sweep(TINY, grid, tmp_path, n_workers=2, parameters={"nruns": 2}, progress=False)
    good, bad = point_id({"alpha": 0.5, "nruns": 2}), point_id({"alpha": 0.25, "fail": True, "nruns": 2})
    assert table["point_id"].tolist() == [good, good, bad]
    assert table["status"].tolist() == ["ok", "ok", "failed"]
    assert table["error"].iloc[2] == "RuntimeError: sweep_tiny was asked to fail (alpha=0.25)"
    assert pd.isna(table["run"].iloc[2]) and pd.isna(table["accuracy"].iloc[2])
    np.testing.assert_allclose(table["accuracy"][:2], [a for a, _ in reference_runs(0.5, 0, 2)], atol=1e-15)
    assert (tmp_path / "points" / good / "result.json").is_file()
    failed_dir = tmp_path / "points" / bad
    assert not (failed_dir / "result.json").exists()
    error = json.loads((failed_dir / "error.json").read_text())
    assert (error["type"], error["where"], error["parameters"]["fail"]) == ("RuntimeError", "notebook", True)
    assert "asked to fail" in error["traceback"] and "\x1b[" not in error["traceback"]
    executed = json.loads((failed_dir / "sweep_tiny.ipynb").read_text())   # executed up to the failing cell
    outputs = [output for cell in executed["cells"] for output in cell.get("outputs", [])]
    assert any(output.get("ename") == "RuntimeError" for output in outputs)
    assert executed["cells"][-1].get("execution_count") is None              # the cell after it never ran
    # a re-run retries the failed point only (serially here)
    good_stamp = (tmp_path / "points" / good / "result.json").stat().st_mtime_ns
    first_failure = error["finished"]
    time.sleep(1.1)   # error.json records the finish time to the second
    rerun = run_sweep(TINY, grid, tmp_path, scheduler="serial", parameters={"nruns": 2}, progress=False)
    pd.testing.assert_frame_equal(rerun, table)
    assert (tmp_path / "points" / good / "result.json").stat().st_mtime_ns == good_stamp
    assert json.loads((failed_dir / "error.json").read_text())["finished"] != first_failure


def test_interrupt_keeps_finished_points(tmp_path, monkeypatch):
    "Ctrl-C in a serial sweep: the point that finished is on disk, the run stops, a re-run does only the rest."
    calls, interrupt = [], {"at": 0.2}
    def fake_execute(task):
        alpha = task["parameters"]["alpha"]
        calls.append(alpha)
        if alpha == interrupt["at"]: raise KeyboardInterrupt
        return {"point_id": task["point_id"], "status": "ok", "notebook_text": None, "error": None,
                "result_text": json.dumps({"runs": [{"run": 0, "accuracy": 1 - alpha}]})}
    monkeypatch.setattr(sweep, "_execute_point", fake_execute)
    monkeypatch.setattr(sweep, "_notebook_parameters", lambda notebook: {"alpha", "result_path"})
    with pytest.raises(KeyboardInterrupt):
        run_sweep(TINY, {"alpha": [0.1, 0.2, 0.3]}, tmp_path, scheduler="serial", progress=False)
    assert calls == [0.1, 0.2]
    assert [p.name for p in (tmp_path / "points").iterdir()] == [point_id({"alpha": 0.1})]
    calls.clear(); interrupt["at"] = None
    table = run_sweep(TINY, {"alpha": [0.1, 0.2, 0.3]}, tmp_path, scheduler="serial", progress=False)
    assert calls == [0.2, 0.3]
    np.testing.assert_allclose(table["accuracy"], [0.9, 0.8, 0.7])


@pytest.mark.slow
def test_ctrl_c_on_a_local_cluster(tmp_path):
    "A real SIGINT to a LocalCluster sweep: quick exit, finished point on disk, queued ones not run, no kernels left."
    script = tmp_path / "interrupted.py"
    script.write_text(textwrap.dedent(f"""
        import signal, sys
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from crosssim_nb.sweep import run_sweep
        if __name__ == "__main__":
            grid = [{{"alpha": 0.0}}, {{"alpha": 0.5, "sleep_seconds": 120.0}}, {{"alpha": 0.7, "sleep_seconds": 120.0}}]
            try:
                run_sweep({str(TINY)!r}, grid, {str(tmp_path / "out")!r}, n_workers=2, progress=False)
            except KeyboardInterrupt:
                sys.exit(3)
        """))
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not list((tmp_path / "out").glob("points/*/result.json")) and time.time() < deadline: time.sleep(0.5)
        time.sleep(1.0)
        descendants = psutil.Process(process.pid).children(recursive=True)   # workers, nannies, kernels
        assert any("ipykernel_launcher" in " ".join(child.cmdline()) for child in descendants)
        process.send_signal(signal.SIGINT)
        start = time.time()
        assert process.wait(timeout=60) == 3
        assert time.time() - start < 30
        _, alive = psutil.wait_procs(descendants, timeout=10)
        assert not alive, f"left running: {[child.cmdline() for child in alive]}"
    finally:
        if process.poll() is None: process.kill()
    assert [p.parent.name for p in (tmp_path / "out").glob("points/*/result.json")] == [point_id({"alpha": 0.0})]
    assert len(list((tmp_path / "out" / "points").iterdir())) == 1


def test_grid_expansion_order_and_fixed_parameters():
    points = expand_grid({"b": [1, 2], "a": ["x", "y", "z"]}, {"seed": 0})
    assert points == [{"b": b, "a": a, "seed": 0} for b in (1, 2) for a in ("x", "y", "z")]
    assert expand_grid([{"a": 1}, {"a": 2, "b": 3}], {"c": 0}) == [{"a": 1, "c": 0}, {"a": 2, "b": 3, "c": 0}]
    assert expand_grid({"shape": [[28, 28]], "n": np.int64(3)}) == [{"shape": [28, 28], "n": 3}]
    with pytest.raises(ValueError, match="both swept"): expand_grid({"a": [1]}, {"a": 2})
    with pytest.raises(ValueError, match="empty list"): expand_grid({"a": []})
    with pytest.raises(TypeError, match="holds dicts"): expand_grid([1, 2])
    with pytest.raises(ValueError, match="set by the sweep runner"): expand_grid({"result_path": ["x"]})


def test_yaml_sweep_file(tmp_path):
    (tmp_path / "sweep.yaml").write_text(textwrap.dedent("""
        notebook: data/tiny.ipynb
        parameters: {nruns: 3}
        grid:
          alpha: [1e-3, 2.5e-2, 0.5]
          seed: [0, 1]
        """))
    content = load_sweep_file(tmp_path / "sweep.yaml")
    assert content["notebook"] == tmp_path / "data" / "tiny.ipynb"
    points = expand_grid(content["grid"], content["parameters"])
    assert len(points) == 6 and points[0] == {"alpha": 0.001, "seed": 0, "nruns": 3}
    assert points[3] == {"alpha": 0.025, "seed": 1, "nruns": 3}
    (tmp_path / "list.yaml").write_text("- {alpha: 0.1}\n- {alpha: 0.2, fail: true}\n")
    assert load_sweep_file(tmp_path / "list.yaml")["grid"] == [{"alpha": 0.1}, {"alpha": 0.2, "fail": True}]
    (tmp_path / "bad.yaml").write_text("grid: {alpha: [1]}\nworkers: 4\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['workers'\]"): load_sweep_file(tmp_path / "bad.yaml")
    (tmp_path / "nogrid.yaml").write_text("parameters: {alpha: 1}\n")
    with pytest.raises(ValueError, match="no 'grid' key"): load_sweep_file(tmp_path / "nogrid.yaml")


def test_yaml_sweep_runs_the_notebook_it_names(tmp_path, cluster_sweep):
    _, table = cluster_sweep
    (tmp_path / "tiny.yaml").write_text(f"notebook: {TINY}\nparameters: {{nruns: 3, seed: 7}}\ngrid: {{alpha: [0.0, 0.5]}}\n")
    from_yaml = sweep.main_sweep(None, tmp_path / "tiny.yaml", tmp_path / "out", scheduler="serial")
    pd.testing.assert_frame_equal(from_yaml, table)


def test_bad_input_fails_before_running(tmp_path, monkeypatch):
    def must_not_run(*args, **kwargs): raise AssertionError("ran despite bad input")
    monkeypatch.setattr(sweep, "_execute_point", must_not_run)
    with pytest.raises(ValueError, match=r"\['alpah'\] are not defined in the `parameters` cell"):
        run_sweep(TINY, {"alpah": [0.1]}, tmp_path, scheduler="serial")
    with pytest.raises(FileNotFoundError, match="missing.ipynb"):
        run_sweep(tmp_path / "missing.ipynb", {"alpha": [0.1]}, tmp_path)
    no_result_path = json.loads(TINY.read_text())
    no_result_path["cells"][1]["source"] = "alpha = 0.0\n"
    (tmp_path / "plain.ipynb").write_text(json.dumps(no_result_path))
    with pytest.raises(ValueError, match="defining 'result_path'"):
        run_sweep(tmp_path / "plain.ipynb", {"alpha": [0.1]}, tmp_path / "plain", scheduler="serial")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "sweep.json").write_text(json.dumps({"notebook": "/x/other.ipynb", "points": []}))
    with pytest.raises(ValueError, match="holds a sweep of '/x/other.ipynb'"):
        run_sweep(TINY, {"alpha": [0.1]}, tmp_path / "a", scheduler="serial")


def test_plot_error_bars_over_runs():
    rng = np.random.default_rng(0)
    rows = [{"point_id": f"{bits}{option}", "status": "ok", "adc_bits": bits, "option": option, "run": run,
             "accuracy": 0.9 - 0.5 / bits + 0.01 * rng.normal()}
            for bits in (4, 6, 8) for option in ("MAX", "GRANULAR") for run in range(5)]
    rows.append({"point_id": "failed", "status": "failed", "adc_bits": 10, "option": "MAX", "run": None,
                 "accuracy": None, "error": "RuntimeError: x"})
    results = pd.DataFrame(rows)
    for error in ("std", "ci95"):
        figure = plot(results, x="adc_bits", hue="option", error=error)
        assert isinstance(figure, Figure)
        containers = figure.axes[0].containers
        assert [c.get_label() for c in containers] == ["option=GRANULAR", "option=MAX"]
        for container, option in zip(containers, ("GRANULAR", "MAX")):
            values = results[(results.option == option) & (results.status == "ok")].groupby("adc_bits")["accuracy"]
            std = values.std(ddof=1).to_numpy()
            half = std if error == "std" else stats.t.ppf(0.975, 4) * std / np.sqrt(5)
            line, _, (bars,) = container.lines
            np.testing.assert_allclose(line.get_xdata(), [4, 6, 8])           # the failed point is left out
            np.testing.assert_allclose(line.get_ydata(), values.mean().to_numpy())
            np.testing.assert_allclose([s[1, 1] - s[0, 1] for s in bars.get_segments()], 2 * half, rtol=1e-12)
    categorical = plot(results, x="option", y="accuracy")
    assert [t.get_text() for t in categorical.axes[0].get_xticklabels()] == ["GRANULAR", "MAX"]
    with pytest.raises(ValueError, match="hue='colour' is not a column"): plot(results, x="adc_bits", hue="colour")
    with pytest.raises(ValueError, match="allowed: 'std', 'ci95'"): plot(results, x="adc_bits", error="sem")


def fake_points(monkeypatch, names):
    "Points 'run' in this process without a kernel: the result echoes a value computed from the parameters."
    def fake_execute(task):
        return {"point_id": task["point_id"], "status": "ok", "notebook_text": None, "error": None,
                "result_text": json.dumps({"runs": [{"run": 0, "accuracy": 0.5, "note": task["parameters"]["label"]}]})}
    monkeypatch.setattr(sweep, "_execute_point", fake_execute)
    monkeypatch.setattr(sweep, "_notebook_parameters", lambda notebook: {*names, "result_path"})


def test_results_csv_escapes_formula_cells(tmp_path, monkeypatch):
    "Grid strings a spreadsheet would run as formulas are written with a leading ' (OWASP); the table itself keeps them raw."
    fake_points(monkeypatch, {"label"})
    labels = ['=HYPERLINK("http://evil.example","click")', "@SUM(1+1)", "+1+1", "-1+1", "\t=1", "\r=1", "fine", "a=b"]
    table = run_sweep(TINY, {"label": labels}, tmp_path, scheduler="serial", progress=False)
    assert table["label"].tolist() == labels and table["note"].tolist() == labels        # returned raw
    on_disk = pd.read_csv(tmp_path / "results.csv", keep_default_na=False)
    expected = ["'" + label for label in labels[:6]] + labels[6:]
    assert on_disk["label"].tolist() == expected and on_disk["note"].tolist() == expected
    assert on_disk["accuracy"].tolist() == [0.5] * len(labels)
    assert load_results(tmp_path)["label"].tolist() == labels                           # the folder keeps the values


def test_results_csv_lists_every_point_of_the_folder(tmp_path, monkeypatch):
    "Two sweeps of one notebook into one folder, one after the other: results.csv holds both; each call returns its own."
    fake_points(monkeypatch, {"label"})
    first = run_sweep(TINY, {"label": ["a", "b"]}, tmp_path, scheduler="serial", progress=False)
    second = run_sweep(TINY, {"label": ["c"]}, tmp_path, scheduler="serial", progress=False)
    assert first["label"].tolist() == ["a", "b"] and second["label"].tolist() == ["c"]
    assert pd.read_csv(tmp_path / "results.csv")["label"].tolist() == ["a", "b", "c"]


def test_second_sweep_into_a_running_folder_is_refused(tmp_path):
    "A sweep running in another process holds out_dir: a second one is refused by name and pid, nothing of the first is touched."
    out_dir = tmp_path / "out"
    script = tmp_path / "holder.py"
    script.write_text(textwrap.dedent(f"""
        import json, time
        from crosssim_nb import sweep
        def slow(task):
            time.sleep(120)
        sweep._execute_point = slow
        sweep._notebook_parameters = lambda notebook: {{"alpha", "result_path"}}
        sweep.run_sweep({str(TINY)!r}, {{"alpha": [0.1]}}, {str(out_dir)!r}, scheduler="serial", progress=False)
        """))
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, lock = time.time() + 60, out_dir / ".lock"
        while not (lock.is_file() and f"pid {process.pid}" in lock.read_text()):
            assert process.poll() is None and time.time() < deadline, "the holder did not start"
            time.sleep(0.2)
        (out_dir / ".incomplete" / "marker").mkdir(parents=True)          # stands for a point the holder is writing
        with pytest.raises(sweep.SweepLockedError, match=rf"out_dir '{out_dir}' is in use by another sweep \(pid {process.pid} on"):
            run_sweep(TINY, {"alpha": [0.1, 0.2]}, out_dir, scheduler="serial", progress=False)
        assert (out_dir / ".incomplete" / "marker").is_dir()               # its staging was not emptied
        assert json.loads((out_dir / "sweep.json").read_text())["points"] == [point_id({"alpha": 0.1})]
    finally:
        process.kill(); process.wait(timeout=30)
    calls = []
    def fake(task):
        calls.append(task["parameters"]["alpha"])
        return {"point_id": task["point_id"], "status": "ok", "notebook_text": None, "error": None,
                "result_text": json.dumps({"runs": [{"run": 0, "accuracy": 1.0}]})}
    with pytest.MonkeyPatch.context() as patch:                          # a killed holder leaves no stale lock
        patch.setattr(sweep, "_execute_point", fake)
        patch.setattr(sweep, "_notebook_parameters", lambda notebook: {"alpha", "result_path"})
        run_sweep(TINY, {"alpha": [0.1, 0.2]}, out_dir, scheduler="serial", progress=False)
    assert calls == [0.1, 0.2]


def test_serial_scheduler_refuses_n_workers(tmp_path):
    with pytest.raises(ValueError, match=r"n_workers=2 has no effect with scheduler='serial'"):
        run_sweep(TINY, {"alpha": [0.1]}, tmp_path, scheduler="serial", n_workers=2)
    assert not (tmp_path / "points").exists()                            # refused before anything was written


def test_folder_without_locks_warns_and_runs(tmp_path, monkeypatch):
    "A file system that cannot lock (ENOLCK, some network mounts): a warning naming the folder, and the sweep runs."
    import errno, fcntl
    fake_points(monkeypatch, {"label"})
    def no_locks(fd, operation): raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(sweep.SweepFileWarning, match=rf"out_dir '{tmp_path}' cannot be locked \(No locks available\)"):
        table = run_sweep(TINY, {"label": ["x"]}, tmp_path, scheduler="serial", progress=False)
    assert table["status"].tolist() == ["ok"]
