"""The crosssim-nb command line, end to end in subprocesses."""
import json, os, subprocess, sys
from pathlib import Path
import numpy as np
import pytest

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MPLBACKEND": "Agg"}

SCRIPT = Path(sys.executable).parent / "crosssim-nb"          # the installed console script
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "crosssim_nb.cli"]

def cli(*args, check=True):
    result = subprocess.run([*COMMAND, *args], capture_output=True, text=True, env=ENV, timeout=600)
    if check: assert result.returncode == 0, result.stderr[-3000:]
    return result

def test_run_end_to_end(tmp_path):
    out = cli("run", "--model", "mnist_mlp", "--ntest", "60", "--nruns", "2", "--adc-bits", "6", "--adc-range-option", "MAX",
              "--error-model", "generic", "--alpha-error", "0.02", "--topk", "1", "3", "--show-hw-config", "--no-progress",
              "--json", str(tmp_path / "r.json"), "--save-outputs", str(tmp_path / "o.npy"))
    assert "top-1: float" in out.stdout and "top-3" in out.stdout and "dense1" in out.stdout
    summary = json.loads((tmp_path / "r.json").read_text())
    assert summary["nruns"] == 2 and summary["ntest"] == 60 and summary["config"]["adc_bits"] == 6 and summary["topk"] == [1, 3]
    assert np.load(tmp_path / "o.npy", allow_pickle=False).shape == (2, 60, 10)

def test_config_file_and_calibrate_then_run(tmp_path):
    from crosssim_nb import InferenceConfig
    InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=5, adc_range_option="MAX").to_file(tmp_path / "hw.yaml")
    out = cli("calibrate", "--model", "mnist_mlp", "--config", str(tmp_path / "hw.yaml"), "--calibration-samples", "100",
              "--output", str(tmp_path / "limits.json"))
    assert "wrote" in out.stdout and (tmp_path / "limits.json").is_file()
    cli("run", "--model", "mnist_mlp", "--config", str(tmp_path / "hw.yaml"), "--adc-limits", str(tmp_path / "limits.json"),
              "--ntest", "100", "--no-progress", "--json", str(tmp_path / "r.json"))
    summary = json.loads((tmp_path / "r.json").read_text())
    assert summary["config"]["adc_range_option"] == "CALIBRATED" and summary["mean"][0] > 0.9
    mismatch = cli("run", "--model", "mnist_mlp", "--config", str(tmp_path / "hw.yaml"), "--weight-bits", "6",
                   "--adc-limits", str(tmp_path / "limits.json"), "--ntest", "20", "--no-progress", check=False)
    assert mismatch.returncode != 0 and "weight_bits: limits made for 8, config has 6" in mismatch.stderr

@pytest.mark.parametrize("args, message", [
    (["run", "--weight-bits", "1"], "weight_bits=1 is not allowed"),
    (["run", "--style", "DIAGONAL"], "invalid choice: 'DIAGONAL'"),
    (["run", "--adc-bits", "eight"], "invalid int value: 'eight'"),
    (["run", "--ntest", "0"], "--ntest=0 is not allowed; allowed: an integer >= 1"),
    (["run", "--config", "/nonexistent/hw.yaml"], "--config: no such file: /nonexistent/hw.yaml"),
    (["run", "--adc-limits", "/nonexistent/limits.json"], "--adc-limits: no such file"),
    (["run", "--model", "model.h5"], "--model: no such file: model.h5"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_arguments_exit_2_naming_the_field(args, message):
    result = cli(*args, check=False)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr

def test_zoo_lists_models():
    out = cli("zoo")
    assert "mnist_mlp" in out.stdout and "float_accuracy" in out.stdout


# --- flags: no abbreviations, suggestions; any case for names -------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["run", "--adc-bit", "8"], "unrecognized arguments: --adc-bit 8; did you mean --adc-bits?"),
    (["run", "--NrowsMax", "256"], "unrecognized arguments: --NrowsMax 256; did you mean --nrows-max?"),
    (["calibrate", "--Nslices=2", "--output", "x.json"], "unrecognized arguments: --Nslices=2; did you mean --nslices?"),
    (["run", "--adc_range_option", "MAX"], "did you mean --adc-range-option?"),
    (["run", "--calibrate", "optimal"], "unrecognized arguments: --calibrate optimal; did you mean --calibrate-adc?"),
    (["sweep", "study.ipynb", "grid.yaml", "--out", "o", "--scheduler", "serial", "--n-workers", "2"],
     "--n-workers 2 has no effect with --scheduler serial"),
])
def test_unknown_or_abbreviated_flags_are_refused_with_a_suggestion(args, message):
    result = cli(*args, check=False)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def calls_of_run_inference(monkeypatch, result="result"):
    "Replace run_inference by a recorder; return the list its calls go to (args, kwargs)."
    calls = []
    def record(*args, **kwargs):
        calls.append((args, kwargs))
        return result(*args, **kwargs) if callable(result) else result
    monkeypatch.setattr("crosssim_nb.inference.run_inference", record)
    return calls


def test_preset_and_dataset_in_any_case(monkeypatch, capsys):
    from crosssim_nb import InferenceConfig
    from crosssim_nb.cli import main
    calls = calls_of_run_inference(monkeypatch)
    assert main(["run", "--preset", "isaac", "--dataset", "MNIST", "--model", "mnist_mlp", "--no-progress"]) == 0
    (model, dataset, config), _ = calls[0]
    assert (model, dataset) == ("mnist_mlp", "mnist")
    assert config == InferenceConfig.preset("ISAAC")
    assert main(["run", "--preset", "Sonos-Tcas", "--dataset", "Fashion-MNIST", "--model", "fashion_resnet", "--no-progress"]) == 0
    (model, dataset, config), _ = calls[1]
    assert (model, dataset, config) == ("fashion_resnet", "fashion_mnist", InferenceConfig.preset("SONOS-TCAS"))
    with pytest.raises(SystemExit):
        main(["run", "--preset", "isaak", "--no-progress"])
    assert "invalid choice: 'isaak'" in capsys.readouterr().err


def test_dataset_name_in_any_case_loads():
    from crosssim_nb.data import load_dataset
    upper, lower = load_dataset("MNIST", ntest=3), load_dataset("mnist", ntest=3)
    assert upper.name == "mnist" and np.array_equal(upper.x, lower.x) and np.array_equal(upper.y, lower.y)


# --- errors during the work: one line, exit status 2 (130 for Ctrl-C) ----------------------------------------------------

def _solve_error():
    "The error of a wire solve that does not converge."
    from crosssim_nb.parasitics import ParasiticSolveError
    return ParasiticSolveError


@pytest.mark.parametrize("error, message", [
    (lambda: _solve_error()("the wire solve did not converge after 200 iterations (rp_row=50)"), "did not converge after 200"),
    (lambda: TypeError("alpha_error must be a number"), "alpha_error must be a number"),
    (lambda: FileNotFoundError("mnist (test split) not found; looked in:\n  /a\n  /b"), "mnist (test split) not found; looked in: /a /b"),
    (lambda: RecursionError("maximum recursion depth exceeded"), "maximum recursion depth exceeded"),
    (lambda: OSError(28, "No space left on device", "/out/.r.json.0a1b2c3d.tmp"), "the disk is full: could not write /out/r.json"),
    (lambda: OSError(5, "Input/output error", "/out/x.npy"), "could not read or write /out/x.npy: Input/output error"),
    (lambda: MemoryError(), "out of memory; reduce --batch-size (now 64) or --ntest (now 1000)"),
])
def test_errors_during_the_run_are_one_line(error, message, monkeypatch, capsys):
    from crosssim_nb.cli import main
    def fail(*args, **kwargs): raise error()
    calls_of_run_inference(monkeypatch, fail)
    with pytest.raises(SystemExit) as exit:
        main(["run", "--model", "mnist_mlp", "--batch-size", "64", "--no-progress"])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_ctrl_c_is_one_line_and_status_130(monkeypatch, capsys):
    from crosssim_nb.cli import main
    def interrupt(*args, **kwargs): raise KeyboardInterrupt
    calls_of_run_inference(monkeypatch, interrupt)
    assert main(["run", "--model", "mnist_mlp", "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["crosssim-nb run: interrupted (finished results that were written are kept)"]


def test_a_bug_keeps_its_traceback(monkeypatch):
    from crosssim_nb.cli import main
    def bug(*args, **kwargs): raise KeyError("not a user error")
    calls_of_run_inference(monkeypatch, bug)
    with pytest.raises(KeyError): main(["run", "--model", "mnist_mlp", "--no-progress"])


def test_full_disk_on_the_result_keeps_the_old_file(tmp_path, monkeypatch, capsys):
    "The run finishes, --json cannot be written: one line naming the file and that the old one is intact; the summary is printed."
    import errno
    from crosssim_nb import InferenceConfig
    from crosssim_nb.cli import main
    from crosssim_nb.inference import InferenceResult
    result = InferenceResult(model_name="mnist_mlp", dataset="mnist", config=InferenceConfig(), topk=(1,),
                             float_accuracy=np.array([0.98]), accuracies=np.array([[0.97]]), ntest=10, seconds_per_image=1e-3,
                             float_seconds_per_image=1e-4, nruns_requested=1)
    calls_of_run_inference(monkeypatch, result)
    (tmp_path / "r.json").write_text('{"old": true}\n')
    def full(self, *args, **kwargs): raise OSError(errno.ENOSPC, "No space left on device", str(self))
    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(SystemExit) as exit:
        main(["run", "--model", "mnist_mlp", "--no-progress", "--json", str(tmp_path / "r.json")])
    captured = capsys.readouterr()
    assert exit.value.code == 2
    assert captured.err.strip().splitlines() == [
        f"crosssim-nb run: error: --json: could not write {tmp_path / 'r.json'}: the disk is full (No space left on device); "
        "the existing file is intact (files are written to a temporary name and renamed); free some space and run again; "
        "the summary was printed above instead"]
    assert json.loads(captured.out[captured.out.index("{"):])["model"] == "mnist_mlp"
    monkeypatch.undo()
    assert (tmp_path / "r.json").read_text() == '{"old": true}\n' and [p.name for p in tmp_path.iterdir()] == ["r.json"]


# --- --config takes CrossSim files -----------------------------------------------------------------------------------------

CROSSSIM = Path(__file__).parent / "data" / "crosssim"


def test_crosssim_parameters_json_runs_with_its_settings(monkeypatch, capsys):
    "A CrossSim 3.2 parameters JSON as --config: told apart by content, every setting listed as read or ignored, flags over it."
    from crosssim_nb import InferenceConfig
    from crosssim_nb.cli import main
    calls = calls_of_run_inference(monkeypatch)
    assert main(["run", "--config", str(CROSSSIM / "wires_1ohm_cubic.json"), "--model", "mnist_mlp", "--adc-bits", "12",
                 "--no-progress", "--crosssim-report"]) == 0
    (model, dataset, config), _ = calls[0]
    expected = InferenceConfig.from_crosssim(CROSSSIM / "wires_1ohm_cubic.json").replace(adc_bits=12)
    assert (model, dataset, config) == ("mnist_mlp", "mnist", expected)
    assert config.rp_row == 1.0 and config.nonlinear_iv == "Cubic"            # 1-ohm wires stay 1 ohm
    err = capsys.readouterr().err
    assert "wires_1ohm_cubic.json: a CrossSim file (" in err and "settings read," in err
    assert "  read:    xbar.array.parasitics.Rp_row = 1" in err and "-> rp_row=1.0" in err
    assert "  ignored: " in err and "Traceback" not in err


def test_crosssim_inference_config_py_gives_the_run(monkeypatch, capsys):
    "inference_config.py: read without running it; its run settings (dataset, ntest, ...) apply unless a flag sets them."
    from crosssim_nb import InferenceConfig
    from crosssim_nb.cli import main
    calls = calls_of_run_inference(monkeypatch)
    source = CROSSSIM / "inference_config.py"
    with pytest.raises(SystemExit) as exit:                               # its model (CNN6_v2) is not in the zoo: say so
        main(["run", "--config", str(source), "--no-progress"])
    assert exit.value.code == 2 and not calls
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"crosssim-nb run: error: --model is needed: --config {source} names a model this run cannot take (CrossSim's model 'CNN6_v2'")
    assert main(["run", "--config", str(source), "--model", "mnist_mlp", "--ntest", "20", "--no-progress"]) == 0
    err = capsys.readouterr().err                                         # without --crosssim-report: the hardware in one line
    assert "; --crosssim-report lists each:" in err and "  hardware: InferenceConfig defaults" in err   # CrossSim's own defaults are ours
    assert "  read:    " not in err and "  ignored: " not in err and len(err.splitlines()) < 12
    assert main(["run", "--config", str(source), "--model", "mnist_mlp", "--ntest", "20", "--no-progress", "--crosssim-report"]) == 0
    (model, dataset, config), kwargs = calls[1]
    assert (model, dataset, kwargs["ntest"], kwargs["nstart"], kwargs["topk"]) == ("mnist_mlp", "mnist", 20, 0, (1,))
    assert config == InferenceConfig.from_crosssim(source) and config.dac_bits == 8 and config.nrows_max == 1152
    err = capsys.readouterr().err
    assert "  read:    NrowsMax = 1152 -> nrows_max=1152" in err and "  ignored: gpu_num = 0" in err
    assert "run settings taken from it: dataset=mnist, nstart=0, topk=[1]" in err and "overrides: ntest" in err
    assert "ignored by `crosssim-nb run`: return_outputs (on the command line: --save-outputs FILE)" in err


def test_crosssim_file_with_refused_settings_is_one_line(tmp_path, capsys):
    from crosssim_nb.cli import main
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nNrowsMax = os.cpu_count()\n")                # code is refused, never run
    with pytest.raises(SystemExit) as exit: main(["run", "--config", str(bad), "--model", "mnist_mlp", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit.value.code == 2 and len(err) == 1 and str(bad) in err[0] and "Traceback" not in err[0]


def test_our_own_config_is_not_taken_for_a_crosssim_file(tmp_path, monkeypatch, capsys):
    from crosssim_nb import InferenceConfig
    from crosssim_nb.cli import main
    calls = calls_of_run_inference(monkeypatch)
    InferenceConfig(weight_bits=6, adc_bits=6, adc_range_option="MAX").to_file(tmp_path / "hw.json")
    assert main(["run", "--config", str(tmp_path / "hw.json"), "--model", "mnist_mlp", "--no-progress"]) == 0
    assert calls[0][0][2] == InferenceConfig(weight_bits=6, adc_bits=6, adc_range_option="MAX")
    assert "CrossSim" not in capsys.readouterr().err


def test_sweep_on_a_full_disk_is_one_line_and_keeps_the_table(tmp_path, monkeypatch, capsys):
    "crosssim-nb sweep: points and results.csv cannot be written -> one error line, status 2; the old results.csv is whole."
    import errno
    from crosssim_nb import sweep
    from crosssim_nb.cli import main
    notebook = Path(__file__).parent / "data" / "sweep_tiny.ipynb"
    def execute(task):
        return {"point_id": task["point_id"], "status": "ok", "notebook_text": None, "error": None,
                "result_text": json.dumps({"runs": [{"run": 0, "accuracy": 1 - task["parameters"]["alpha"]}]})}
    monkeypatch.setattr(sweep, "_execute_point", execute)
    (tmp_path / "grid.yaml").write_text("grid: {alpha: [0.1]}\n")
    assert main(["sweep", str(notebook), str(tmp_path / "grid.yaml"), "--out", str(tmp_path / "out"), "--scheduler", "serial"]) == 0
    before = (tmp_path / "out" / "results.csv").read_bytes()
    capsys.readouterr()
    (tmp_path / "grid.yaml").write_text("grid: {alpha: [0.1, 0.2]}\n")
    real_write_text = Path.write_text
    def full(self, *args, **kwargs):
        if self.name != "sweep.json" and not self.name.startswith(".sweep.json"): raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write_text(self, *args, **kwargs)
    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(SystemExit) as exit:
        main(["sweep", str(notebook), str(tmp_path / "grid.yaml"), "--out", str(tmp_path / "out"), "--scheduler", "SERIAL"])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert exit.value.code == 2 and len(errors) == 1, errors
    assert errors[0].startswith("crosssim-nb sweep: error: the disk is full: 1 of 2 points could not be written")
    assert f"{tmp_path / 'out' / 'results.csv'} could not be saved" in errors[0] and "the previous one is intact" in errors[0]
    monkeypatch.undo()
    assert (tmp_path / "out" / "results.csv").read_bytes() == before


def test_calibrate_on_a_full_disk_keeps_the_old_limits(tmp_path, monkeypatch, capsys):
    "The finding of the issue: a full disk destroyed an existing limits.json. Now: one line, status 2, the old file whole."
    import errno
    from crosssim_nb.cli import main
    limits = tmp_path / "limits.json"
    limits.write_text('{"old": "limits"}\n')
    real_write_text = Path.write_text
    def full(self, data, *args, **kwargs):
        if self.parent == tmp_path:                                       # the disk fills half-way through the new file
            real_write_text(self, data[: len(data) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write_text(self, data, *args, **kwargs)
    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(SystemExit) as exit:
        main(["calibrate", "--model", "mnist_mlp", "--adc-bits", "6", "--calibration-samples", "50", "--no-progress",
              "--output", str(limits)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit.value.code == 2 and len(err) == 1, err
    assert err[0] == (f"crosssim-nb calibrate: error: --output: could not write {limits}: the disk is full (No space left on device); "
                      "the existing file is intact (files are written to a temporary name and renamed); free some space and run again")
    monkeypatch.undo()
    assert limits.read_text() == '{"old": "limits"}\n' and [p.name for p in tmp_path.iterdir()] == ["limits.json"]


def test_crosssim_file_of_an_older_version_reads_its_wires_in_units_of_rmin(monkeypatch, capsys):
    "params_64.json (CrossSim 3.0's tutorial) gives Rp in units of Rmin: the warning names --rp-units, which reads them so."
    from crosssim_nb.cli import main
    calls = calls_of_run_inference(monkeypatch)
    source = CROSSSIM / "params_64.json"
    assert main(["run", "--config", str(source), "--model", "mnist_mlp", "--no-progress"]) == 0
    assert calls[0][0][2].rp_row == 5e-05 and "--rp-units rmin on the command line" in capsys.readouterr().err
    assert main(["run", "--config", str(source), "--model", "mnist_mlp", "--no-progress", "--rp-units", "rmin"]) == 0
    assert calls[1][0][2].rp_row == pytest.approx(5e-05 * calls[1][0][2].rmin)          # 0.05 ohm at Rmin = 1 kΩ
