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
    run = cli("run", "--model", "mnist_mlp", "--config", str(tmp_path / "hw.yaml"), "--adc-limits", str(tmp_path / "limits.json"),
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
