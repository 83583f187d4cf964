"""Every model of the installed `keras.applications` through the simulator (slow).

The models are enumerated at run time from `keras.applications` (no hand-kept list). Each is built with random
weights at its default input size; with `InferenceConfig.ideal()` the simulated network must reproduce Keras
`predict` on 2 images to 1e-4 relative (max |difference| / max |reference|, on the logits before the softmax, whose
random-weight outputs are otherwise all ~1/1000). A model the importer refuses must be refused with a named reason
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
    # Some random-weight models are numerically chaotic: Keras then disagrees with itself between batch sizes
    # (EfficientNetV2M: 83 % at the logits). There the comparison is made at the deepest of a few cut points where Keras
    # agrees with itself to 1e-5, which still runs most of the network through the simulator.
    for fraction in (1.0, 0.75, 0.5, 0.25):
        cut = model if fraction == 1.0 else keras.Model(model.input, model.layers[int(len(model.layers) * fraction)].output)
        reference = cut.predict(x, batch_size=2, verbose=0)
        if relative_error(cut.predict(x, batch_size=1, verbose=0), reference) < 1e-5: break
    else: pytest.fail(f"{name}: Keras disagrees with itself between batch sizes at every cut point")
    net = AnalogNetwork.from_keras(cut, InferenceConfig.ideal())
    got = net.predict(x, batch_size=2)
    assert np.all(np.isfinite(reference))
    error = relative_error(got, reference)
    assert error < 1e-4, f"{name} (cut at {fraction:.0%} of its layers): relative error {error:.2e}"
    del net, model, cut; gc.collect()


def relative_error(got, expected) -> float:
    return float(np.abs(np.asarray(got, np.float64) - expected).max() / np.abs(expected).max())
