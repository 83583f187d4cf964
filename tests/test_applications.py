"""Every model of the installed `keras.applications` through the simulator (slow).

The models are enumerated at run time from `keras.applications` (no hand-kept list). Each is built with random
weights at its default input size; with `InferenceConfig.ideal()` the simulated network must reproduce Keras
`predict` on 2 images to 1e-4 relative (max |difference| / max |reference|, on the logits before the softmax, whose
random-weight outputs are otherwise all ~1/1000), after setting each BatchNormalization layer's statistics from the
2 images (see `set_batchnorm_statistics`: without it deep random-weight models are chaotic in float32). A model the importer refuses must be refused with a named reason
listed in `REFUSED` (the importer notebook lists the same refusals); none is expected today.
Run with:  .venv/bin/python -m pytest -q -n 0 -m slow tests/test_applications.py   (big models need several GB each)
"""
import gc, inspect, os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest
import keras

from crosssim_nb.config import InferenceConfig
from crosssim_nb.keras_import import UnsupportedLayerError
from crosssim_nb.network import AnalogNetwork

TOLERANCE = 1e-4    # max |simulated - Keras| / max |Keras| on the logits
REFUSED = {}        # model name -> the reason its refusal must name (empty: every model is expected to run)


def application_names() -> list:
    return sorted(n for n in dir(keras.applications) if not n.startswith("_") and inspect.isfunction(getattr(keras.applications, n)))


@pytest.mark.slow
@pytest.mark.parametrize("name", application_names())
def test_keras_application_ideal_equals_keras(name):
    keras.backend.clear_session(); gc.collect()
    keras.utils.set_random_seed(0)         # the random weights: the same model on every run
    model = getattr(keras.applications, name)(weights=None, classifier_activation=None)
    if None in model.input_shape[1:]:      # size-agnostic models (MobileNetV3): their default size, 224 px
        model = getattr(keras.applications, name)(weights=None, classifier_activation=None, input_shape=(224, 224, 3))
    x = np.random.default_rng(0).uniform(0, 255, size=(2,) + tuple(model.input_shape[1:])).astype(np.float32)
    if name in REFUSED:
        with pytest.raises(UnsupportedLayerError, match=REFUSED[name]): AnalogNetwork.from_keras(model, InferenceConfig.ideal())
        return
    set_batchnorm_statistics(model, x)
    reference = model.predict(x, batch_size=2, verbose=0)
    assert np.all(np.isfinite(reference))
    net = AnalogNetwork.from_keras(model, InferenceConfig.ideal())
    got = net.predict(x, batch_size=2)
    error = relative_error(got, reference)
    if error >= TOLERANCE:
        # Deep models amplify float32 rounding (ResNet152: 2 in 1e4 between two float32 orders of summation). Judge both
        # float32 computations against the same weights in float64 Keras: the simulator must be within the tolerance of
        # the exact result, or at most twice as far from it as Keras' own float32 result is.
        exact = float64_predict(name, model, x)
        keras_error, error = relative_error(reference, exact), relative_error(got, exact)
        assert error < max(TOLERANCE, 2 * keras_error), (
            f"{name}: relative error {error:.2e} against float64 Keras (Keras float32: {keras_error:.2e})")
    del net, model; gc.collect()


def relative_error(got, expected) -> float:
    return float(np.abs(np.asarray(got, np.float64) - expected).max() / np.abs(expected).max())


def float64_predict(name, model, x) -> np.ndarray:
    "The same model, weights and inputs in float64 Keras: the reference both float32 computations are judged against."
    keras.config.set_dtype_policy("float64")
    try:
        twin = getattr(keras.applications, name)(weights=None, classifier_activation=None, input_shape=model.input_shape[1:])
    finally:
        keras.config.set_dtype_policy("float32")
    twin.set_weights([w.astype(np.float64) for w in model.get_weights()])
    exact = np.asarray(twin.predict(x.astype(np.float64), batch_size=2, verbose=0), np.float64)
    del twin; gc.collect()
    return exact


def set_batchnorm_statistics(model, x):
    """Set every BatchNormalization layer's moving mean and variance to the statistics of `x` at its input.

    With `weights=None` the moving statistics are 0 and 1 whatever the activations are, so activations grow from block
    to block and deep models become numerically chaotic: random-weight EfficientNetV2L gives logits that differ by
    116 % between Keras in float32 and the same weights in float64, and EfficientNetV2M by 83 % between Keras batch
    sizes, so no float32 computation can be compared with them. One training-mode pass with momentum 0 stores each
    layer's batch statistics (a trained model's are of the same kind); afterwards float32 and float64 Keras agree to
    1e-6 on EfficientNetV2L and the comparison measures the simulator, not rounding amplified by 200 layers.
    """
    def walk(layer): return [layer] + [inner for child in getattr(layer, "layers", []) for inner in walk(child)]
    layers = [layer for layer in walk(model) if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers: layer.momentum = 0.0
    model(x, training=True)
    for layer, momentum in zip(layers, momenta): layer.momentum = momentum
