"""The trained model zoo (crosssim_nb.zoo): files and manifest agree, models load safely, recorded accuracies hold.

Independent references: the files themselves (SHA-256, size, Keras' own parameter count and layer list) and
Keras `predict` on the test sets (labels read by crosssim_nb.data, checked in test_data.py).
"""
import json
from collections import Counter

import numpy as np
import pytest

from crosssim_nb import zoo
from crosssim_nb.data import load_dataset

EXPECTED = {"mnist_mlp": ("mnist", 0.975), "mnist_cnn": ("mnist", 0.990), "fashion_resnet": ("fashion_mnist", 0.910),
            "fashion_mobilenet": ("fashion_mnist", 0.890), "fashion_inception": ("fashion_mnist", 0.900),
            "fashion_resnet_torch": ("fashion_mnist", 0.900), "mnist_lstm": ("mnist", 0.970), "fashion_vit": ("fashion_mnist", 0.850)}
REQUIRED_LAYERS = {"fashion_resnet": {"Add", "BatchNormalization"}, "fashion_mobilenet": {"DepthwiseConv2D", "ReLU"},
                   "fashion_inception": {"Concatenate"}, "mnist_cnn": {"Conv2D", "MaxPooling2D"}, "mnist_mlp": {"Dense"},
                   "mnist_lstm": {"LSTM"}, "fashion_vit": {"MultiHeadAttention", "LayerNormalization", "Embedding"}}
MANIFEST = zoo.read_manifest()["models"]
KERAS_MODELS = sorted(name for name in EXPECTED if MANIFEST[name].get("format", "keras") == "keras")  # ONNX: test_torch_models.py


def _test_set(name, ntest=None):
    try:
        return load_dataset(MANIFEST[name]["dataset"], ntest=ntest)
    except FileNotFoundError as error:
        pytest.skip(f"dataset not installed (run scripts/get_data.sh): {str(error).splitlines()[0]}")


def _accuracy(name, ntest=None):
    model, preprocess = zoo.load(name)
    x, y = _test_set(name, ntest)
    if MANIFEST[name].get("format") == "onnx":   # onnxruntime is the ONNX model's reference runtime
        import onnxruntime
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        logits = session.run(None, {session.get_inputs()[0].name: preprocess(x)})[0]
    else:
        logits = model.predict(preprocess(x), batch_size=MANIFEST[name]["eval_batch_size"], verbose=0)
    return float(np.mean(np.argmax(logits, axis=1) == y))


def test_manifest_lists_the_zoo_and_files_match():
    assert set(MANIFEST) == set(EXPECTED)
    for name, entry in MANIFEST.items():
        path = zoo.ZOO_DIR / entry["file"]
        assert path.is_file() and path.suffix == {"keras": ".keras", "onnx": ".onnx"}[entry.get("format", "keras")]
        assert entry["file_bytes"] == path.stat().st_size
        assert entry["sha256"] == zoo.file_sha256(path)
        dataset, minimum = EXPECTED[name]
        assert entry["dataset"] == dataset and entry["float_accuracy"] >= minimum
        assert entry["preprocessing"] in zoo.PREPROCESSING_KINDS and entry["input_range"] == [0.0, 1.0]
        assert entry["test_images"] == 10000 and entry["output"] == "logits"
        assert {"epochs", "batch_size", "optimizer", "learning_rate", "seed", "seconds"} <= set(entry["training"])
    assert sorted(p.name for p in zoo.ZOO_DIR.iterdir() if p.suffix in (".keras", ".onnx")) == sorted(e["file"] for e in MANIFEST.values())
    assert sum(p.stat().st_size for p in zoo.ZOO_DIR.rglob("*") if p.is_file()) <= 15_000_000


@pytest.mark.parametrize("name", KERAS_MODELS)
def test_model_loads_and_matches_its_record(name):
    loaded = zoo.load(name)
    model, preprocess = loaded  # unpacks as a pair
    entry = MANIFEST[name]
    assert loaded.name == name and loaded.info == entry and loaded.model is model
    assert list(model.input_shape[1:]) == entry["input_shape"]
    assert model.output_shape == (None, entry["n_classes"])
    assert model.count_params() == entry["parameters"]
    layer_types = Counter(type(layer).__name__ for layer in model.layers)
    assert dict(layer_types) == entry["layer_types"]
    assert set(layer_types) <= zoo.SUPPORTED_LAYER_TYPES
    assert REQUIRED_LAYERS[name] <= set(layer_types)
    assert model.layers[-1].__class__.__name__ == "Dense" and model.layers[-1].get_config()["activation"] == "linear"
    if name == "fashion_mobilenet":
        relu_caps = {layer.get_config()["max_value"] for layer in model.layers if type(layer).__name__ == "ReLU"}
        assert relu_caps == {6.0}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_quick_accuracy_on_500_images(name):
    "The first 500 test images give an accuracy within 3 % of the recorded full-test-set value."
    accuracy = _accuracy(name, ntest=500)
    assert abs(accuracy - MANIFEST[name]["float_accuracy"]) <= 0.03, (accuracy, MANIFEST[name]["float_accuracy"])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recorded_float_accuracy_is_reproduced(name):
    "The full test set reproduces the recorded float accuracy (to 0.1 %, i.e. 10 images of 10 000)."
    assert abs(_accuracy(name) - MANIFEST[name]["float_accuracy"]) <= 0.001


def test_preprocess_scales_and_adds_the_channel_axis():
    x, _ = _test_set("mnist_cnn", ntest=4)
    out = zoo.preprocess("mnist_cnn", x)
    assert out.shape == (4, 28, 28, 1) and out.dtype == np.float32
    np.testing.assert_array_equal(out[..., 0], x.astype(np.float32) / 255)
    assert 0.0 <= out.min() and out.max() <= 1.0
    with pytest.raises(ValueError, match=r"expected a batch \(N, 28, 28, 1\)"):
        zoo.preprocess("mnist_cnn", np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.warns(UserWarning, match="already preprocessed"):
        zoo.preprocess("mnist_cnn", out)


def test_list_and_unknown_names():
    table = zoo.list()
    assert list(table.index) == sorted(EXPECTED)
    assert table.loc["mnist_cnn", "float_accuracy"] == MANIFEST["mnist_cnn"]["float_accuracy"]
    assert "list" not in zoo.__all__  # zoo.list must not shadow the builtin on `from crosssim_nb.zoo import *`
    for call in (zoo.load, zoo.info, lambda n: zoo.preprocess(n, np.zeros((1, 28, 28)))):
        with pytest.raises(ValueError, match="unknown zoo model 'mnist_resnet'; available: fashion_inception, "
                                             "fashion_mobilenet, fashion_resnet, fashion_resnet_torch, fashion_vit, mnist_cnn, mnist_lstm, mnist_mlp"):
            call("mnist_resnet")


def test_load_uses_keras_safe_mode(tmp_path, monkeypatch):
    "A .keras file with a Lambda layer (arbitrary code) is refused, as keras safe_mode does."
    import keras
    inputs = keras.Input((28, 28, 1))
    keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2)(inputs)).save(tmp_path / "evil.keras")
    entry = dict(MANIFEST["mnist_mlp"], file="evil.keras")
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 1, "models": {"evil": entry}}))
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path)
    with pytest.raises(ValueError, match="safe_mode"):
        zoo.load("evil")
    (tmp_path / "evil.keras").unlink()
    with pytest.raises(FileNotFoundError, match="evil.keras"):
        zoo.load("evil")
