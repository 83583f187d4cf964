"""run_inference: determinism, Monte-Carlo spread, accuracy vs error, outputs, top-k, interruption, calibration split."""
import json
import numpy as np
import pytest
from crosssim_nb import InferenceConfig
from crosssim_nb.inference import run_inference, topk_accuracy
import crosssim_nb.network as network_module

ERRORED = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX", error_model="generic", alpha_error=0.05)
QUICK = dict(ntest=200, progress=False)

def test_same_seed_gives_identical_results():
    first = run_inference("mnist_mlp", "mnist", ERRORED, nruns=2, return_outputs=True, **QUICK)
    second = run_inference("mnist_mlp", "mnist", ERRORED, nruns=2, return_outputs=True, **QUICK)
    np.testing.assert_array_equal(first.outputs, second.outputs)
    np.testing.assert_array_equal(first.accuracies, second.accuracies)
    third = run_inference("mnist_mlp", "mnist", ERRORED.replace(seed=1), nruns=1, return_outputs=True, **QUICK)
    assert not np.array_equal(third.outputs[0], first.outputs[0])

def test_runs_differ_with_programming_error_and_outputs_have_their_shape(tmp_path):
    result = run_inference("mnist_mlp", "mnist", ERRORED, nruns=3, return_outputs=True, topk=(1, 5), **QUICK)
    assert result.outputs.shape == (3, 200, 10) and result.accuracies.shape == (3, 2)
    assert not np.array_equal(result.outputs[0], result.outputs[1])
    path = result.save_outputs(tmp_path / "outputs.npy")
    np.testing.assert_array_equal(np.load(path, allow_pickle=False), result.outputs)
    assert np.all(result.accuracies[:, 1] >= result.accuracies[:, 0]) and result.float_accuracy[1] >= result.float_accuracy[0]
    low, high = result.ci95[0]
    assert low <= result.mean[0] <= high
    from scipy import stats
    top1 = result.accuracies[:, 0]           # ci95: Student t on the std with ddof=1, i.e. the standard error `sem`
    reference = stats.t.interval(0.95, len(top1) - 1, loc=top1.mean(), scale=stats.sem(top1))
    np.testing.assert_allclose(result.ci95[0], reference, rtol=1e-12)
    summary = json.loads(result.to_json(tmp_path / "r.json").read_text())
    assert summary["nruns"] == 3 and summary["config"]["alpha_error"] == 0.05
    frame = result.to_frame()
    assert len(frame) == 3 * 2 + 2 and set(frame["kind"]) == {"analog", "float"}
    assert "top-5" in str(result)

def test_accuracy_falls_as_programming_error_rises():
    means = []
    for alpha in (0.0, 0.2, 0.6):
        config = ERRORED.replace(alpha_error=alpha, error_model="generic" if alpha else "none", adc_bits=0, proportional_error=False)
        means.append(run_inference("mnist_mlp", "mnist", config, nruns=3, **QUICK).mean[0])
    assert means[0] > means[1] > means[2], means

def test_ideal_accuracy_equals_float_accuracy_exactly():
    result = run_inference("mnist_mlp", "mnist", InferenceConfig.ideal(), ntest=500, progress=False, return_outputs=True)
    np.testing.assert_array_equal(result.accuracies[0], result.float_accuracy)
    np.testing.assert_allclose(result.outputs[0], result.float_outputs, rtol=1e-4, atol=1e-4)

def test_calibration_sample_comes_from_the_training_split(monkeypatch):
    import crosssim_nb.data as data
    seen = []
    original = data.load_dataset
    def spy(name, split="test", **kwargs):
        seen.append(split)
        return original(name, split=split, **kwargs)
    monkeypatch.setattr(data, "load_dataset", spy)
    result = run_inference("mnist_mlp", "mnist", ERRORED, nruns=1, calibration_samples=100, **QUICK)
    assert seen == ["test", "train"] and "100 images of the mnist training split" in result.calibration

def test_adc_calibration_beats_max():
    config = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=5, adc_range_option="MAX")
    plain = run_inference("mnist_mlp", "mnist", config, nruns=1, **QUICK)
    calibrated = run_inference("mnist_mlp", "mnist", config, nruns=1, adc_calibration="optimal", calibration_samples=200, **QUICK)
    assert calibrated.mean[0] > plain.mean[0] + 0.3 and calibrated.mean[0] > calibrated.float_accuracy[0] - 0.03
    assert "optimal calibration" in calibrated.adc_ranges and calibrated.config.adc_range_option == "CALIBRATED"

def test_interrupt_keeps_finished_runs(monkeypatch):
    original = network_module.AnalogNetwork.program
    def program(self, run=0):
        if run == 2: raise KeyboardInterrupt
        return original(self, run)
    monkeypatch.setattr(network_module.AnalogNetwork, "program", program)
    with pytest.warns(UserWarning, match="keeping the 2 finished run"):
        result = run_inference("mnist_mlp", "mnist", ERRORED, nruns=4, **QUICK)
    assert result.nruns == 2 and result.interrupted and "(interrupted)" in str(result)

def test_arrays_dataset_and_keras_model():
    from crosssim_nb import zoo
    model, preprocess = zoo.load("mnist_mlp")
    from crosssim_nb.data import load_dataset
    x, y = load_dataset("mnist", ntest=100)
    one_hot = np.eye(10)[y]
    result = run_inference(model, (preprocess(x), one_hot), InferenceConfig.ideal(), progress=False, ntest=None)
    assert result.dataset == "arrays" and result.ntest == 100
    predictions = model.predict(preprocess(x), verbose=0)
    assert result.mean[0] == pytest.approx(np.mean(np.argmax(predictions, 1) == y))
    with pytest.raises(ValueError, match="pass calibration_data"):
        run_inference(model, (preprocess(x), y), ERRORED, progress=False)

def test_topk_accuracy_by_hand():
    outputs = np.array([[0.1, 0.7, 0.2],     # top-2 {1, 2}: label 2 in
                        [0.5, 0.3, 0.2],     # top-2 {0, 1}: label 2 out
                        [0.2, 0.2, 0.6],     # top-2 {2, 0} (tie: lower index wins): label 0 in
                        [0.3, 0.3, 0.4]])    # top-2 {2, 0} (tie: lower index wins): label 1 out
    labels = np.array([2, 2, 0, 1])
    assert topk_accuracy(outputs, labels, k=2) == 0.5
    assert topk_accuracy(outputs, labels, k=1) == 0.0
    assert topk_accuracy(outputs, labels, k=3) == 1.0

@pytest.mark.parametrize("kwargs, message", [
    (dict(topk=(0,)), "topk=(0,) is not allowed"), (dict(topk=(11,)), "more classes than the model's 10 outputs"),
    (dict(ntest=0), "ntest=0 is not allowed"), (dict(nruns=0), "nruns=0 is not allowed"),
    (dict(batch_size=0), "batch_size=0 is not allowed"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_inference("mnist_mlp", "mnist", ERRORED, progress=False, **kwargs)

def test_unknown_model_and_dataset():
    with pytest.raises(ValueError, match="neither a zoo model"): run_inference("nope", "mnist", ERRORED)
    with pytest.raises(ValueError, match="unknown dataset 'nope'"): run_inference("mnist_mlp", "nope", ERRORED)
    with pytest.raises(TypeError, match="config must be an InferenceConfig"): run_inference("mnist_mlp", "mnist", {})


def test_dataset_name_in_any_case():
    "`run_inference(model, 'MNIST')` reads mnist and reports it under its own name (was: unknown dataset 'MNIST')."
    from crosssim_nb.inference import resolve_data
    x, y, name, is_sample = resolve_data("MNIST", None, 5, 0)
    x_lower, y_lower, _, _ = resolve_data("mnist", None, 5, 0)
    assert name == "mnist" and not is_sample and np.array_equal(x, x_lower) and np.array_equal(y, y_lower)
    assert resolve_data("Fashion-MNIST", None, 2, 0)[2] == "fashion_mnist"
