"""Issue 31, the front door: ADC ranges calibrated when none are given, remedies by cause, when the ADCs are calibrated
under drift, device presets on the command line, warnings for settings far outside published device ranges, and the
small labels (CI from few runs, core-demo's headline number, a file model's dataset)."""
import json, os, subprocess, sys, warnings
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
from crosssim_nb import InferenceConfig
import crosssim_nb.crosssim_compat  # noqa: F401  (InferenceConfig.preset)
from crosssim_nb.inference import InferenceResult, run_inference, calibration_config, _outcome_warnings
from crosssim_nb.adc_health import HEALTH_COLUMNS
from crosssim_nb.device_models import PhysicalRangeWarning, physical_range_notes, device_config, max_conductance_uS
from crosssim_nb.cli import build_parser, config_from_arguments

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MPLBACKEND": "Agg"}
SCRIPT = Path(sys.executable).parent / "crosssim-nb"
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "crosssim_nb.cli"]
AUTOMATIC = "calibrated automatically (optimal, 100 training images) because adc_range_option=CALIBRATED and no limits were given"

def cli(*args):
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, env=ENV, timeout=600)

def parsed_config(*argv):
    "The config `crosssim-nb run ARGV` would use (in process: no model is loaded)."
    parser = build_parser()
    args = parser.parse_args(["run", *argv])
    subparser = parser._subparsers._group_actions[0].choices["run"]
    args.given = set()
    return config_from_arguments(args, subparser)

# --- item 3: --adc-bits 8 alone -----------------------------------------------------------------------------------

def test_cli_adc_bits_alone_calibrates_automatically_and_says_so(tmp_path):
    out = cli("run", "--model", "mnist_mlp", "--adc-bits", "8", "--ntest", "60", "--calibration-samples", "100",
              "--no-progress", "--json", str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"ADC ranges: {AUTOMATIC}" in out.stdout
    summary = json.loads((tmp_path / "r.json").read_text())
    assert summary["adc_ranges"] == AUTOMATIC and summary["mean"][0] > 0.9

def test_run_inference_calibrates_automatically_or_names_adc_calibration_first():
    from crosssim_nb.data import load_dataset
    result = run_inference("mnist_mlp", "mnist", InferenceConfig(adc_bits=8), ntest=100, calibration_samples=100, progress=False)
    assert result.adc_ranges == AUTOMATIC and result.mean[0] > 0.9
    assert result.summary()["adc_ranges"] == AUTOMATIC
    x, y = load_dataset("mnist", ntest=20)                   # arrays and no calibration images: an error, before any work
    with pytest.raises(ValueError) as caught:
        run_inference("mnist_mlp", (x / 255.0, y), InferenceConfig(adc_bits=8), progress=False, input_ranges={})
    message = str(caught.value)
    assert "adc_calibration='optimal'" in message and message.index("adc_calibration='optimal'") < message.index("'MAX'")

def test_cli_prime_preset_runs():
    out = cli("run", "--model", "mnist_mlp", "--preset", "prime", "--ntest", "40", "--calibration-samples", "50", "--no-progress")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ADC ranges: calibrated automatically (optimal, 50 training images)" in out.stdout

# --- item 5: when the ADCs are calibrated under drift ---------------------------------------------------------------

SONOS_DRIFT = device_config("SONOS", t_drift=3.0)

def test_calibration_config_profiles_at_deployment_or_evaluation():
    assert InferenceConfig().adc_calibration_time == "deployment"          # what a real chip does: calibrated once, when deployed
    deployed, note = calibration_config(SONOS_DRIFT)
    assert deployed.t_drift == 0 and deployed.adc_range_option == "MAX" and "adc_calibration_time='deployment'" in note
    evaluated, note = calibration_config(SONOS_DRIFT.replace(adc_calibration_time="evaluation"))
    assert evaluated.t_drift == 3.0 and "adc_calibration_time='evaluation'" in note
    assert calibration_config(InferenceConfig(adc_bits=8))[1] == ""          # nothing drifts: nothing to say
    from crosssim_nb.calibration import RANGE_SETTINGS
    assert "adc_calibration_time" in RANGE_SETTINGS                          # limits files record it

@pytest.mark.parametrize("when, profiled_at", [("deployment", 0.0), ("evaluation", 3.0)])
def test_run_inference_calibrates_at_the_configured_time(monkeypatch, when, profiled_at):
    import crosssim_nb.calibration as calibration
    seen, original = [], calibration.calibrate_adc
    def spy(net, *args, **kwargs):
        seen.append(net.config.t_drift)
        return original(net, *args, **kwargs)
    monkeypatch.setattr(calibration, "calibrate_adc", spy)
    config = SONOS_DRIFT.replace(weight_bits=8, dac_bits=8, adc_bits=8, adc_calibration_time=when)
    result = run_inference("mnist_mlp", "mnist", config, ntest=50, calibration_samples=50, progress=False)
    assert seen == [profiled_at]
    assert f"adc_calibration_time='{when}'" in result.adc_ranges and f"adc_calibration_time='{when}'" in str(result)

# --- item 4: remedies by cause ----------------------------------------------------------------------------------

def _result(config, status="ok", adc_ranges="optimal calibration on the same 500 training images"):
    "A finished run at chance accuracy (10 %) of a 10-class model whose float accuracy is 98 %, with this health."
    health = pd.DataFrame([dict(layer="dense1", adc_bits=config.adc_bits, adc_range_option=str(config.adc_range_option.value),
                                conversions=1000, zero_fraction=0.95 if status != "ok" else 0.3, clipped_low_fraction=0.0,
                                clipped_high_fraction=0.0, clipped_fraction=0.0, status=status)], columns=HEALTH_COLUMNS)
    return InferenceResult(model_name="m", dataset="mnist", config=config, topk=(1,), float_accuracy=np.array([0.98]),
                           accuracies=np.array([[0.1]]), ntest=100, seconds_per_image=1e-3, float_seconds_per_image=1e-4,
                           nruns_requested=1, adc_health=health, adc_ranges=adc_ranges)

ADC8 = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8)
CAUSES = {  # cause -> (config, status, adc_ranges, text of its remedy)
    "drift": (device_config("SONOS", base=ADC8, t_drift=3.0), "ok", "x", "drift_compensation='global'"),
    "wires": (ADC8.replace(rp_row=0.5), "ok", "x", "rp_row=0.5 Ω with rmin=1000 Ω"),
    "mismatch": (ADC8.replace(adc_type="sar", sigma_capacitor=0.05), "ok", "x", "sigma_capacitor=0.05"),
    "uncalibrated": (ADC8.replace(adc_range_option="MAX"), "mostly zero", "", "calibrate the ADC ranges"),
    "calibrated": (ADC8, "mostly zero", "x", "use more ADC bits or adc_range_option='GRANULAR'"),
}

@pytest.mark.parametrize("cause", sorted(CAUSES))
def test_chance_warning_names_its_cause_and_no_other(cause):
    config, status, adc_ranges, remedy = CAUSES[cause]
    [message] = _outcome_warnings(_result(config, status, adc_ranges), n_classes=10)
    assert "close to chance" in message and remedy in message, message
    for other, (_, _, _, text) in CAUSES.items():
        if other != cause: assert text not in message, (other, message)

def test_chance_warning_without_a_known_cause_keeps_the_general_advice():
    [message] = _outcome_warnings(_result(ADC8), n_classes=10)
    assert "check the programming error, read noise and weight bits" in message
    assert "calibrate the ADC ranges" not in message          # healthy, calibrated ADCs: not the ADCs

# --- item 6: device presets on the command line -----------------------------------------------------------------

def test_cli_device_applies_the_measured_range_and_flags_win():
    config = parsed_config("--device", "sonos", "--t-drift", "3")
    assert (config.rmin, config.vread, config.error_model, config.drift_model, config.t_drift) == (35e3, 0.06, "SONOS", "SONOS", 3.0)
    assert parsed_config("--device", "SONOS", "--rmin", "40000").rmin == 40000
    assert parsed_config("--device", "PCMJoshi").rmax == 4e6

def test_error_model_sonos_alone_names_the_device_preset(capsys):
    with pytest.raises(SystemExit):
        parsed_config("--error-model", "SONOS")
    error = capsys.readouterr().err
    assert "--device SONOS" in error and "rmin=1000" in error

def test_sonos_tcas_preset_drifts_with_its_own_settings():
    config = InferenceConfig.preset("SONOS-TCAS", t_drift=3)
    assert config.vread == 0.06 and config.t_drift == 3
    assert parsed_config("--preset", "SONOS-TCAS", "--t-drift", "3").vread == 0.06
    assert InferenceConfig.preset("SONOS-TCAS", vread=0.05).vread == 0.05       # the caller's setting wins

# --- item 9: far outside published device ranges ----------------------------------------------------------------------

def test_physical_range_warning_once_per_run_with_the_suggestion():
    assert max_conductance_uS(device_config("PCMLike")) == pytest.approx(25.0)
    config = InferenceConfig(error_model="PCMLike")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_inference("mnist_mlp", "mnist", config, ntest=50, progress=False)
    physical = [str(w.message) for w in caught if issubclass(w.category, PhysicalRangeWarning)]
    assert len(physical) == 1 and "Gmax = 1000 µS" in physical[0] and "rmin=40000 Ω" in physical[0]
    assert physical[0] in result.warnings
    [wire] = physical_range_notes(InferenceConfig(rp_row=0.5))
    assert "wire/device ratio 0.0005 is ~50x" in wire and "rmin=50000 Ω" in wire and "--device NAME" in wire
    assert physical_range_notes(device_config("SONOS", rp_row=0.5)) == []

# --- item 10: small things ----------------------------------------------------------------------------------------

def _runs(n):
    return InferenceResult(model_name="m", dataset="mnist", config=InferenceConfig(), topk=(1,), float_accuracy=np.array([0.98]),
                           accuracies=np.linspace(0.90, 0.92, n)[:, None], ntest=100, seconds_per_image=1e-3,
                           float_seconds_per_image=1e-4, nruns_requested=n)

def test_ci_from_few_runs_carries_a_note():
    assert "use >= 5 runs for an interval" in str(_runs(2)) and "from 2 runs" in _runs(2).summary()["ci95_note"]
    assert "use >= 5 runs" not in str(_runs(5)) and _runs(5).summary()["ci95_note"] is None

def test_core_demo_explains_its_number(capsys):
    from crosssim_nb.cli import core_demo, _print_core_demo
    _print_core_demo(core_demo(n_vectors=16))
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("relative error"))
    assert "‖analog − exact‖ / ‖exact‖" in line and "0 = exact" in line

def test_file_model_result_is_labelled_with_its_dataset(tmp_path):
    from crosssim_nb import zoo
    from crosssim_nb.data import load_dataset
    model, preprocess = zoo.load("mnist_mlp")
    model.save(tmp_path / "my_cnn.keras")
    data = load_dataset("mnist", ntest=30)
    data_ready = type(data)(preprocess(data.x), data.y, data.name, data.split, data.source)
    result = run_inference(str(tmp_path / "my_cnn.keras"), data_ready, InferenceConfig.ideal(), ntest=None, progress=False)
    assert str(result).startswith("crosssim_nb inference: my_cnn on mnist (30 images)")

def test_end_to_end_mismatch_collapse_names_the_sigma_settings_not_calibration():
    config = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_type="sar", sigma_comparator=0.5, sigma_capacitor=0.25)
    result = run_inference("mnist_mlp", "mnist", config, ntest=200, calibration_samples=100, progress=False)
    [message] = [w for w in result.warnings if "close to chance" in w]
    assert "sigma_capacitor=0.25, sigma_comparator=0.5" in message and "lower the σ settings" in message
    assert "calibrate the ADC ranges" not in message and "drift_compensation" not in message and "rp_" not in message
