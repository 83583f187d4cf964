"""The network executor's memory-saving path (issue 25's memory target): a residual sum written over the shortcut's memory.

Where nothing reads a ResNet block's shortcut after its `Add`, the layer before the Add writes the sum over the shortcut,
a few images at a time (`convolution._residual_in_place`), so a block holds two activations (as onnxruntime's fused
Conv+Add) instead of three. Checked against the whole-batch path and the unfused executor bit for bit (ideal, 8-bit,
several chunk sizes and worker counts), against onnxruntime to 1e-4, and that a shortcut read again (or the caller's
own input array) is never written.
"""
import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from crosssim_nb import convolution
from crosssim_nb.config import InferenceConfig
from crosssim_nb.convolution import CoreEngine, FloatMatrix, apply_conv
from crosssim_nb.core import AnalogCore
from crosssim_nb.graph import AnalogSpec
from crosssim_nb.network import AnalogNetwork, _clamp
import crosssim_nb.onnx_import  # noqa: F401  (attaches from_onnx)
from test_onnx_speed_paths import EIGHT_BIT, conv_spec, resnet_blocks_onnx

RNG = np.random.default_rng(2525)


def spy_in_place(monkeypatch) -> list:
    "Record, per call of `_residual_in_place`, whether it wrote the sum over the residual (True) or declined (False)."
    calls, original = [], convolution._residual_in_place
    def spy(engine, x, spec, post, residual, *args):
        out = original(engine, x, spec, post, residual, *args)
        calls.append(out is residual)
        return out
    monkeypatch.setattr(convolution, "_residual_in_place", spy)
    return calls


@pytest.mark.parametrize("geometry", [((3, 3), (1, 1), (1, 1), "same"), ((3, 3), (2, 2), (1, 1), "same"),
                                      ((1, 3), (1, 2), (1, 1), "valid"), ((2, 3, 3), (1, 2, 1), (1, 1, 1), "same")],
                         ids=["3x3", "3x3s2", "1d", "3d"])
@pytest.mark.parametrize("engine_kind", ["ideal_core", "float_matrix", "8bit_core"])
@pytest.mark.parametrize("activation", [None, "relu"])
def test_sum_over_residual_equals_whole_batch(monkeypatch, geometry, engine_kind, activation):
    spec = conv_spec(*geometry)
    one_dimensional = geometry[0][0] == 1
    if one_dimensional: spec = AnalogSpec(**{**spec.__dict__, "spatial_rank": 1})   # Conv1D: input (B, L, C), a (1, k) kernel
    if engine_kind == "float_matrix": engine = FloatMatrix(spec)
    else:
        config = InferenceConfig.ideal() if engine_kind == "ideal_core" else InferenceConfig(**EIGHT_BIT)
        engine = CoreEngine(AnalogCore(spec.matrix, config, name="c", bias=spec.bias, input_range=(-4, 4)), spec)
    post = None if activation is None else _clamp(None)
    x = RNG.normal(size=(7,) + (6,) * (1 if one_dimensional else len(geometry[0])) + (5,)).astype(np.float32)
    residual = RNG.normal(size=apply_conv(x.copy(), spec, engine).shape).astype(np.float32)
    whole = apply_conv(x.copy(), spec, engine, post, residual=residual)
    calls = spy_in_place(monkeypatch)
    for images, threads in [(1, 1), (2, 2), (3, 2), (100, 1)]:                  # chunks of 1, 2, 3 images, or one chunk
        monkeypatch.setattr(convolution, "RESIDUAL_CHUNK_BYTES", images * residual.nbytes // len(residual))
        monkeypatch.setattr(convolution, "THREADS", threads)
        summed = residual.copy()
        out = apply_conv(x.copy(), spec, engine, post, residual=summed, overwrite_residual=True)
        assert out is summed                                                   # the sum lives in the residual's memory
        np.testing.assert_array_equal(out, whole)                              # bit for bit
    assert calls == [True] * 4


@pytest.mark.parametrize("config", [InferenceConfig.ideal(), InferenceConfig(**EIGHT_BIT)], ids=["ideal", "8bit"])
def test_network_sums_over_shortcuts(monkeypatch, config):
    model = resnet_blocks_onnx()
    x = RNG.normal(size=(9, 3, 12, 12)).astype(np.float32)
    network = AnalogNetwork.from_onnx(model, config, calibration_data=x)
    monkeypatch.setattr(convolution, "RESIDUAL_CHUNK_BYTES", 1)               # one image a chunk
    calls = spy_in_place(monkeypatch)
    in_place = network.run(x, batch_size=5)[0]
    assert calls == [True, True] * 2                                           # a2 over stem_relu, b_proj over b2; two batches
    with monkeypatch.context() as m:
        m.setattr(convolution, "_residual_in_place", lambda *args: None)       # the whole-batch path
        np.testing.assert_array_equal(in_place, network.run(x, batch_size=5)[0])
    if not config.adc_bits:
        reference = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        assert np.abs(in_place - reference).max() <= 1e-4 * np.abs(reference).max()


def shortcut_read_again_onnx(seed:int=5) -> onnx.ModelProto:
    "A block whose shortcut is read again after the Add (Mul of the block output and the shortcut), and is a model output."
    rng = np.random.default_rng(seed)
    def weight(name, *shape): return numpy_helper.from_array((rng.normal(size=shape) / 4).astype(np.float32), name)
    nodes = [helper.make_node("Conv", ["input", "w0", "b0"], ["stem"], name="stem", pads=[1] * 4),
             helper.make_node("Relu", ["stem"], ["shortcut"], name="stem_relu"),
             helper.make_node("Conv", ["shortcut", "w1", "b1"], ["branch"], name="branch", pads=[1] * 4),
             helper.make_node("Add", ["branch", "shortcut"], ["sum"], name="sum"),
             helper.make_node("Relu", ["sum"], ["block"], name="block"),
             helper.make_node("Mul", ["block", "shortcut"], ["product"], name="product")]
    graph = helper.make_graph(nodes, "read_again", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("product", TensorProto.FLOAT, ["batch", 6, 8, 8])],
                              [weight("w0", 6, 3, 3, 3), weight("b0", 6), weight("w1", 6, 6, 3, 3), weight("b1", 6)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_shortcut_read_again_is_not_written(monkeypatch):
    model = shortcut_read_again_onnx()
    x = RNG.normal(size=(4, 3, 8, 8)).astype(np.float32)
    network = AnalogNetwork.from_onnx(model, InferenceConfig.ideal())
    assert network._residuals == {"branch": "stem_relu"}                     # the Add is still done by the layer before it
    calls = spy_in_place(monkeypatch)
    out = network.run(x)[0]
    assert calls == []                                                         # ... but not over the shortcut, which Mul reads
    reference = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.abs(out - reference).max() <= 1e-4 * np.abs(reference).max()


def test_callers_input_is_never_written(monkeypatch):
    "A Keras block whose shortcut is the model input itself: the caller's array is read, never written."
    import keras
    inputs = keras.Input((8, 8, 4))
    branch = keras.layers.Conv2D(4, 3, padding="same", name="branch")(inputs)
    model = keras.Model(inputs, keras.layers.ReLU()(keras.layers.Add()([branch, inputs])))
    x = RNG.normal(size=(5, 8, 8, 4)).astype(np.float32)
    before = x.copy()
    network = AnalogNetwork.from_keras(model, InferenceConfig.ideal())
    calls = spy_in_place(monkeypatch)
    out = network.run(x)[0]
    np.testing.assert_array_equal(x, before)
    assert True not in calls
    expected = model.predict(before, verbose=0)
    assert np.abs(out - expected).max() <= 1e-4 * np.abs(expected).max()


@pytest.mark.parametrize("in_place", [False, True], ids=["whole", "over_residual"])
def test_stochastic_rounding_keyed_by_row_in_every_piece(monkeypatch, in_place):
    "The periphery runs in pieces; each piece's rounding draws are keyed by its rows' global index: the same outputs for any piece size and batch split."
    spec = conv_spec((3, 3), (1, 1), (1, 1), "same")
    config = InferenceConfig(**{**EIGHT_BIT, "stochastic_rounding": True})
    engine = CoreEngine(AnalogCore(spec.matrix, config, name="c", bias=spec.bias, input_range=(-4, 4)), spec)
    x = RNG.normal(size=(6, 8, 8, 5)).astype(np.float32)
    residual = RNG.normal(size=(6, 8, 8, 6)).astype(np.float32)
    def layer(images, first_image=0):
        summed = residual[first_image:first_image + len(images)].copy()
        return apply_conv(images.copy(), spec, engine, residual=summed, first_image=first_image, overwrite_residual=in_place)
    whole = layer(x)
    monkeypatch.setattr(convolution, "PERIPHERY_CHUNK_ELEMENTS", 7 * 6)           # pieces of 7 rows
    monkeypatch.setattr(convolution, "THREADS", 2)
    np.testing.assert_array_equal(layer(x), whole)
    np.testing.assert_array_equal(np.concatenate([layer(x[:4]), layer(x[4:], first_image=4)]), whole)   # another batch split
    assert not np.array_equal(layer(x[:4], first_image=1), whole[:4])               # the keys matter (other rows: other draws)
