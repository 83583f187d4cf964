"""The zoo's sequence models (mnist_lstm, fashion_vit) through the front door: run_inference with ADC calibration,
calibrate_adc on per-time-step and per-token cores, the command line, ADC health and the array viewer."""
import contextlib, json, os, subprocess, sys
import numpy as np
import pytest
from crosssim_nb import zoo, AnalogNetwork
from crosssim_nb.cli import MAIN_JOB_CONFIG, main
from crosssim_nb.calibration import calibrate_adc, profile_adc_inputs
from crosssim_nb.data import load_dataset
from crosssim_nb.inference import run_inference
from crosssim_nb.adc_health import ADCHealthWarning

MODELS = ["mnist_lstm", "fashion_vit"]
_LOADED = {}

def loaded(name):
    "The Keras model, its preprocessing, 40 training images (calibration) and 40 test images with labels, cached per test session."
    if name not in _LOADED:
        model, preprocess = zoo.load(name)
        dataset = zoo.info(name)["dataset"]
        test = load_dataset(dataset, split="test", ntest=40)
        _LOADED[name] = (model, preprocess, preprocess(load_dataset(dataset, split="train", ntest=40).x), preprocess(test.x), test.y)
    return _LOADED[name]

def network(name, config):
    model, _, x_calib, _, _ = loaded(name)
    return AnalogNetwork.from_keras(model, config, calibration_data=x_calib)

@pytest.mark.parametrize("name", MODELS)
def test_run_inference_with_adc_calibration_follows_keras(name):
    "8-bit calibrated hardware: the float reference is Keras' own predict, and the analog logits stay close to it."
    model, _, _, x_test, y_test = loaded(name)
    keras_logits = model.predict(x_test, verbose=0)
    result = run_inference(name, zoo.info(name)["dataset"], MAIN_JOB_CONFIG, ntest=40, nruns=1,
                           adc_calibration="optimal", calibration_samples=40, return_outputs=True, progress=False)
    np.testing.assert_allclose(result.float_outputs, keras_logits, atol=1e-4 * np.abs(keras_logits).max())
    assert result.float_accuracy[0] == pytest.approx(np.mean(keras_logits.argmax(1) == y_test))
    analog = result.outputs[0]
    assert np.abs(analog - keras_logits).max() < 0.25 * np.abs(keras_logits).max()
    assert np.mean(analog.argmax(1) == keras_logits.argmax(1)) >= 0.9
    assert "optimal" in result.adc_ranges                                          # the ADC ranges were calibrated
    health = result.adc_health
    cores = list(network(name, MAIN_JOB_CONFIG.replace(adc_range_option="MAX")).cores)
    assert list(health.layer) == cores and (health.status == "ok").all(), health

def _units_and_steps(model, layer_type):
    layer = next(layer for layer in model.layers if type(layer).__name__ == layer_type)
    return layer, model.input_shape[1]

@pytest.mark.parametrize("recurrent_cores", ["stacked", "separate"])
def test_calibrate_adc_profiles_every_time_step_of_the_lstm(recurrent_cores):
    "Every read of the recurrent cores (one per time step) is profiled, and every core gets limits."
    model, _, x_calib, _, _ = loaded("mnist_lstm")
    lstm, steps = _units_and_steps(model, "LSTM")
    net = network("mnist_lstm", MAIN_JOB_CONFIG.replace(adc_range_option="MAX", recurrent_cores=recurrent_cores))
    profile = profile_adc_inputs(net, x_calib)
    lstm_cores = [core for core in net.cores if core.startswith("lstm")]
    assert len(lstm_cores) == (1 if recurrent_cores == "stacked" else 2)
    for core in lstm_cores:                                   # images x time steps x (4 gates x units) ADC inputs
        assert profile.adc[core][(0, 0)].count == len(x_calib) * steps * 4 * lstm.units, core
    calibration = calibrate_adc(net, x_calib)
    assert sorted(calibration.adc_limits) == sorted(net.cores)
    for core in net.cores:
        low, high = np.asarray(calibration.adc_limits[core]).reshape(-1, 2)[0]
        assert low < 0 < high <= max(abs(profile.adc[core][(0, 0)].minimum), profile.adc[core][(0, 0)].maximum) * (1 + 1e-6)

def test_calibrate_adc_profiles_every_token_of_the_vit():
    "The attention projections are read once per token; with analog attention products every weight core still gets limits."
    model, _, x_calib, _, _ = loaded("fashion_vit")
    net = network("fashion_vit", MAIN_JOB_CONFIG.replace(adc_range_option="MAX", attention_products="analog"))
    attention = next(layer for layer in model.layers if type(layer).__name__ == "MultiHeadAttention")
    tokens = 16                                                # 4 x 4 patches of 7 x 7 pixels
    width = attention.get_config()["num_heads"] * attention.get_config()["key_dim"]
    profile = profile_adc_inputs(net, x_calib)
    assert profile.adc[f"{attention.name}/query"][(0, 0)].count == len(x_calib) * tokens * width
    calibration = calibrate_adc(net, x_calib)
    assert sorted(calibration.adc_limits) == sorted(net.cores)

def test_limits_reach_the_recurrent_core():
    "Limits far too small for the LSTM core clip its reads at every time step, and ADC health says so; calibrated ones do not."
    _, _, x_calib, x_test, _ = loaded("mnist_lstm")
    calibration = calibrate_adc(network("mnist_lstm", MAIN_JOB_CONFIG.replace(adc_range_option="MAX")), x_calib)
    good = {core: np.asarray(limits) for core, limits in calibration.adc_limits.items()}
    squeezed = {**good, "lstm": good["lstm"] / 50}
    for limits, lstm_clipped in ((good, False), (squeezed, True)):
        net = AnalogNetwork.from_keras(loaded("mnist_lstm")[0], MAIN_JOB_CONFIG, calibration_data=x_calib, adc_limits=limits)
        with pytest.warns(ADCHealthWarning, match="lstm") if lstm_clipped else contextlib.nullcontext():
            net.predict(x_test[:20])
        health = net.adc_health().set_index("layer")
        assert (health.loc["lstm", "clipped_fraction"] > 0.2) == lstm_clipped, health
        assert (health.loc["lstm", "status"] != "ok") == lstm_clipped
        assert health.loc["logits", "clipped_fraction"] < 0.1

@pytest.mark.parametrize("name", MODELS)
def test_cli_calibrate_then_run(name, tmp_path, capsys):
    "`crosssim-nb calibrate` writes limits for every core; `crosssim-nb run --adc-limits` reads them back and runs calibrated."
    limits_path, summary_path = tmp_path / "limits.json", tmp_path / "result.json"
    main(["calibrate", "--model", name, "--adc-bits", "8", "--weight-bits", "8", "--dac-bits", "8",
          "--calibration-samples", "40", "--output", str(limits_path), "--no-progress"])
    assert "wrote" in capsys.readouterr().out
    written = json.loads(limits_path.read_text())
    cores = list(network(name, MAIN_JOB_CONFIG.replace(adc_range_option="MAX")).cores)
    assert sorted(written["adc_limits"]) == sorted(cores) and written["model_name"]
    main(["run", "--model", name, "--adc-limits", str(limits_path), "--ntest", "30", "--nruns", "1",
          "--calibration-samples", "40", "--json", str(summary_path), "--no-progress"])
    summary = json.loads(summary_path.read_text())
    assert summary["config"]["adc_range_option"] == "CALIBRATED" and summary["config"]["adc_bits"] == 8
    assert [row["layer"] for row in summary["adc_health"]] == cores
    assert summary["mean"][0] >= summary["float_accuracy"][0] - 0.1

def test_module_entry_point_calibrates_and_runs_the_lstm(tmp_path):
    "`python -m crosssim_nb.cli run --calibrate-adc optimal` on the LSTM, in its own process."
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, "-m", "crosssim_nb.cli", "run", "--model", "mnist_lstm", "--ntest", "20", "--nruns", "1",
                           "--adc-bits", "8", "--adc-range-option", "CALIBRATED", "--calibrate-adc", "optimal",
                           "--calibration-samples", "20", "--no-progress", "--json", str(tmp_path / "result.json")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "result.json").read_text())
    assert [row["layer"] for row in summary["adc_health"]] == ["lstm", "logits"] and "optimal" in summary["adc_ranges"]

def test_array_viewer_on_recurrent_and_attention_cores():
    "The viewer draws the LSTM's stacked core (input and recurrent kernels, 4 gates) and a ViT query projection on their arrays."
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    from crosssim_nb.array_viewer import ArrayViewer, plot_layer_mapping
    config = MAIN_JOB_CONFIG.replace(adc_range_option="MAX")
    model, _, _, _, _ = loaded("mnist_lstm")
    lstm, steps = _units_and_steps(model, "LSTM")
    for name, core_name, shape in (("mnist_lstm", "lstm", (model.input_shape[2] + lstm.units, 4 * lstm.units)),
                                   ("fashion_vit", "block1_attention/query", None)):
        net = network(name, config)
        core = net.cores[core_name]
        if shape is not None:                            # rows: inputs then recurrent state; columns: the four gates
            assert core.hw_summary()["matrix_rows"] - shape[0] in (0, 1) and core.hw_summary()["matrix_cols"] == shape[1]
        figure = plot_layer_mapping(net, core_name)
        outlines = [patch for ax in figure.axes for patch in ax.patches if isinstance(patch, Rectangle)]
        assert len(outlines) >= len(core.row_ranges) * len(core.col_ranges)
        plt.close(figure)
        viewer = ArrayViewer(net)
        assert core_name in viewer.layer.options
        viewer.layer.value = core_name
        assert int(viewer.totals_table["arrays"].iloc[0]) == int(net.hw_config().iloc[-1]["arrays"])
        plt.close("all")
