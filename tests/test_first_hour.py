"""What a new user sees: honest statistics, the ADC health that explains a collapse, warnings for inputs that look
wrong, and one set of arrays whichever way a network is built."""
import json
import numpy as np
import pytest
from crosssim_nb import InferenceConfig, AnalogNetwork, zoo
from crosssim_nb.inference import run_inference, InferenceWarning, training_sample
import crosssim_nb.network as network_module

def _strict_json(text):
    def refuse(constant): raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)

@pytest.mark.filterwarnings("ignore:.*degenerate ADCs")     # 8-bit MAX on this model: expected, and checked elsewhere
def test_from_keras_and_run_inference_build_the_same_arrays():
    config = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX")
    result = run_inference("fashion_resnet", "fashion_mnist", config, ntest=32, nruns=1, calibration_samples=100,
                           return_outputs=True, progress=False)
    model, preprocess = zoo.load("fashion_resnet")
    net = AnalogNetwork.from_keras(model, config, calibration_data=training_sample("fashion_mnist", preprocess, 100, config.seed))
    assert net.hw_config().equals(result.hw_config)             # signed/unsigned DAC, x_max, arrays: layer by layer
    assert net.cores["stem_conv"].input_range == (0.0, net.cores["stem_conv"].x_max)   # the zoo's [0, 1] inputs: unsigned DAC
    from crosssim_nb.data import load_dataset
    x = preprocess(load_dataset("fashion_mnist", ntest=32).x)
    np.testing.assert_array_equal(net.predict(x, batch_size=256), result.outputs[0])
    table = net.adc_health()                                     # the same conversions, counted the same way
    assert table.drop(columns="conversions").equals(result.adc_health.drop(columns="conversions"))

def test_identical_runs_are_said_so_and_random_runs_are_not(tmp_path):
    same = run_inference("mnist_mlp", "mnist", InferenceConfig.ideal(), ntest=50, nruns=3, progress=False)
    assert same.identical_runs and same.random_effects == ()
    assert "all 3 runs identical; no random effect is enabled" in str(same) and "±" not in str(same)
    summary = _strict_json(same.to_json(tmp_path / "same.json").read_text())
    assert summary["identical_runs"] is True and summary["random_effects"] == []
    errored = InferenceConfig(error_model="generic", alpha_error=0.05, dac_bits=0, adc_bits=0)
    differ = run_inference("mnist_mlp", "mnist", errored, ntest=50, nruns=2, progress=False, return_outputs=True)
    assert not differ.identical_runs and differ.random_effects == ("programming error",)
    assert not np.array_equal(differ.outputs[0], differ.outputs[1]) and "identical" not in str(differ)

def test_cli_json_is_strict_and_alpha_error_alone_means_generic(tmp_path, capsys):
    from crosssim_nb.cli import main
    path = tmp_path / "one.json"
    main(["run", "--model", "mnist_mlp", "--ntest", "50", "--nruns", "1", "--alpha-error", "0.02", "--no-progress",
          "--json", str(path)])
    summary = _strict_json(path.read_text())                    # one run: no interval, and no bare NaN anywhere
    assert summary["ci95"] is None and summary["nruns"] == 1
    assert summary["config"]["error_model"] == "generic" and summary["config"]["alpha_error"] == 0.02
    assert "error_model=generic, alpha_error=0.02" in capsys.readouterr().out

def test_interrupted_before_any_run_reports_no_finished_runs(monkeypatch, tmp_path):
    def program(self, run=0): raise KeyboardInterrupt
    monkeypatch.setattr(network_module.AnalogNetwork, "program", program)
    with pytest.warns(UserWarning, match="no finished runs"):
        result = run_inference("mnist_mlp", "mnist", InferenceConfig.ideal(), ntest=20, nruns=3, progress=False)
    assert result.nruns == 0 and "no finished runs" in str(result) and "nan" not in str(result).lower()
    summary = _strict_json(result.to_json(tmp_path / "none.json").read_text())
    assert summary["mean"] == [None] and summary["ci95"] is None

def test_collapse_is_explained_per_layer_in_the_cli(capsys):
    from crosssim_nb.cli import main
    main(["run", "--model", "mnist_cnn", "--adc-bits", "8", "--adc-range-option", "MAX", "--ntest", "200", "--nruns", "1",
          "--no-progress"])
    out = capsys.readouterr().out
    assert "ADC health:" in out and "mostly zero" in out
    warning = [line for line in out.splitlines() if line.startswith("  warning: mnist_cnn:")]
    assert len(warning) == 1 and "close to chance" in warning[0] and "--calibrate-adc optimal" in warning[0]
    listed = [line.split()[0] for line in out.splitlines() if line.endswith("mostly zero") or line.endswith("clipping")]
    assert listed and all(f"{layer} " in warning[0] for layer in listed)   # the warning names every degenerate layer

def test_inputs_that_look_wrong_are_warned_about():
    ideal = InferenceConfig.ideal()
    with pytest.warns(InferenceWarning, match="trained on 'mnist', not 'fashion_mnist'"):
        run_inference("mnist_mlp", "fashion_mnist", ideal, ntest=20, progress=False)
    from crosssim_nb.data import load_dataset
    raw = load_dataset("mnist", ntest=20)
    with pytest.warns(InferenceWarning, match=r"range over \[0, 255\].*raw 0-255 images"):
        run_inference(zoo.load("mnist_mlp").model, (raw.x.reshape(20, 28, 28, 1).astype(np.float32), raw.y), ideal, progress=False)
    with pytest.warns(InferenceWarning, match=r"did you mean alpha_error=0.05"):
        result = run_inference("mnist_mlp", "mnist", ideal.replace(error_model="generic", alpha_error=5), ntest=20, progress=False)
    assert any("alpha_error=5" in text for text in result.warnings) and "warning: alpha_error=5" in str(result)
