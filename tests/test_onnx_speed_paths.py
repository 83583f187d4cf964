"""The faster paths of convolution layers (issue 25's speed targets) against the paths they replace.

- the bias and ReLU fused into TensorFlow's convolution (`convolution._fused_float_convolution`) vs the unfused path
  (`FUSED_CONVOLUTION = False`): bit for bit (the same float32 product, bias addition and clamp);
- a residual `Add` (+ ReLU) done by the layer before it (`AnalogNetwork._fuse_residuals`) vs the executor running the
  Add and the ReLU as nodes of their own: bit for bit, ideal and 8-bit; and ideal = onnxruntime to 1e-4 of max|output|;
- element-wise ONNX ops over several channels-last tensors run channels-last (no layout round trip), = onnxruntime.
"""
import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from crosssim_nb import convolution
from crosssim_nb.config import InferenceConfig
from crosssim_nb.convolution import CoreEngine, FloatMatrix, apply_conv
from crosssim_nb.core import AnalogCore, NonFiniteResultError
from crosssim_nb.graph import AnalogSpec
from crosssim_nb.network import AnalogNetwork, _clamp
import crosssim_nb.onnx_import  # noqa: F401  (attaches from_onnx)

RNG = np.random.default_rng(25)
EIGHT_BIT = dict(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX")


def conv_spec(kernel_size, strides, dilation, padding, c_in=5, c_out=6, bias=True):
    "An AnalogSpec of a random convolution (1-D layers as (1, k) kernels, as the importers write them)."
    taps = int(np.prod(kernel_size))
    matrix = RNG.normal(size=(c_out, taps * c_in)).astype(np.float32)
    return AnalogSpec("c", "c", "Conv", matrix, RNG.normal(size=c_out).astype(np.float32) if bias else None,
                      kernel_size=tuple(kernel_size), strides=tuple(strides), dilation=tuple(dilation), padding=padding,
                      spatial_rank=len(kernel_size))


def both_paths(monkeypatch, x, spec, engine, post=None, residual=None):
    "(fused, unfused) outputs of one layer."
    fused = apply_conv(x.copy(), spec, engine, post, residual=residual)
    with monkeypatch.context() as m:
        m.setattr(convolution, "FUSED_CONVOLUTION", False)
        unfused = apply_conv(x.copy(), spec, engine, post, residual=residual)
    return fused, unfused


GEOMETRIES = [((3, 3), (1, 1), (1, 1), "same"), ((3, 3), (2, 2), (1, 1), "same"), ((3, 2), (2, 1), (1, 1), "valid"),
              ((3, 3), (1, 1), (2, 2), "same"), ((3, 3), (2, 1), (1, 1), ((2, 0), (1, 1))), ((1, 1), (2, 2), (1, 1), "valid"),
              ((2, 3, 3), (1, 2, 1), (1, 1, 1), "same")]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: f"k{g[0]}s{g[1]}d{g[2]}{g[3]}")
@pytest.mark.parametrize("engine_kind", ["ideal_core", "float_matrix"])
@pytest.mark.parametrize("activation", [None, "relu", "relu6"])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_convolution_equals_unfused_bit_for_bit(monkeypatch, geometry, engine_kind, activation, bias):
    spec = conv_spec(*geometry, bias=bias)
    engine = (CoreEngine(AnalogCore(spec.matrix, InferenceConfig.ideal(), name="c", bias=spec.bias), spec)
              if engine_kind == "ideal_core" else FloatMatrix(spec))
    assert engine.float_bias is not False
    post = None if activation is None else _clamp(None if activation == "relu" else 6.0)
    x = RNG.normal(size=(3,) + (7,) * len(geometry[0]) + (5,)).astype(np.float32)
    calls = []
    original = convolution._fused_function
    monkeypatch.setattr(convolution, "_fused_function", lambda *a: calls.append(a) or original(*a))
    fused, unfused = both_paths(monkeypatch, x, spec, engine, post)
    assert calls, "the fused kernel did not run"
    np.testing.assert_array_equal(fused, unfused)
    if post is not None: assert fused.min() >= 0 and (activation == "relu" or fused.max() <= 6)


def test_fused_one_dimensional_layer(monkeypatch):
    "A Conv1D-like layer (input (B, L, C), a (1, k) kernel): fused = unfused, output (B, L', C')."
    spec = conv_spec((1, 3), (1, 2), (1, 1), "same")
    spec = AnalogSpec(**{**spec.__dict__, "spatial_rank": 1})
    engine = CoreEngine(AnalogCore(spec.matrix, InferenceConfig.ideal(), name="c", bias=spec.bias), spec)
    x = RNG.normal(size=(4, 11, 5)).astype(np.float32)
    residual = RNG.normal(size=(4, 6, 6)).astype(np.float32)
    fused, unfused = both_paths(monkeypatch, x, spec, engine, _clamp(None), residual)
    assert fused.shape == (4, 6, 6)
    np.testing.assert_array_equal(fused, unfused)


@pytest.mark.parametrize("config", [InferenceConfig.ideal(), InferenceConfig(**EIGHT_BIT)], ids=["ideal", "8bit"])
@pytest.mark.parametrize("activation", [None, "relu"])
def test_residual_before_post_op(monkeypatch, config, activation):
    "apply_conv(residual=r): (layer + r) then the post-op, fused or not, = the layer's own output + r, clamped."
    spec = conv_spec((3, 3), (1, 1), (1, 1), "same")
    core = AnalogCore(spec.matrix, config, name="c", bias=spec.bias, input_range=(-4, 4))
    engine = CoreEngine(core, spec)
    x = RNG.normal(size=(4, 8, 8, 5)).astype(np.float32)
    residual = RNG.normal(size=(4, 8, 8, 6)).astype(np.float32)
    post = None if activation is None else _clamp(None)
    fused, unfused = both_paths(monkeypatch, x, spec, engine, post, residual)
    expected = apply_conv(x.copy(), spec, engine) + residual
    if post is not None: expected = np.maximum(expected, 0)
    np.testing.assert_array_equal(fused, unfused)
    np.testing.assert_array_equal(fused, expected)


def test_float_bias_only_where_the_periphery_only_adds_it():
    spec = conv_spec((3, 3), (1, 1), (1, 1), "same")
    def float_bias(config, bias=spec.bias, **kw): return CoreEngine(AnalogCore(spec.matrix, config, name="c", bias=bias, **kw), spec).float_bias
    np.testing.assert_array_equal(float_bias(InferenceConfig.ideal()), spec.bias)
    assert float_bias(InferenceConfig.ideal(), bias=None) is None             # nothing added: not even a zero
    assert float_bias(InferenceConfig(dac_bits=8, adc_bits=0)) is not False   # the DAC made the drives before the product
    assert float_bias(InferenceConfig(**EIGHT_BIT)) is False                  # ADC rounding
    assert float_bias(InferenceConfig.ideal(noise_model="generic", alpha_noise=0.01)) is False   # read noise


def test_overflow_still_names_the_layer():
    "A fused output that overflows is recomputed by the unfused path, whose core names the layer and the cause."
    spec = conv_spec((3, 3), (1, 1), (1, 1), "same")
    engine = CoreEngine(AnalogCore(spec.matrix, InferenceConfig.ideal(), name="c", bias=spec.bias), spec)
    x = np.full((2, 6, 6, 5), 3e37, np.float32)
    with pytest.raises(NonFiniteResultError, match="AnalogCore 'c'"):
        apply_conv(x, spec, engine, _clamp(None))


def test_aligned_input_is_read_not_written(monkeypatch):
    "The layer input TensorFlow reads without a copy (DLPack) is left as it was."
    from crosssim_nb.backend import aligned_empty
    spec = conv_spec((3, 3), (1, 1), (1, 1), "same")
    engine = CoreEngine(AnalogCore(spec.matrix, InferenceConfig.ideal(), name="c", bias=spec.bias), spec)
    x = aligned_empty((3, 9, 9, 5)); x[...] = RNG.normal(size=x.shape)
    before = x.copy()
    for fused in (True, False):
        monkeypatch.setattr(convolution, "FUSED_CONVOLUTION", fused)
        apply_conv(x, spec, engine, _clamp(None))
        np.testing.assert_array_equal(x, before)


def resnet_blocks_onnx(seed:int=3) -> onnx.ModelProto:
    "Two ResNet basic blocks (identity and projection shortcut, BatchNorm folded), NCHW, as torch.onnx writes them."
    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    def conv(x, cin, cout, k, stride, name, relu=True):
        weights.extend([numpy_helper.from_array((rng.normal(size=(cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32), f"{name}.w"),
                        numpy_helper.from_array((0.1 * rng.normal(size=cout)).astype(np.float32), f"{name}.b")])
        nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [name], name=name, kernel_shape=[k, k],
                                      strides=[stride] * 2, pads=[k // 2] * 4))
        if not relu: return name
        nodes.append(helper.make_node("Relu", [name], [f"{name}_relu"], name=f"{name}_relu"))
        return f"{name}_relu"
    x = conv("input", 3, 8, 3, 1, "stem")
    y = conv(conv(x, 8, 8, 3, 1, "a1"), 8, 8, 3, 1, "a2", relu=False)
    nodes += [helper.make_node("Add", ["a2", x], ["a_sum"], name="a_sum"), helper.make_node("Relu", ["a_sum"], ["a_out"], name="a_out")]
    y = conv(conv("a_out", 8, 16, 3, 2, "b1"), 16, 16, 3, 1, "b2", relu=False)
    shortcut = conv("a_out", 8, 16, 1, 2, "b_proj", relu=False)
    nodes += [helper.make_node("Add", [y, shortcut], ["b_sum"], name="b_sum"), helper.make_node("Relu", ["b_sum"], ["b_out"], name="b_out"),
              helper.make_node("Mul", ["b_out", "b_out"], ["squared"], name="squared"),            # element-wise over two tensors
              helper.make_node("Max", ["squared", "b_out"], ["peak"], name="peak"),
              helper.make_node("GlobalAveragePool", ["peak"], ["pool"], name="pool"),
              helper.make_node("Flatten", ["pool"], ["flat"], name="flat")]
    graph = helper.make_graph(nodes, "blocks", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 12, 12])],
                              [helper.make_tensor_value_info("flat", TensorProto.FLOAT, ["batch", 16])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module")
def blocks():
    model = resnet_blocks_onnx()
    x = RNG.normal(size=(6, 3, 12, 12)).astype(np.float32)
    reference = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    return model, x, reference


def test_residual_adds_fused_and_run_channels_last(blocks):
    model, x, reference = blocks
    network = AnalogNetwork.from_onnx(model, InferenceConfig.ideal())
    assert network._residuals == {"a2": "stem_relu", "b_proj": "b2"}          # the later branch adds the earlier one
    assert network._through == {"a_sum": "a2", "a_out": "a_sum", "b_sum": "b_proj", "b_out": "b_sum"}
    layouts = {n.layer_type for n in network.graph.nodes}
    assert "onnx:to_channels_first" in layouts                                # (the pooled output only)
    to_first = [n.inputs[0] for n in network.graph.nodes if n.layer_type == "onnx:to_channels_first"]
    assert to_first == ["peak"], to_first                                      # Add, Relu, Mul and Max stayed channels-last
    out = network.run(x)[0]
    assert np.abs(out - reference).max() <= 1e-4 * np.abs(reference).max()


@pytest.mark.parametrize("config", [InferenceConfig.ideal(), InferenceConfig(**EIGHT_BIT)], ids=["ideal", "8bit"])
def test_residual_fusion_equals_unfused_executor(blocks, config):
    model, x, reference = blocks
    fused = AnalogNetwork.from_onnx(model, config, calibration_data=x)
    plain = AnalogNetwork.from_onnx(model, config, calibration_data=x)
    for name in plain._residuals: plain._post[name] = None                    # the Add and its ReLU as nodes of their own
    plain._residuals, plain._through = {}, {}
    for batch_size in (6, 4):
        np.testing.assert_array_equal(fused.run(x, batch_size=batch_size)[0], plain.run(x, batch_size=batch_size)[0])
    if config.adc_bits: assert not np.allclose(fused.run(x)[0], reference, atol=1e-4 * np.abs(reference).max())   # really analog


def test_read_only_input(monkeypatch):
    "A read-only layer input (DLPack cannot export it) takes the copying path: same result."
    from crosssim_nb.backend import aligned_empty
    spec = conv_spec((3, 3), (1, 1), (1, 1), "same")
    engine = CoreEngine(AnalogCore(spec.matrix, InferenceConfig.ideal(), name="c", bias=spec.bias), spec)
    x = aligned_empty((2, 6, 6, 5)); x[...] = RNG.normal(size=x.shape)
    expected = apply_conv(x.copy(), spec, engine, _clamp(None))
    x.flags.writeable = False
    for fused in (True, False):
        monkeypatch.setattr(convolution, "FUSED_CONVOLUTION", fused)
        np.testing.assert_array_equal(apply_conv(x, spec, engine, _clamp(None)), expected)
