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

REFUSED = {}        # model name -> the reason its refusal must name (empty: every model is expected to run)


def application_names() -> list:
    return sorted(n for n in dir(keras.applications) if not n.startswith("_") and inspect.isfunction(getattr(keras.applications, n)))


@pytest.mark.slow
@pytest.mark.parametrize("name", application_names())
def test_keras_application_ideal_equals_keras(name):
    keras.backend.clear_session(); gc.collect()
    model = getattr(keras.applications, name)(weights=None, classifier_activation=None)
    if None in model.input_shape[1:]:      # size-agnostic models (MobileNetV3): their default size, 224 px
        model = getattr(keras.applications, name)(weights=None, classifier_activation=None, input_shape=(224, 224, 3))
    x = np.random.default_rng(0).uniform(0, 255, size=(2,) + tuple(model.input_shape[1:])).astype(np.float32)
    if name in REFUSED:
        with pytest.raises(UnsupportedLayerError, match=REFUSED[name]): AnalogNetwork.from_keras(model, InferenceConfig.ideal())
        return
    set_batchnorm_statistics(model, x)
    reference = model.predict(x, batch_size=2, verbose=0)
    agreement = relative_error(model.predict(x, batch_size=1, verbose=0), reference)
    assert agreement < 1e-5, f"{name}: Keras disagrees with itself between batch sizes ({agreement:.1e}): no reference"
    net = AnalogNetwork.from_keras(model, InferenceConfig.ideal())
    got = net.predict(x, batch_size=2)
    assert np.all(np.isfinite(reference))
    error = relative_error(got, reference)
    assert error < 1e-4, f"{name}: relative error {error:.2e}"
    del net, model; gc.collect()


def relative_error(got, expected) -> float:
    return float(np.abs(np.asarray(got, np.float64) - expected).max() / np.abs(expected).max())


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
