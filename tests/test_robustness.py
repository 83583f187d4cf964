"""Integrity under bad input and faults: every careless or hostile input gets a named error before work starts,
and nothing finished is lost. Each case asserts the error type and that the message names the field or the file."""
import contextlib, errno, io, json, os, re, signal, subprocess, sys, tempfile, warnings
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras

from crosssim_nb import sweep
from crosssim_nb.calibration import Calibration, CalibrationFileError, calibrate_adc, calibration_of, plain_limits
from crosssim_nb.cli import main
from crosssim_nb.config import InferenceConfig
from crosssim_nb.files import FileFormatError
from crosssim_nb.core import AnalogCore, NonFiniteResultError
from crosssim_nb.inference import run_inference
from crosssim_nb.keras_import import UnsupportedLayerError, load_keras_model
from crosssim_nb.network import AnalogNetwork

HW = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=5, adc_range_option="MAX")


# ---------------------------------------------------------------- shared small network (built once)
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    "A 6-5-3 Dense model, its .keras file, calibration images and a JSON calibration of it (5-bit ADC)."
    folder = tmp_path_factory.mktemp("tiny")
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="relu", name="hidden"),
                              keras.layers.Dense(3, name="out")], name="tiny")
    x = np.random.default_rng(0).uniform(0, 1, (40, 6)).astype(np.float32)
    y = np.argmax(model.predict(x, verbose=0), axis=1)
    net = AnalogNetwork.from_keras(model, HW, calibration_data=x, input_nonnegative=True)
    calibration = calibrate_adc(net, x)
    limits = calibration.save(folder / "limits.json")
    model.save(folder / "tiny.keras")
    return dict(model=model, x=x, y=y, net=net, calibration=calibration, limits=limits, folder=folder)


def edited(tiny, name, change=None, text=None):
    "A copy of the calibration file with `change(data)` applied (or raw `text`)."
    path = tiny["folder"] / name
    if text is None:
        data = json.loads(tiny["limits"].read_text())
        change(data)
        text = json.dumps(data)
    path.write_text(text)
    return path


def names_file(error, path):
    assert str(path) in str(error), f"the message does not name {path}: {error}"


# ---------------------------------------------------------------- 1. calibration files cannot be fooled
def test_sorted_keys_calibration_is_still_a_calibration(tiny):
    path = edited(tiny, "sorted.json", text=json.dumps(json.loads(tiny["limits"].read_text()), sort_keys=True, indent=1))
    net = AnalogNetwork.from_keras(tiny["model"], HW.replace(adc_range_option="CALIBRATED"), adc_limits=path, input_nonnegative=True)
    assert np.allclose(net.cores["hidden"].adc_limits.reshape(-1, 2)[0], tiny["calibration"].adc_limits["hidden"][0])


def _pop(key): return lambda d: d.pop(key)
def _set(key, value): return lambda d: d.__setitem__(key, value)
def _settings(key, value=None, delete=False):
    def change(d):
        if delete: d["settings"].pop(key)
        else: d["settings"][key] = value
    return change
def _forge(d): d.pop("format"); d["model_name"] = "other"; d["weights_hash"] = "0" * 64

CALIBRATION_EDITS = [
    ("no_format", _pop("format"), "not a crosssim_nb limits file"),
    ("forged_identity", _forge, "not a crosssim_nb limits file"),
    ("wrong_format", _set("format", "crosssim_nb limits v0"), "format='crosssim_nb limits v0'"),
    ("settings_null", _set("settings", None), "settings=None must be a mapping"),
    ("settings_text", _set("settings", "8 bits"), "settings='8 bits' must be a mapping"),
    ("settings_key_deleted", _settings("adc_bits", delete=True), "settings lacks adc_bits"),
    ("settings_unknown_key", _settings("adc_bitz", 5), "settings has unknown key(s) 'adc_bitz'"),
    ("settings_bad_value", _settings("weight_bits", 1), "settings: weight_bits=1 is not allowed"),
    ("version_99", _set("version", 99), "version=99 is not supported"),
    ("version_missing", _pop("version"), "version=None is not supported"),
    ("input_ranges_null", _set("input_ranges", None), "input_ranges=None must be a mapping"),
    ("limits_text", lambda d: d["adc_limits"].__setitem__("hidden", [["low", "high"]]), "adc_limits['hidden'] must be numbers"),
    ("limits_reversed", lambda d: d["adc_limits"].__setitem__("hidden", [[2.0, -1.0]]), "adc_limits['hidden'] needs lo < hi"),
    ("limits_nan", lambda d: d["adc_limits"].__setitem__("out", [[float("nan"), 1.0]]), "adc_limits['out'] holds a non-finite"),
    ("limits_empty", _set("adc_limits", {}), "adc_limits={} must be a non-empty mapping"),
    ("hash_malformed", _set("weights_hash", "abc"), "weights_hash='abc' must be 64 hexadecimal digits"),
    ("model_name_missing", _pop("model_name"), "the key 'model_name' is missing"),
    ("method_unknown", _set("method", "median"), "method='median' is not allowed"),
    ("percentile_bad", _set("percentile", 150), "percentile=150 must be a number in (0, 100]"),
    ("orphan_limits", lambda d: d["input_ranges"].pop("out"), "adc_limits names layer(s) without an input range: 'out'"),
]

@pytest.mark.parametrize("name, change, message", CALIBRATION_EDITS, ids=[c[0] for c in CALIBRATION_EDITS])
def test_edited_calibration_is_refused_naming_the_field(tiny, name, change, message):
    path = edited(tiny, f"{name}.json", change)
    with pytest.raises(CalibrationFileError) as info:
        AnalogNetwork.from_keras(tiny["model"], HW.replace(adc_range_option="CALIBRATED"), adc_limits=path, input_nonnegative=True)
    assert message in str(info.value), str(info.value)
    names_file(info.value, path)


def test_calibration_of_another_model_says_so(tiny):
    path = edited(tiny, "other_model.json", _set("model_name", "mnist_cnn"))
    with pytest.raises(CalibrationFileError) as info:
        AnalogNetwork.from_keras(tiny["model"], HW.replace(adc_range_option="CALIBRATED"), adc_limits=path, input_nonnegative=True)
    assert "was made for model 'mnist_cnn', not for 'tiny'" in str(info.value)
    names_file(info.value, path)


def test_calibration_of_other_weights_says_so(tiny):
    other = keras.models.clone_model(tiny["model"]); other.set_weights([w * 1.5 for w in tiny["model"].get_weights()])
    with pytest.raises(CalibrationFileError) as info:
        AnalogNetwork.from_keras(other, HW.replace(adc_range_option="CALIBRATED"), adc_limits=tiny["limits"], input_nonnegative=True)
    assert "model weights differ" in str(info.value)
    names_file(info.value, tiny["limits"])


def test_calibration_for_other_adc_bits_is_refused(tiny):
    with pytest.raises(CalibrationFileError) as info:
        AnalogNetwork.from_keras(tiny["model"], HW.replace(adc_bits=4, adc_range_option="CALIBRATED"), adc_limits=tiny["limits"],
                                 input_nonnegative=True)
    assert "adc_bits: limits made for 5, config has 4" in str(info.value)
    names_file(info.value, tiny["limits"])


def test_plain_mapping_file_needs_plain_limits(tiny):
    path = edited(tiny, "plain.json", text=json.dumps(tiny["calibration"].adc_limits))
    with pytest.raises(CalibrationFileError) as info: calibration_of(path)
    assert "plain_limits(path)" in str(info.value)
    names_file(info.value, path)
    with pytest.warns(UserWarning, match="nothing is checked"):
        assert plain_limits(path) == tiny["calibration"].adc_limits


def test_plain_limits_refuses_bad_values_naming_the_layer(tiny):
    path = edited(tiny, "plain_bad.json", text=json.dumps({"hidden": "wide"}))
    with pytest.raises(CalibrationFileError) as info: plain_limits(path)
    assert "['hidden']" in str(info.value)
    names_file(info.value, path)


def test_limits_file_with_other_suffix_is_refused(tiny):
    path = tiny["folder"] / "limits.npz"
    np.savez(path, hidden=np.array([-1.0, 1.0]))
    with pytest.raises(CalibrationFileError) as info: calibration_of(path)
    assert "suffix '.npz' not allowed" in str(info.value)
    names_file(info.value, path)


def test_calibration_yaml_with_duplicate_key_names_line(tiny):
    path = tiny["folder"] / "twice.yaml"
    tiny["calibration"].save(path)
    path.write_text(path.read_text() + "method: max\n")
    with pytest.raises(FileFormatError) as info: Calibration.load(path)
    assert "duplicate key 'method'" in str(info.value) and "line " in str(info.value)
    names_file(info.value, path)


def test_missing_limits_file_is_named(tiny):
    path = tiny["folder"] / "nowhere.json"
    with pytest.raises(FileNotFoundError) as info: Calibration.load(path)
    assert "no such file" in str(info.value)
    names_file(info.value, path)


# ---------------------------------------------------------------- 3. arguments that were silently wrong
BAD_RUN_ARGUMENTS = [
    (dict(nstart=-1), ValueError, "nstart=-1 is not allowed"),
    (dict(nstart=500), ValueError, "nstart=500 is past the end"),
    (dict(nruns=2.7), TypeError, "nruns=2.7 must be an integer"),
    (dict(input_nonnegative="no"), TypeError, "input_nonnegative='no' must be True, False or None"),
    (dict(ntest="10"), TypeError, "ntest='10' must be an integer"),
    (dict(calibration_samples=0), ValueError, "calibration_samples=0 is not allowed"),
    (dict(calibration_samples=-5), ValueError, "calibration_samples=-5 is not allowed"),
    (dict(batch_size=0), ValueError, "batch_size=0 is not allowed"),
    (dict(topk=1.5), TypeError, "topk=1.5 must be a positive integer"),
    (dict(topk=(0,)), ValueError, "topk=(0,) is not allowed"),
    (dict(progress="yes"), TypeError, "progress='yes' must be True or False"),
    (dict(adc_calibration="median"), ValueError, "adc_calibration='median' is not allowed"),
    (dict(layer_overrides=["digital"]), TypeError, "layer_overrides must be a dict"),
    (dict(layer_overrides={"hiddn": "digital"}), ValueError, "layer_overrides: 'hiddn' is not an analog layer"),
]

@pytest.mark.parametrize("changes, kind, message", BAD_RUN_ARGUMENTS, ids=[next(iter(c[0])) + "=" + repr(next(iter(c[0].values())))
                                                                         for c in BAD_RUN_ARGUMENTS])
def test_bad_run_inference_arguments_are_named(tiny, changes, kind, message):
    with pytest.raises(kind) as info:
        run_inference(tiny["model"], (tiny["x"], tiny["y"]), InferenceConfig.ideal(), **{"progress": False, **changes})
    assert message in str(info.value), str(info.value)


@pytest.mark.parametrize("labels, message", [
    (lambda y: np.full_like(y, 3), "labels must be class indices 0..2 of the model's 3 outputs; got values from 3 to 3"),
    (lambda y: np.full_like(y, -1), "labels must be class indices 0..2 of the model's 3 outputs; got values from -1"),
    (lambda y: np.concatenate([[0.7], y[1:]]), "labels must be integer class indices (or one-hot rows); got 0.7"),
])
def test_labels_must_be_class_indices(tiny, labels, message):
    with pytest.raises(ValueError, match="labels") as info:
        run_inference(tiny["model"], (tiny["x"], labels(tiny["y"].copy())), InferenceConfig.ideal(), progress=False)
    assert message in str(info.value)


def test_complex_inputs_are_refused(tiny):
    with pytest.raises(TypeError, match="complex"):
        run_inference(tiny["model"], (tiny["x"] + 1j, tiny["y"]), InferenceConfig.ideal(), progress=False)
    with pytest.raises(TypeError) as info: tiny["net"].predict(tiny["x"] * (1 + 0j))
    assert "input" in str(info.value) and "complex" in str(info.value)


@pytest.mark.parametrize("config, layer_cause", [
    (InferenceConfig.ideal(error_model="generic", alpha_error=1e308), "alpha_error=1e+308"),
    (InferenceConfig.ideal(noise_model="generic", alpha_noise=1e30), "alpha_noise=1e+30"),
])
def test_overflowing_settings_name_layer_and_cause(tiny, config, layer_cause):
    with pytest.raises(NonFiniteResultError) as info:
        run_inference(tiny["model"], (tiny["x"], tiny["y"]), config, progress=False)
    assert "AnalogCore 'hidden'" in str(info.value) and layer_cause in str(info.value)


def test_huge_weights_name_layer(tiny):
    huge = keras.models.clone_model(tiny["model"]); huge.set_weights([w * 1e300 for w in tiny["model"].get_weights()])
    with pytest.raises(ValueError) as info: AnalogNetwork.from_keras(huge, InferenceConfig.ideal())
    assert "AnalogCore 'hidden'" in str(info.value) and "NaN or inf" in str(info.value)


def test_huge_limits_name_layer(tiny):
    limits = {"hidden": [-1e308, 1e308], "out": [-1.0, 1.0]}
    with pytest.raises(ValueError) as info:
        AnalogNetwork.from_keras(tiny["model"], HW.replace(adc_range_option="CALIBRATED"), adc_limits=limits,
                                 input_ranges={"hidden": 1.0, "out": 1.0})
    assert "AnalogCore 'hidden'" in str(info.value) and "too large for float32" in str(info.value)


W = np.random.default_rng(1).normal(size=(4, 6))
CORE_CASES = [
    ("name_not_text", lambda: AnalogCore(W, InferenceConfig(), name=123), TypeError, "name=123 must be a string"),
    ("empty_batch", lambda: AnalogCore(W, InferenceConfig(), name="c") @ np.ones((6, 0)), ValueError, "AnalogCore 'c': inputs must have shape (batch, 6) with batch >= 1"),
    ("drive_rows", lambda: AnalogCore(W, InferenceConfig(), name="c").apply_drives(np.ones((2, 5))), ValueError, "AnalogCore 'c': drive_rows must have shape (batch, 6)"),
    ("complex_input", lambda: AnalogCore(W, InferenceConfig(), name="c") @ (np.ones(6) * 1j), TypeError, "AnalogCore 'c': inputs is complex"),
    ("complex_drives", lambda: AnalogCore(W, InferenceConfig(), name="c").apply_drives(np.ones((2, 6)) + 0j), TypeError, "drive_rows is complex"),
    ("complex_matrix", lambda: AnalogCore(W + 1j, InferenceConfig(), name="c"), TypeError, "AnalogCore 'c': matrix is complex"),
    ("complex_bias", lambda: AnalogCore(W, InferenceConfig(), bias=np.ones(4) * 1j, name="c"), TypeError, "AnalogCore 'c': bias is complex"),
    ("ragged_matrix", lambda: AnalogCore([[1.0, 2.0], [3.0]], InferenceConfig(), name="c"), ValueError, "AnalogCore 'c': matrix must be a rectangular"),
    ("huge_float64_weights", lambda: AnalogCore(W * 1e300, InferenceConfig.ideal(), name="c"), NonFiniteResultError, "w_max="),
    ("overflowing_read", lambda: AnalogCore(W, InferenceConfig.ideal(), name="c") @ np.full(6, 3e38), NonFiniteResultError, "AnalogCore 'c': the outputs hold NaN or inf"),
]

@pytest.mark.parametrize("name, call, kind, message", CORE_CASES, ids=[c[0] for c in CORE_CASES])
def test_core_refuses_by_name(name, call, kind, message):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(kind) as info: call()
    assert message in str(info.value), str(info.value)


# ---------------------------------------------------------------- 4. contradictory or malformed configuration
CONTRADICTIONS = [
    (dict(adc_bits=0, adc_range_option="GRANULAR"), "adc_range_option='GRANULAR' needs an ADC, but adc_bits=0"),
    (dict(style="OFFSET", balanced_style="TWO_SIDED"), "balanced_style='TWO_SIDED' applies to BALANCED pairs only"),
    (dict(style="OFFSET", subtract_current_in_xbar=False), "subtract_current_in_xbar=False applies to BALANCED pairs only"),
    (dict(error_distribution="uniform"), "error_distribution='uniform' has no effect with error_model='none'"),
    (dict(noise_distribution="uniform"), "noise_distribution='uniform' has no effect with noise_model='none'"),
]

@pytest.mark.parametrize("changes, message", CONTRADICTIONS, ids=[",".join(c[0]) for c in CONTRADICTIONS])
def test_contradictions_are_refused(changes, message):
    with pytest.raises(ValueError) as info: InferenceConfig(**changes)
    assert message in str(info.value)


CONFIG_FILES = [
    ("twice.yaml", "adc_bits: 8\nseed: 1\nadc_bits: 6\n", FileFormatError, "line 3, column 1: duplicate key 'adc_bits'"),
    ("twice.json", '{"adc_bits": 8,\n "adc_bits": 6}', FileFormatError, "line 2, column 2: duplicate key 'adc_bits'"),
    ("broken.yaml", "adc_bits: 8\nstyle: [BALANCED\n", FileFormatError, "line 3, column 1: invalid YAML"),
    ("broken.json", '{"adc_bits": 8,\n "seed": }', FileFormatError, "line 2, column 10: invalid JSON"),
    ("latin1.yaml", "style: BALANCED\n# r\xe9sistance\n".encode("latin-1"), FileFormatError, "line 2, column 4: not UTF-8 text"),
    ("list.yaml", "- adc_bits: 8\n", TypeError, "a configuration must be a mapping"),
    ("typo.yaml", "adc_bitz: 8\n", ValueError, "unknown InferenceConfig field 'adc_bitz'"),
    ("nan.yaml", "error_model: generic\nalpha_error: .nan\n", ValueError, "alpha_error=nan must be a finite number"),
]

@pytest.mark.parametrize("name, text, kind, message", CONFIG_FILES, ids=[c[0] for c in CONFIG_FILES])
def test_malformed_config_files_name_file_line_column(tmp_path, name, text, kind, message):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(kind) as info: InferenceConfig.from_file(path)
    assert message in str(info.value), str(info.value)
    names_file(info.value, path)


def test_one_number_parser_for_config_and_sweep_files(tmp_path):
    (tmp_path / "hw.yaml").write_text("error_model: generic\nalpha_error: 1e-2\n")
    assert InferenceConfig.from_file(tmp_path / "hw.yaml").alpha_error == 0.01
    (tmp_path / "sweep.yaml").write_text("grid: {alpha: [1e-2, 2E-2]}\n")
    assert sweep.load_sweep_file(tmp_path / "sweep.yaml")["grid"]["alpha"] == [0.01, 0.02]


# ---------------------------------------------------------------- 5. the CLI: one line, exit 2, checked before work
def cli(argv, monkeypatch=None):
    "Run `crosssim-nb argv` in-process; (exit status, stderr, stdout). Work functions are made to fail if reached."
    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out): code = main(argv)
    except SystemExit as exit: code = exit.code
    return code, err.getvalue(), out.getvalue()


@pytest.fixture
def no_work(monkeypatch):
    "Any inference, calibration or sweep that starts is a test failure: errors must come before the work."
    import crosssim_nb.inference, crosssim_nb.calibration, crosssim_nb.sweep
    def forbidden(*args, **kwargs): raise AssertionError("work started before the error")
    monkeypatch.setattr(crosssim_nb.inference, "run_inference", forbidden)
    monkeypatch.setattr(crosssim_nb.calibration, "calibrate_adc", forbidden)
    monkeypatch.setattr(crosssim_nb.sweep, "main_sweep", forbidden)
    monkeypatch.setattr(crosssim_nb.inference, "resolve_model", forbidden)


def cli_cases(tiny_folder):
    d = tiny_folder
    return [
        (["run", "--model", "nosuch"], "--model: unknown model 'nosuch'; zoo models: fashion_inception"),
        (["run", "--model", "mnist_cnnn"], "--model: unknown model 'mnist_cnnn'; did you mean 'mnist_cnn'? zoo models:"),
        (["run", "--model", str(d / "missing.keras")], f"--model: no such file: {d / 'missing.keras'}"),
        (["run", "--dataset", "nosuch"], "--dataset: unknown dataset 'nosuch'; datasets: cifar10"),
        (["run", "--json", "/proc/nope/x.json"], "--json: the folder /proc/nope does not exist"),
        (["run", "--json", str(d)], f"--json: {d} is a folder"),
        (["run", "--save-outputs", str(d / "o.csv")], "--save-outputs: " + str(d / "o.csv") + " has suffix '.csv'; allowed: .npy"),
        (["calibrate", "--adc-bits", "5", "--output", str(d / "no" / "limits.json")], f"--output: the folder {d / 'no'} does not exist"),
        (["calibrate", "--adc-bits", "5", "--output", str(d / "limits.txt")], "has suffix '.txt'; allowed: .json, .yaml, .yml"),
        (["calibrate", "--output", str(d / "l.json")], "calibrate needs --adc-bits 2..32"),
        (["run", "--nstart", "-5"], "--nstart=-5 is not allowed; allowed: an integer >= 0"),
        (["run", "--topk", "0"], "--topk 0 is not allowed; allowed: positive integers"),
        (["run", "--batch-size", "0"], "--batch-size=0 is not allowed"),
        (["run", "--config", str(d / "hw_missing.yaml")], f"--config: no such file: {d / 'hw_missing.yaml'}"),
        (["run", "--config", str(d / "bad.yaml")], f"configuration file '{d / 'bad.yaml'}': line 2, column 1: invalid YAML"),
        (["run", "--adc-limits", str(d / "nolimits.json")], "--adc-limits: no such file"),
        (["run", "--adc-limits", str(d / "limits.json"), "--calibrate-adc", "optimal"], "give either --adc-limits FILE or --calibrate-adc METHOD, not both"),
        (["run", "--model", "mnist_mlp", "--adc-limits", str(d / "limits.json")],
         f"--adc-limits: limits file '{d / 'limits.json'}' was made for model 'tiny', not for 'mnist_mlp'"),
        (["run", "--model", str(d / "tiny.keras"), "--dataset", "mnist", "--adc-limits", str(d / "limits.json"), "--adc-bits", "4"],
         "was made for other settings; it does not fit this network/config: adc_bits: limits made for 5, config has 4"),
        (["run", "--model", str(d / "tiny.keras"), "--dataset", "mnist", "--adc-limits", str(d / "no_format.json")],
         "is not a crosssim_nb limits file"),
        (["run", "--style", "DIAGONAL"], "argument --style: invalid choice: 'DIAGONAL' (choose from BALANCED, OFFSET; any case)"),
        (["run", "--style", "offset", "--balanced-style", "two_sided"], "balanced_style='TWO_SIDED' applies to BALANCED pairs only"),
        (["calibrate", "--ntest", "5", "--output", "x.json"], "unrecognized arguments: --ntest 5"),
        (["sweep", str(d / "study.ipynb"), str(d / "grid.yaml"), "--out", str(d / "out")], f"sweep notebook: no such file: {d / 'study.ipynb'}"),
        (["sweep", str(d / "study_ok.ipynb"), str(d / "grid_missing.yaml"), "--out", str(d / "out")], "grid file: no such file"),
        (["sweep", str(d / "study_ok.ipynb"), str(d / "grid_ok.yaml"), "--out", str(d / "limits.json")], "exists and is not a folder"),
    ]


@pytest.fixture(scope="module")
def cli_folder(tiny):
    d = tiny["folder"]
    (d / "bad.yaml").write_text("adc_bits: [8\n")
    (d / "study_ok.ipynb").write_text("{}")
    (d / "grid_ok.yaml").write_text("grid: {alpha: [1]}\n")
    return d


@pytest.mark.parametrize("index", range(26))
def test_cli_user_mistake_is_one_line_exit_2(tiny, cli_folder, no_work, index):
    edited(tiny, "no_format.json", _pop("format"))
    argv, message = cli_cases(cli_folder)[index]
    code, err, _ = cli(argv)
    assert code == 2, (argv, err)
    assert message in err, (argv, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_cli_case_list_is_complete(cli_folder):
    assert len(cli_cases(cli_folder)) == 26


def test_cli_takes_hardware_settings_from_the_limits_file(tiny, monkeypatch):
    import crosssim_nb.inference
    seen = {}
    def fake_run(model, dataset, config, **kwargs):
        seen.update(config=config, adc_limits=kwargs["adc_limits"])
        raise KeyboardInterrupt                             # stop here: the settings are what this test checks
    monkeypatch.setattr(crosssim_nb.inference, "run_inference", fake_run)
    code, err, _ = cli(["run", "--model", str(tiny["folder"] / "tiny.keras"), "--dataset", "mnist", "--weight-bits", "8",
                        "--adc-limits", str(tiny["limits"])])
    assert code == 130 and seen["config"].adc_bits == 5 and seen["config"].adc_range_option == "CALIBRATED"
    assert f"--adc-limits: took adc_bits=5 from {tiny['limits']}" in err


def test_cli_help_has_meaning_unit_and_default():
    code, _, out = cli(["run", "--help"])
    text = " ".join(out.split())
    assert code == 0
    for piece in ("--rmin NUMBER device on-resistance in ohm, 1..1e12 (sets Gmin = rmin/rmax) (default: 1000.0)",
                  "--t-drift NUMBER time since programming in days", "--ntest N test images to evaluate (count; default: 1000)",
                  "--adc-bits INT ADC resolution in bits (0 = no ADC) (default: 0)", "any case"):
        assert piece in text, piece
    code, _, out = cli(["calibrate", "--help"])
    for unused in ("--ntest", "--topk", "--nstart", "--nruns", "--adc-range-option"):
        assert unused not in out, unused


def test_cli_enum_values_in_any_case(tiny, monkeypatch):
    import crosssim_nb.inference
    seen = {}
    def fake_run(model, dataset, config, **kwargs): seen["config"] = config; raise KeyboardInterrupt
    monkeypatch.setattr(crosssim_nb.inference, "run_inference", fake_run)
    code, _, _ = cli(["run", "--style", "offset", "--error-model", "GENERIC", "--alpha-error", "0.01", "--calibrate-adc", "Optimal",
                      "--adc-bits", "6"])
    assert code == 130 and seen["config"].style == "OFFSET" and seen["config"].error_model == "generic"


def test_cli_error_in_the_work_is_one_line_and_debug_raises_it(monkeypatch):
    import crosssim_nb.inference
    def failing(*args, **kwargs): raise ValueError("ntest=5000 is more than the 1000 test images of mnist")
    monkeypatch.setattr(crosssim_nb.inference, "run_inference", failing)
    code, err, _ = cli(["run", "--ntest", "5000"])
    assert code == 2 and err.strip() == ("crosssim-nb run: error: ntest=5000 is more than the 1000 test images of mnist "
                                         "(--debug shows the traceback)")
    with pytest.raises(ValueError, match="ntest=5000"): main(["run", "--ntest", "5000", "--debug"])


def test_cli_subprocess_one_line_and_debug_traceback():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    plain = subprocess.run([sys.executable, "-m", "crosssim_nb.cli", "run", "--dataset", "nosuch"], capture_output=True, text=True,
                           env=env, timeout=120)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines() == ["crosssim-nb run: error: --dataset: unknown dataset 'nosuch'; datasets: "
                                                 "cifar10, cifar100, fashion_mnist, imagenet, mnist"]
    folder = Path(tempfile.mkdtemp())
    (folder / "study.ipynb").write_text("{}"); (folder / "grid.yaml").write_text("grid: {alpha: [1]}\n")
    argv = [sys.executable, "-m", "crosssim_nb.cli", "sweep", str(folder / "study.ipynb"), str(folder / "grid.yaml"), "--out", str(folder / "out")]
    plain = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert plain.returncode == 2 and len(plain.stderr.strip().splitlines()) == 1, plain.stderr
    assert f"notebook '{folder / 'study.ipynb'}' is not a Jupyter notebook" in plain.stderr
    debug = subprocess.run(argv + ["--debug"], capture_output=True, text=True, env=env, timeout=120)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "is not a Jupyter notebook" in debug.stderr


# ---------------------------------------------------------------- 6. sweeps under faults
TINY_NOTEBOOK = Path(__file__).parent / "data" / "sweep_tiny.ipynb"

def fake_point(task):
    alpha = task["parameters"]["alpha"]
    return {"point_id": task["point_id"], "status": "ok", "notebook_text": None, "error": None,
            "result_text": json.dumps({"runs": [{"run": 0, "accuracy": 1 - alpha}]})}


@pytest.fixture
def fake_sweep(monkeypatch):
    calls = []
    def execute(task): calls.append(task["parameters"]["alpha"]); return fake_point(task)
    monkeypatch.setattr(sweep, "_execute_point", execute)
    monkeypatch.setattr(sweep, "_notebook_parameters", lambda notebook: {"alpha", "result_path"})
    return calls


@pytest.mark.parametrize("broken", ["point.json", "result.json"])
def test_corrupted_sweep_file_is_named_and_its_point_rerun(tmp_path, fake_sweep, broken):
    grid = {"alpha": [0.1, 0.2, 0.3]}
    sweep.run_sweep(TINY_NOTEBOOK, grid, tmp_path, scheduler="serial", progress=False)
    bad = tmp_path / "points" / sweep.point_id({"alpha": 0.2}) / broken
    bad.write_text('{"runs": [{"run"')                         # cut short
    with pytest.warns(sweep.SweepFileWarning) as caught:
        partial = sweep.load_results(tmp_path)
    assert any(str(bad) in str(w.message) and "corrupted" in str(w.message) for w in caught)
    assert partial["alpha"].tolist() == [0.1, 0.3]
    fake_sweep.clear()
    with pytest.warns(sweep.SweepFileWarning, match=re.escape(str(bad))):
        table = sweep.run_sweep(TINY_NOTEBOOK, grid, tmp_path, scheduler="serial", progress=False)
    assert fake_sweep == [0.2]
    np.testing.assert_allclose(table["accuracy"], [0.9, 0.8, 0.7])


def test_corrupted_manifest_is_named_and_rebuilt(tmp_path, fake_sweep):
    sweep.run_sweep(TINY_NOTEBOOK, {"alpha": [0.1]}, tmp_path, scheduler="serial", progress=False)
    (tmp_path / "sweep.json").write_text("{")
    with pytest.warns(sweep.SweepFileWarning, match="sweep.json"):
        table = sweep.run_sweep(TINY_NOTEBOOK, {"alpha": [0.1, 0.2]}, tmp_path, scheduler="serial", progress=False)
    assert table["alpha"].tolist() == [0.1, 0.2]
    assert json.loads((tmp_path / "sweep.json").read_text())["points"] == [sweep.point_id({"alpha": a}) for a in (0.1, 0.2)]


def test_full_disk_marks_the_point_failed_and_keeps_the_others(tmp_path, fake_sweep, monkeypatch):
    real_swap = sweep._swap_in
    def swap(out_dir, identifier, write):
        if identifier == sweep.point_id({"alpha": 0.2}):
            def full(folder):
                write(folder)
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_swap(out_dir, identifier, full)
        return real_swap(out_dir, identifier, write)
    monkeypatch.setattr(sweep, "_swap_in", swap)
    with pytest.warns(UserWarning, match=r"1 of 3 points could not be written and are missing"):
        table = sweep.run_sweep(TINY_NOTEBOOK, {"alpha": [0.1, 0.2, 0.3]}, tmp_path, scheduler="serial", progress=False)
    assert fake_sweep == [0.1, 0.2, 0.3]                                  # the sweep went on after the failure
    assert table["status"].tolist() == ["ok", "failed", "ok"]
    assert "No space left on device" in table["error"][1]
    assert not (tmp_path / "points" / sweep.point_id({"alpha": 0.2})).exists()   # nothing half-written
    assert not any((tmp_path / ".incomplete").iterdir())
    monkeypatch.setattr(sweep, "_swap_in", real_swap)
    fake_sweep.clear()
    again = sweep.run_sweep(TINY_NOTEBOOK, {"alpha": [0.1, 0.2, 0.3]}, tmp_path, scheduler="serial", progress=False)
    assert fake_sweep == [0.2] and again["status"].tolist() == ["ok"] * 3


def test_leftovers_of_killed_runs_are_removed_on_next_start(tmp_path, fake_sweep):
    dead = subprocess.Popen([sys.executable, "-c", "pass"]); dead.wait()
    leftover = Path(tempfile.mkdtemp(prefix=f"crosssim_sweep_abc_pid{dead.pid}_"))
    (leftover / "kernel-connection.json").write_text("{}")
    alive = Path(tempfile.mkdtemp(prefix=f"crosssim_sweep_abc_pid{os.getpid()}_"))
    staging = tmp_path / ".incomplete" / "abc-1234"
    staging.mkdir(parents=True)
    try:
        sweep.run_sweep(TINY_NOTEBOOK, {"alpha": [0.1]}, tmp_path, scheduler="serial", progress=False)
        assert not leftover.exists() and alive.exists() and not staging.exists()
    finally:
        import shutil
        shutil.rmtree(alive, ignore_errors=True); shutil.rmtree(leftover, ignore_errors=True)


def test_sigterm_cleans_up_like_ctrl_c(tmp_path):
    "A plain `kill` during a sweep raises KeyboardInterrupt, so the cleanup of Ctrl-C runs; the handler is restored after."
    before = signal.getsignal(signal.SIGTERM)
    cleaned = []
    with pytest.raises(KeyboardInterrupt):
        with sweep._terminate_as_interrupt():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000): pass
            finally: cleaned.append(True)
    assert cleaned == [True] and signal.getsignal(signal.SIGTERM) == before


def test_point_leaves_no_temp_folder_or_connection_file():
    "A real point: its kernel's connection file lives in its temporary folder, and both are gone afterwards."
    from jupyter_core.paths import jupyter_runtime_dir
    runtime = Path(jupyter_runtime_dir())
    before_runtime = set(runtime.glob("kernel-*.json")) if runtime.is_dir() else set()
    before_temp = set(Path(tempfile.gettempdir()).glob(f"crosssim_sweep_robust*"))
    task = {"point_id": "robust", "parameters": {"alpha": 0.0, "nruns": 1}, "notebook_text": TINY_NOTEBOOK.read_text(),
            "notebook_name": TINY_NOTEBOOK.name, "notebook_dir": str(TINY_NOTEBOOK.parent), "kernel_name": None,
            "env": sweep.ONE_THREAD_ENV}
    record = sweep._execute_point(task)
    assert record["status"] == "ok", record["error"]
    assert set(Path(tempfile.gettempdir()).glob("crosssim_sweep_robust*")) == before_temp
    after_runtime = set(runtime.glob("kernel-*.json")) if runtime.is_dir() else set()
    assert after_runtime <= before_runtime


# ---------------------------------------------------------------- 7. safe_mode=False never runs code of a refused model
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_lambda_model_refused_before_its_code_runs(tmp_path, suffix):
    marker = tmp_path / "code_ran"
    spy = eval(f"lambda t: (open({str(marker)!r}, 'w').close(), t)[1]")     # a lambda (Keras stores its bytecode) with a side effect
    inp = keras.Input((3,), name="x")
    model = keras.Model(inp, keras.layers.Lambda(spy, name="spy")(keras.layers.Dense(2, name="d")(inp)))
    path = tmp_path / f"spy{suffix}"
    model.save(path)
    marker.unlink()
    with pytest.raises(UnsupportedLayerError) as info: load_keras_model(path, safe_mode=False)
    assert "layer 'spy' of type 'Lambda' is not supported" in str(info.value)
    names_file(info.value, path)
    assert not marker.exists(), "the Lambda's code ran while loading"
    with pytest.raises(UnsupportedLayerError): AnalogNetwork.from_keras(path, InferenceConfig.ideal(), safe_mode=False)
    assert not marker.exists()


# ---------------------------------------------------------------- 6. configuration integrity: files, names, bounds, ignored settings
from crosssim_nb.config import UnknownFieldError, suggest_field
from crosssim_nb.files import MAX_NESTING, read_data_file

def alias_bomb(levels=9, width=10) -> str:
    "YAML whose anchors each reference the previous one `width` times: 10^9 leaves when expanded."
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"

@pytest.mark.parametrize("reader", ["config", "sweep", "data"])
def test_yaml_alias_bomb_is_refused_at_once(tmp_path, reader):
    import time
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    load = {"config": InferenceConfig.from_file, "sweep": sweep.load_sweep_file, "data": read_data_file}[reader]
    start = time.perf_counter()
    with pytest.raises(FileFormatError) as info: load(path)
    assert time.perf_counter() - start < 2.0
    assert "line 2, column" in str(info.value) and "YAML aliases (*a0) are not allowed" in str(info.value), str(info.value)
    names_file(info.value, path)
    path.write_text("plain: &name 3\n")          # an anchor nobody refers to is harmless
    assert read_data_file(path) == {"plain": 3}

@pytest.mark.parametrize("name, text", [("deep.json", "[" * 100_000 + "]" * 100_000), ("deep.yaml", "[" * 5000 + "]" * 5000),
                                        ("deep_objects.json", '{"a": ' * (MAX_NESTING + 1) + "1" + "}" * (MAX_NESTING + 1))])
def test_deep_nesting_is_one_line_naming_the_file(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(FileFormatError) as info: read_data_file(path, "configuration file")
    assert f"nested deeper than {MAX_NESTING} levels" in str(info.value) and "\n" not in str(info.value)
    names_file(info.value, path)
    path.write_text('{"a": ' * MAX_NESTING + "1" + "}" * MAX_NESTING)
    assert read_data_file(path) is not None           # exactly MAX_NESTING levels (of lists and mappings) is fine

def test_deep_or_huge_values_give_a_short_message():
    deep = current = {}
    for _ in range(5000): current["a"] = {}; current = current["a"]
    for value in (deep, [[[[[[[["x"] * 1000]]]]]]], 10 ** 5000, "x" * 100_000):
        with pytest.raises(ValueError) as info: InferenceConfig.from_dict({"weight_bits": value})
        assert len(str(info.value)) < 200 and "weight_bits=" in str(info.value), str(info.value)[:300]

@pytest.mark.parametrize("spelling, field", [("NrowsMax", "nrows_max"), ("NcolsMax", "ncols_max"), ("Nslices", "nslices"),
                                             ("Nruns", "nruns"), ("ADC_per_ibit", "adc_per_ibit"), ("Rmin", "rmin"),
                                             ("adc_bitz", "adc_bits"), ("Weight_Bits", "weight_bits")])
def test_crosssim_spellings_in_the_constructor_say_what_they_mean(spelling, field):
    with pytest.raises(TypeError) as info: InferenceConfig(**{spelling: 4})
    assert f"unknown InferenceConfig field {spelling!r}; did you mean {field!r}?" in str(info.value), str(info.value)
    assert isinstance(info.value, UnknownFieldError) and isinstance(info.value, ValueError)   # files and dicts keep ValueError
    with pytest.raises(ValueError, match=f"did you mean {field!r}"): InferenceConfig.from_dict({spelling: 4})
    with pytest.raises(ValueError, match=f"did you mean {field!r}"): InferenceConfig().replace(**{spelling: 4})

def test_suggest_field_for_the_cli():
    cases = {"--NrowsMax": "nrows_max", "--adc-bit": "adc_bits", "nrows-max": "nrows_max", "--Nslices": "nslices",
             "adc_range_option": "adc_range_option", "Vread": "vread", "cell_bits": "weight_bits", "xyzzy": None, "": None}
    assert {name: suggest_field(name) for name in cases} == cases
    import dataclasses
    assert dataclasses.is_dataclass(InferenceConfig) and InferenceConfig(nrows_max=64).replace(adc_bits=4).nrows_max == 64
    assert dataclasses.replace(InferenceConfig(), nrows_max=32).nrows_max == 32

UNBOUNDED = [   # (changes, field): each physical field beyond its range is refused by name, with its allowed range
    (dict(adc_type="pipeline", adc_bits=6, sigma_c2=10), "sigma_c2=10.0"),
    (dict(adc_type="pipeline", adc_bits=6, sigma_c1=0.3), "sigma_c1=0.3"),
    (dict(adc_type="pipeline", adc_bits=6, sigma_cpar=1.0), "sigma_cpar=1.0"),
    (dict(adc_type="sar", adc_bits=6, sigma_capacitor=1e300), "sigma_capacitor=1e+300"),
    (dict(adc_type="sar", adc_bits=6, sigma_comparator=1e6), "sigma_comparator=1000000.0"),
    (dict(adc_type="sar", adc_bits=6, gain_db=7000), "gain_db=7000.0"),
    (dict(adc_type="sar", adc_bits=6, group_size=10 ** 30), "group_size=1000000000000000000000000000000"),
    (dict(adc_type="sar", adc_bits=6, group_size=100_000), "group_size=100000"),
    (dict(rmin=1e300, rmax=1e301), "rmin=1e+300"), (dict(rmin=0.5), "rmin=0.5"), (dict(rmax=1e300), "rmax=1e+300"),
    (dict(rp_row=1e300), "rp_row=1e+300"), (dict(rp_col=2e3), "rp_col=2000.0"), (dict(rp_col_terminal=1e300), "rp_col_terminal=1e+300"),
    (dict(rp_row_terminal=2e4), "rp_row_terminal=20000.0"),
    (dict(vread=1e300), "vread=1e+300"), (dict(vread=1e-300), "vread=1e-300"),
    (dict(icol_max=1e300), "icol_max=1e+300"), (dict(icol_max_amps=1e300), "icol_max_amps=1e+300"),
    (dict(nrows_max=10 ** 12), "nrows_max=1000000000000"), (dict(nruns=10 ** 9), "nruns=1000000000"), (dict(seed=2 ** 64), "seed="),
    (dict(t_drift=1e300, drift_model="PCMLike"), "t_drift=1e+300"),
]

@pytest.mark.parametrize("changes, field", UNBOUNDED, ids=[c[1] for c in UNBOUNDED])
def test_physical_fields_are_bounded(changes, field):
    with pytest.raises(ValueError) as info: InferenceConfig(**changes)
    assert field in str(info.value) and "allowed" in str(info.value), str(info.value)

def test_bounds_admit_their_edges():
    InferenceConfig(adc_type="sar", adc_bits=6, gain_db=1000, group_size=65536, sigma_capacitor=0.25, sigma_comparator=1.0)
    InferenceConfig(adc_type="cyclic", adc_bits=6, sigma_c1=0.25, sigma_c2=0.25, sigma_cpar=0.25)
    InferenceConfig(rmin=1.0, rmax=1e15, vread=10.0, icol_max_amps=1.0, rp_row=1.0, rp_col=1.0, rp_row_terminal=10.0)
    InferenceConfig(nrows_max=2 ** 20, ncols_max=2 ** 20, nruns=10 ** 6, seed=2 ** 63 - 1, icol_max=1e12)

IGNORED = [   # (changes, message): a non-default value of a setting that has no effect is refused, saying why
    (dict(adc_type="ramp", adc_bits=6, sigma_c1=0.01), "sigma_c1=0.01 has no effect with adc_type='ramp'"),
    (dict(adc_type="pipeline", adc_bits=6, split_cdac=False), "split_cdac=False has no effect with adc_type='pipeline'"),
    (dict(adc_type="ramp", adc_bits=6, group_size=4), "group_size=4 has no effect with adc_type='ramp'"),
    (dict(adc_bits=6, adc_range_option="MAX", gain_db=60), "gain_db=60.0 has no effect with adc_type='quantizer'"),
    (dict(adc_bits=6, adc_range_option="MAX", sigma_capacitor=0.01), "sigma_capacitor=0.01 has no effect with adc_type='quantizer'"),
    (dict(adc_type="sar", adc_bits=6, symmetric_cdac=False), "symmetric_cdac=False has no effect with adc_type='sar'"),
    (dict(adc_type="cyclic", adc_bits=6, sigma_capacitor=0.01), "sigma_capacitor=0.01 has no effect with adc_type='cyclic'"),
    (dict(adc_type="sar"), "adc_type='sar' has no effect with adc_bits=0"),
    (dict(stochastic_rounding=True), "stochastic_rounding=True has no effect with adc_bits=0"),
    (dict(selected_rows="bottom"), "selected_rows='bottom' has no effect"),
    (dict(selected_rows="bottom", rp_row=1.0), "selected_rows='bottom' has no effect with current_from_input=True"),
    (dict(current_from_input=False, input_bitslicing=True), "current_from_input=False has no effect without wire resistance"),
]

@pytest.mark.parametrize("changes, message", IGNORED, ids=[",".join(c[0]) for c in IGNORED])
def test_ignored_settings_are_refused_by_name(changes, message):
    with pytest.raises(ValueError) as info: InferenceConfig(**changes)
    assert message in str(info.value), str(info.value)

def test_config_file_write_is_atomic(tmp_path, monkeypatch):
    path = InferenceConfig(adc_bits=4, adc_range_option="MAX").to_file(tmp_path / "hw.yaml")
    before = path.read_text()
    original = Path.write_text
    def full_disk(self, data, *args, **kwargs):          # half the text lands, then the disk is full
        original(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError, match="No space left"): InferenceConfig(adc_bits=6, adc_range_option="MAX").to_file(path)
    monkeypatch.undo()
    assert path.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["hw.yaml"]
