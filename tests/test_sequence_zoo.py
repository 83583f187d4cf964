"""The zoo's sequence models (issue 26, item 4): `mnist_lstm` (an LSTM reading MNIST row by row) and `fashion_vit` (a
small vision transformer on Fashion-MNIST). They load with their manifest records, keep their float accuracy on a test
subset, run through the front door with the images as the model asks for them ((N, 28, 28) rows for the LSTM), and the
ideal analog network equals Keras `predict`. References: the files (SHA-256, Keras' own parameter count and layers) and
Keras `predict` on the same inputs."""
import os
from collections import Counter

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from crosssim_nb import zoo, InferenceConfig, AnalogNetwork
from crosssim_nb.data import load_dataset
from crosssim_nb.inference import run_inference
from test_front_door_models import close_to     # equal to 1e-4 of the reference's largest magnitude

# name: (dataset, input shape, minimum float accuracy, layer types it must contain)
SEQUENCE_MODELS = {"mnist_lstm": ("mnist", [28, 28], 0.97, {"LSTM", "Dense"}),
                   "fashion_vit": ("fashion_mnist", [28, 28, 1], 0.85,
                                   {"MultiHeadAttention", "LayerNormalization", "Embedding", "GlobalAveragePooling1D"})}
IDEAL = InferenceConfig.ideal()


def _test_set(dataset, ntest):
    try:
        return load_dataset(dataset, ntest=ntest)
    except FileNotFoundError as error:
        pytest.skip(f"dataset not installed (run scripts/get_data.sh): {str(error).splitlines()[0]}")




@pytest.mark.parametrize("name", sorted(SEQUENCE_MODELS))
def test_model_loads_and_matches_its_record(name):
    dataset, input_shape, minimum, required = SEQUENCE_MODELS[name]
    model, preprocess = loaded = zoo.load(name)
    entry = loaded.info
    assert entry["dataset"] == dataset and entry["input_shape"] == input_shape == list(model.input_shape[1:])
    assert entry["float_accuracy"] >= minimum and entry["test_images"] == 10000
    assert entry["sha256"] == zoo.file_sha256(zoo.model_path(name))
    assert model.count_params() == entry["parameters"]
    layer_types = Counter(type(layer).__name__ for layer in model.layers)
    assert dict(layer_types) == entry["layer_types"] and required <= set(layer_types)
    assert set(layer_types) <= zoo.SUPPORTED_LAYER_TYPES
    assert model.layers[-1].get_config()["activation"] == "linear"          # logits out
    assert zoo.list().loc[name, "input_shape"] == tuple(input_shape)
    raw = np.zeros((3, 28, 28), np.uint8)
    assert preprocess(raw).shape == (3, *input_shape)                         # rows for the LSTM, a channel axis for the ViT


@pytest.mark.parametrize("name", sorted(SEQUENCE_MODELS))
def test_float_accuracy_on_500_test_images(name):
    "Keras on the first 500 test images: within 3 % of the recorded full-test-set accuracy, and above the zoo's bound."
    model, preprocess = zoo.load(name)
    x, y = _test_set(SEQUENCE_MODELS[name][0], 500)
    accuracy = float(np.mean(model.predict(preprocess(x), batch_size=500, verbose=0).argmax(1) == y))
    assert abs(accuracy - zoo.info(name)["float_accuracy"]) <= 0.03, accuracy
    assert accuracy >= SEQUENCE_MODELS[name][2] - 0.03, accuracy


@pytest.mark.parametrize("name", sorted(SEQUENCE_MODELS))
def test_ideal_analog_network_equals_keras(name):
    "Every projection, gate and MLP on ideal cores: the analog network is Keras `predict` to 1e-4 of max|logit|."
    model, preprocess = zoo.load(name)
    x = preprocess(_test_set(SEQUENCE_MODELS[name][0], 8).x)
    network = AnalogNetwork.from_keras(model, IDEAL)
    assert network.hw_config()["layer"].size > 0
    close_to(network.predict(x), model.predict(x, verbose=0))


def test_front_door_gives_the_lstm_rows():
    "run_inference with the zoo name: the LSTM gets (N, 28, 28) rows as the dataset gives them (no channel axis added)."
    x, y = _test_set("mnist", 16)
    result = run_inference("mnist_lstm", "mnist", IDEAL, ntest=16, return_outputs=True, progress=False)
    model, preprocess = zoo.load("mnist_lstm")
    close_to(result.outputs[0], model.predict(x.astype(np.float32) / 255, verbose=0))
    close_to(result.float_outputs, result.outputs[0])
    assert "channel axis" not in result.input_note and not result.warnings, (result.input_note, result.warnings)
