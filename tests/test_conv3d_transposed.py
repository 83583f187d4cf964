"""3-D and transposed convolutions: Keras layers on analog cores, the 3-D convolution engine, and the two crossbar
formulations of a transposed convolution.

Independent references: Keras `predict` (ideal configuration to 1e-4 of max|output|), onnxruntime for ONNX
`ConvTranspose` semantics (pads, output_padding, dilations, groups), and the exact float product for the engines.
"""
import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tracemalloc

import numpy as np
import pytest
import keras

import crosssim_nb.convolution as convolution_module
from crosssim_nb.config import InferenceConfig
from crosssim_nb.core import AnalogCore
from crosssim_nb.network import AnalogNetwork
from crosssim_nb.convolution import (CoreEngine, DepthwiseCore, FloatMatrix, apply_conv, im2col, scatter_matrix,
                                     transposed_conv_scatter, zero_inserted)
from crosssim_nb.keras_import import conv_spec, transposed_conv_as_conv, keras_transposed_pads, analog_specs

IDEAL = InferenceConfig.ideal()
EIGHT_BIT = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX", nrows_max=0)


def relative_error(got, expected):
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def one_layer_model(layer, input_shape, seed=0):
    "A model of one layer whose weights (bias included) are random normal, so that a wrong bias or tap shows."
    keras.utils.set_random_seed(seed)
    inp = keras.Input(input_shape)
    model = keras.Model(inp, layer(inp))
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in layer.get_weights()])
    return model


L = keras.layers
CASES = {   # name: (layer factory, input shape without batch)
    "conv3d_same": (lambda: L.Conv3D(4, 3, padding="same"), (5, 6, 7, 3)),
    "conv3d_strided_valid_nobias_relu": (lambda: L.Conv3D(5, (2, 3, 2), strides=(2, 1, 3), use_bias=False, activation="relu"), (6, 7, 8, 2)),
    "conv3d_dilated_tanh": (lambda: L.Conv3D(4, 3, dilation_rate=(2, 1, 2), padding="same", activation="tanh"), (6, 5, 7, 2)),
    "conv3d_stride3_same": (lambda: L.Conv3D(3, 2, strides=3, padding="same"), (7, 8, 6, 2)),
    "conv3d_grouped": (lambda: L.Conv3D(4, 2, groups=2), (4, 5, 6, 4)),
    "conv3d_depthwise": (lambda: L.Conv3D(6, (1, 2, 2), strides=2, padding="same", groups=3), (4, 6, 5, 3)),
    "conv3d_1x1x1": (lambda: L.Conv3D(3, 1), (3, 4, 5, 4)),
    "conv1dt_same_s2": (lambda: L.Conv1DTranspose(4, 3, strides=2, padding="same"), (9, 3)),
    "conv1dt_valid_s3_op1_nobias": (lambda: L.Conv1DTranspose(3, 4, strides=3, output_padding=1, use_bias=False), (7, 2)),
    "conv1dt_dilated_relu": (lambda: L.Conv1DTranspose(2, 3, dilation_rate=2, padding="same", activation="relu"), (8, 3)),
    "conv1dt_kernel_below_stride": (lambda: L.Conv1DTranspose(3, 1, strides=3), (6, 2)),
    "conv2dt_same_s2": (lambda: L.Conv2DTranspose(4, 3, strides=2, padding="same"), (5, 6, 3)),
    "conv2dt_valid_op": (lambda: L.Conv2DTranspose(3, (3, 2), strides=(2, 3), output_padding=(1, 0)), (4, 5, 2)),
    "conv2dt_dilated_same": (lambda: L.Conv2DTranspose(2, 3, padding="same", dilation_rate=2), (6, 5, 3)),
    "conv2dt_s3_op2_sigmoid": (lambda: L.Conv2DTranspose(3, 4, strides=3, padding="same", output_padding=2, activation="sigmoid"), (4, 3, 2)),
    "conv2dt_same_op0": (lambda: L.Conv2DTranspose(3, 3, strides=2, padding="same", output_padding=0), (4, 4, 2)),
    "conv3dt_same_s2": (lambda: L.Conv3DTranspose(3, 3, strides=2, padding="same"), (3, 4, 3, 2)),
    "conv3dt_valid_op_nobias": (lambda: L.Conv3DTranspose(2, (2, 3, 1), strides=(1, 2, 3), output_padding=(0, 1, 2), use_bias=False), (3, 3, 4, 2)),
    "conv3dt_dilated": (lambda: L.Conv3DTranspose(2, 2, dilation_rate=2), (3, 4, 3, 3)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_ideal_equals_keras(monkeypatch, case):
    "Ideal configuration = Keras predict to 1e-4, on the library path, on im2col chunks, and tiled over several arrays."
    factory, shape = CASES[case]
    model = one_layer_model(factory(), shape)
    x = np.random.default_rng(1).normal(size=(3,) + shape).astype(np.float32)
    reference = model.predict(x, verbose=0)
    name = model.layers[-1].name
    net = AnalogNetwork.from_keras(model, IDEAL)
    assert name in net.cores                                                    # an analog core, not a digital fallback
    assert relative_error(net.predict(x, batch_size=2), reference) < 1e-4     # batches of 2 and 1
    rows = net.specs[name].n_in
    tiled = AnalogNetwork.from_keras(model, IDEAL.replace(nrows_max=max(1, -(-rows // 3))))
    assert len(tiled.cores[name].row_ranges) >= 2                               # several row tiles, summed digitally
    assert relative_error(tiled.predict(x, batch_size=3), reference) < 1e-4
    monkeypatch.setattr(convolution_module, "LIBRARY_CONVOLUTION", False)       # im2col in small chunks
    monkeypatch.setattr(convolution_module, "MIN_CHUNK_ROWS", 1)
    monkeypatch.setattr(convolution_module, "CHUNK_ELEMENTS", 200)
    assert relative_error(net.predict(x, batch_size=3), reference) < 1e-4
    assert relative_error(tiled.predict(x, batch_size=3), reference) < 1e-4


def small_3d_model():
    inp = keras.Input((4, 6, 5, 2), name="volume")
    y = L.Conv3D(6, 3, padding="same", activation="relu", name="conv3d")(inp)
    y = L.Conv3D(6, (1, 3, 3), groups=6, padding="same", name="depthwise3d")(y)
    y = L.Conv3DTranspose(3, 3, strides=2, padding="same", name="up3d")(y)
    model = keras.Model(inp, y)
    rng = np.random.default_rng(3)
    for layer in model.layers[1:]: layer.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in layer.get_weights()])
    return model


def small_transposed_model():
    inp = keras.Input((6, 5, 3), name="image")
    y = L.Conv2DTranspose(4, 3, strides=2, padding="same", activation="relu", name="up2d")(inp)
    y = L.Reshape((12 * 10, 4))(y)
    y = L.Conv1DTranspose(2, 3, strides=2, name="up1d")(y)
    return keras.Model(inp, y)


def im2col_rows(x, spec):
    "A core's im2col rows for layer input `x`, built independently of `apply_conv`: zero insertion and borders first."
    if spec.spatial_rank == 1: x = x[:, None]
    if spec.transposed: x = zero_inserted(x, spec.input_dilation, spec.padding)
    return im2col(x, spec.kernel_size, spec.strides, spec.dilation, "valid" if spec.transposed else spec.padding)


@pytest.mark.parametrize("build", [small_3d_model, small_transposed_model])
def test_eight_bit_layers_run_on_cores(build):
    "With 8-bit weights, DAC and ADC every 3-D / transposed layer is its own core (tiled, rows in CrossSim's order), the"
    " engine's output is the core's output on the layer's im2col rows, and the network leaves the ideal outputs."
    model = build()
    x = np.random.default_rng(4).normal(size=(3,) + model.input_shape[1:]).astype(np.float32)
    ideal = AnalogNetwork.from_keras(model, IDEAL).predict(x)
    assert relative_error(ideal, model.predict(x, verbose=0)) < 1e-4
    net = AnalogNetwork.from_keras(model, EIGHT_BIT.replace(nrows_max=32), calibration_data=x)
    analog_layers = [layer.name for layer in model.layers if "Conv" in type(layer).__name__]
    assert sorted(net.cores) == sorted(analog_layers)
    inputs = {}
    out = net.run(x, batch_size=len(x), observer=lambda name, tensor: inputs.setdefault(name, tensor))[0]
    assert relative_error(out, ideal) > 1e-3
    for name in analog_layers:
        core, spec = net.cores[name], net.specs[name]
        assert len(core.row_ranges) >= 2 or spec.n_in <= 32
        rows = im2col_rows(inputs[name], spec)
        direct = core.apply(rows if core.row_order is None else rows[:, core.row_order])
        engine_out = apply_conv(inputs[name], spec, net.engines[name])
        assert relative_error(engine_out.reshape(direct.shape), direct) < 1e-5, name
    table = net.hw_config().set_index("layer")
    kernels = {layer: table.loc[layer, "kernel"] for layer in analog_layers}
    expected = ({"conv3d": "3x3x3", "depthwise3d": "1x3x3 depthwise", "up3d": "3x3x3 transposed"} if build is small_3d_model
                else {"up2d": "3x3 transposed", "up1d": "3 transposed"})
    assert kernels == expected
    if build is small_3d_model:
        assert isinstance(net.cores["depthwise3d"], DepthwiseCore)              # only the diagonal devices are stored
        assert table.loc["up3d", "mvms_per_image"] == 8 * 12 * 10               # one read per output voxel (formulation a)
    weights_and_dac = AnalogNetwork.from_keras(model, EIGHT_BIT.replace(adc_bits=0), calibration_data=x).predict(x)
    assert 1e-3 < relative_error(weights_and_dac, ideal) < 0.05                # without the ADC: close, and not equal


@pytest.mark.parametrize("dependence", ["proportional", "independent"])
def test_read_noise_in_3d_is_keyed_per_image(monkeypatch, dependence):
    "Read noise on 3-D and transposed layers: the same draws on the library and im2col paths and for any batch size."
    model = small_3d_model()
    x = np.random.default_rng(5).normal(size=(4,) + model.input_shape[1:]).astype(np.float32)
    config = InferenceConfig(weight_bits=8, dac_bits=0, adc_bits=0, nrows_max=0, noise_model="generic", alpha_noise=0.05,
                             noise_dependence=dependence, noise_variance_precision="float32")
    net = AnalogNetwork.from_keras(model, config)
    clean = AnalogNetwork.from_keras(model, config.replace(noise_model="none", alpha_noise=0.0)).predict(x)
    noisy = net.predict(x, batch_size=4)
    noise = noisy - clean
    assert noise.std() > 1e-3 * np.abs(clean).max()
    assert np.abs(net.predict(x, batch_size=3) - noisy).max() < 1e-3 * noise.std()    # keyed per image, not per batch
    monkeypatch.setattr(convolution_module, "LIBRARY_CONVOLUTION", False)
    assert np.abs(net.predict(x, batch_size=4) - noisy).max() < 1e-3 * noise.std()    # im2col: the same draws


def test_3d_im2col_memory_is_bounded(monkeypatch):
    "A 3-D layer on im2col chunks allocates a small part of the whole im2col matrix, and equals Keras."
    x = np.random.default_rng(6).normal(size=(2, 16, 24, 24, 8)).astype(np.float32)
    conv = L.Conv3D(8, 3, padding="same")
    expected = keras.ops.convert_to_numpy(conv(x))
    spec, = analog_specs(conv, "conv")
    engine = FloatMatrix(spec)
    monkeypatch.setattr(convolution_module, "LIBRARY_CONVOLUTION", False)
    monkeypatch.setattr(convolution_module, "THREADS", 1)
    whole_im2col = x.size * 27 * 4                                              # bytes: 15.9 MB (27 taps of every value)
    tracemalloc.start()
    try:
        got = apply_conv(x, spec, engine, chunk_elements=1 << 15)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert relative_error(got, expected) < 1e-5
    assert peak < whole_im2col / 4, (peak, whole_im2col)     # a 1024-row chunk buffer (0.9 MB), the padded input, the output


def onnxruntime_node(op_type, x_nchw, weight, bias, **attributes):
    "onnxruntime's result of one `op_type` node (Conv, ConvTranspose) on `x_nchw`: the reference for ONNX semantics."
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper
    node = helper.make_node(op_type, ["x", "w", "b"], ["y"], **attributes)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_nchw.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x_nchw})[0]


ONNX_CASES = [   # (spatial input, cin, cout/groups, kernel, attributes)
    ((7,), 2, 3, (3,), dict(strides=[2], pads=[1, 0], output_padding=[1])),
    ((6, 5), 4, 2, (3, 3), dict(strides=[2, 1], pads=[1, 2, 0, 1], group=2)),
    ((5, 4), 3, 2, (2, 3), dict(strides=[3, 2], pads=[0, 1, 2, 0], output_padding=[2, 1], dilations=[1, 1])),
    ((5, 6), 2, 2, (3, 2), dict(dilations=[2, 3], pads=[2, 1, 3, 0])),
    ((4, 5), 3, 1, (3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1], group=3)),                 # depthwise
    ((3, 4, 3), 4, 2, (2, 3, 2), dict(strides=[2, 1, 2], pads=[0, 1, 1, 1, 0, 0], output_padding=[1, 0, 1], group=2)),
    ((4, 3, 3), 2, 3, (3, 3, 3), dict(pads=[3, 0, 1, 2, 4, 1])),                              # pads beyond the kernel: crops
]


@pytest.mark.parametrize("case", range(len(ONNX_CASES)))
def test_both_formulations_equal_onnxruntime(case):
    "ONNX ConvTranspose (pads, output_padding, dilations, groups; 1-D to 3-D): (a) as a convolution on the engine and (b)"
    " as a scattered matrix both equal onnxruntime."
    spatial, cin, per_group_out, window, attributes = ONNX_CASES[case]
    rng = np.random.default_rng(case)
    groups, rank = attributes.get("group", 1), len(spatial)
    weight = rng.normal(size=(cin, per_group_out) + window).astype(np.float32)
    bias = rng.normal(size=groups * per_group_out).astype(np.float32)
    x = rng.normal(size=(2, cin) + spatial).astype(np.float32)
    expected = np.moveaxis(onnxruntime_node("ConvTranspose", x, weight, bias, kernel_shape=list(window), **attributes), 1, -1)
    begins, ends = attributes.get("pads", [0] * 2 * rank)[:rank], attributes.get("pads", [0] * 2 * rank)[rank:]
    options = dict(strides=attributes.get("strides", 1), pads=list(zip(begins, ends)), output_padding=attributes.get("output_padding"),
                   dilation=attributes.get("dilations"), groups=groups, kernel_layout="onnx")
    x_last = np.moveaxis(x, 1, -1)
    equivalent = transposed_conv_as_conv(weight, **options)
    assert equivalent.output_size(spatial) == expected.shape[1:-1]
    spec = conv_spec("t", "t", "ConvTranspose", equivalent.kernel, bias, (1,) * rank, equivalent.dilation, equivalent.padding,
                     equivalent.groups, input_dilation=equivalent.input_dilation, transposed=True)
    assert relative_error(apply_conv(x_last, spec, FloatMatrix(spec)), expected) < 1e-5                  # (a)
    assert relative_error(transposed_conv_scatter(x_last, weight, **options) + bias, expected) < 1e-5    # (b)


@pytest.mark.parametrize("spatial, cin, cout, window, attributes", [
    ((9,), 2, 3, (3,), dict(pads=[2, 0], strides=[2])),
    ((7, 6), 4, 6, (3, 2), dict(pads=[1, 0, 2, 1], dilations=[2, 1], group=2)),
    ((7, 6), 3, 6, (3, 3), dict(pads=[0, 1, 1, 0], strides=[2, 2], group=3)),                # depthwise
    ((4, 5, 6), 2, 3, (2, 3, 3), dict(pads=[1, 0, 2, 0, 1, 1], strides=[1, 2, 1])),
], ids=["1d", "2d-grouped-dilated", "2d-depthwise", "3d"])
def test_explicit_asymmetric_padding_equals_onnxruntime(monkeypatch, spatial, cin, cout, window, attributes):
    "Ordinary convolutions with explicit, asymmetric pads (as ONNX Conv gives them) through `conv_spec`: onnxruntime's result."
    rng = np.random.default_rng(len(spatial))
    groups, rank = attributes.get("group", 1), len(spatial)
    weight = rng.normal(size=(cout, cin // groups) + window).astype(np.float32)
    bias = rng.normal(size=cout).astype(np.float32)
    x = rng.normal(size=(2, cin) + spatial).astype(np.float32)
    expected = np.moveaxis(onnxruntime_node("Conv", x, weight, bias, kernel_shape=list(window), **attributes), 1, -1)
    pads = attributes["pads"]
    spec = conv_spec("c", "c", "Conv", np.moveaxis(weight, (0, 1), (-1, -2)), bias, attributes.get("strides", [1] * rank),
                     attributes.get("dilations", [1] * rank), list(zip(pads[:rank], pads[rank:])), groups)
    assert spec.is_depthwise == (cin == groups)
    x_last = np.moveaxis(x, 1, -1)
    engine = FloatMatrix(spec) if not spec.is_depthwise else convolution_module.GroupedDepthwise(spec.kernel, spec.bias, spec.kernel_size)
    for library in (True, False):                                               # TensorFlow's padding, then patch_view's
        monkeypatch.setattr(convolution_module, "LIBRARY_CONVOLUTION", library)
        assert relative_error(apply_conv(x_last, spec, engine), expected) < 1e-5, library


def calibrated_core(matrix, rows, config):
    "An AnalogCore whose ADC range is the largest |ADC input| these rows produce (each formulation calibrated for itself)."
    profile = AnalogCore(matrix, config.replace(adc_bits=0), input_range=(-4, 4)).adc_inputs(rows)
    largest = max(float(np.abs(record["values"]).max()) for record in profile)
    return AnalogCore(matrix, config.replace(adc_range_option="CALIBRATED"), input_range=(-4, 4), adc_limits=(-largest, largest))


def test_formulations_on_eight_bit_cores():
    "Both formulations on 8-bit arrays (weights, DAC, ADC; each ADC range calibrated to its own sums): each close to the"
    " exact result, not equal to it, and not equal to each other (their ADCs digitise different sums); ideal cores: exact."
    keras.utils.set_random_seed(8)
    layer = L.Conv3DTranspose(3, 3, strides=2, padding="same", use_bias=False)
    x = np.random.default_rng(8).normal(size=(2, 3, 4, 3, 4)).astype(np.float32)
    exact = keras.ops.convert_to_numpy(layer(x))
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    pads = keras_transposed_pads((3, 3, 3), (2, 2, 2), (1, 1, 1), "same")
    spec, = analog_specs(layer, "up")
    rows_a, rows_b = im2col_rows(x, spec), x.reshape(-1, x.shape[-1])
    results = {}
    for name, config in (("ideal", IDEAL), ("8-bit", EIGHT_BIT)):
        if config.adc_bits:
            core_a, core_b = calibrated_core(spec.dense_matrix(), rows_a, config), calibrated_core(scatter_matrix(kernel), rows_b, config)
        else:
            core_a, core_b = (AnalogCore(matrix, config, input_range=(-4, 4)) for matrix in (spec.dense_matrix(), scatter_matrix(kernel)))
        results[name] = (apply_conv(x, spec, CoreEngine(core_a, spec)),
                         transposed_conv_scatter(x, kernel, 2, pads, product=core_b.apply))
    for got in results["ideal"]: assert relative_error(got, exact) < 1e-5
    analog_a, analog_b = results["8-bit"]
    errors = [relative_error(got, exact) for got in (analog_a, analog_b)]
    assert all(1e-4 < error < 0.05 for error in errors), errors
    assert relative_error(analog_a, analog_b) > 1e-4


DIGITAL_MODELS = {
    "3d": ((6, 8, 6, 2), lambda x: L.GlobalMaxPooling3D()(L.Cropping3D(((1, 0), (0, 1), (1, 1)))(L.UpSampling3D((1, 2, 2))(
        L.ZeroPadding3D((1, 0, 2))(L.AveragePooling3D(2, padding="same")(L.MaxPooling3D((2, 1, 2), strides=(1, 2, 1))(x))))))),
    "3d_average": ((4, 5, 6, 3), lambda x: L.GlobalAveragePooling3D()(L.AveragePooling3D((1, 2, 2))(x))),
    "1d": ((9, 3), lambda x: L.Cropping1D((1, 2))(L.UpSampling1D(3)(x))),
    "2d": ((5, 4, 2), lambda x: L.UpSampling2D((2, 3), interpolation="bilinear")(L.UpSampling2D(2)(x))),
}


@pytest.mark.parametrize("case", list(DIGITAL_MODELS))
def test_digital_3d_and_upsampling_layers_equal_keras(case):
    "3-D pooling, padding, cropping and up-sampling layers (digital) are exact, between analog convolutions too."
    shape, body = DIGITAL_MODELS[case]
    keras.utils.set_random_seed(9)
    inp = keras.Input(shape)
    conv = {4: L.Conv3D, 3: L.Conv2D, 2: L.Conv1D}[len(shape)](3, 1, activation="relu")
    model = keras.Model(inp, body(conv(inp)))
    x = np.random.default_rng(9).normal(size=(3,) + shape).astype(np.float32)
    net = AnalogNetwork.from_keras(model, IDEAL)
    assert relative_error(net.predict(x, batch_size=2), model.predict(x, verbose=0)) < 1e-6


@pytest.mark.parametrize("array_module", ["cupy", "fake-cupy"])
@pytest.mark.parametrize("settings", [dict(), dict(noise_model="generic", alpha_noise=0.02, nrows_max=32)], ids=["8-bit", "noise+tiles"])
@pytest.mark.parametrize("build", [small_3d_model, small_transposed_model])
def test_on_the_gpu_matches_the_cpu(monkeypatch, array_module, settings, build):
    "`use_gpu=True`: real CuPy where a GPU is usable, else skipped; and `fake_cupy`, the CPU stand-in that keeps CuPy's"
    " host/device rules, so the 3-D and zero-insertion paths are exercised on device arrays everywhere."
    import sys
    from crosssim_nb.backend import gpu_available, gpu_status
    if array_module == "cupy" and not gpu_available(): pytest.skip("no usable CUDA GPU")
    if array_module == "fake-cupy":
        import fake_cupy
        monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    gpu_status.cache_clear()
    try:
        model = build()
        x = np.random.default_rng(11).normal(size=(5,) + model.input_shape[1:]).astype(np.float32)
        ideal = AnalogNetwork.from_keras(model, InferenceConfig.ideal(use_gpu=True))
        assert relative_error(ideal.predict(x, batch_size=2), model.predict(x, verbose=0)) < 1e-4
        config = EIGHT_BIT.replace(adc_bits=12, noise_variance_precision="float32", **settings)
        cpu = AnalogNetwork.from_keras(model, config, calibration_data=x).predict(x)
        gpu_net = AnalogNetwork.from_keras(model, config.replace(use_gpu=True), calibration_data=x)
        assert all(core.xp is sys.modules["cupy"] for core in gpu_net.cores.values())
        gpu = gpu_net.predict(x)
        assert np.median(np.abs(gpu - cpu)) <= 1e-3 * np.abs(cpu).max() and relative_error(gpu, cpu) < 0.02
    finally:
        gpu_status.cache_clear()


def test_calibrated_adc_ranges_for_3d_and_transposed_layers():
    "calibrate_adc profiles 3-D and transposed layers (their ADC inputs include the zero-inserted reads) and its limits help."
    from crosssim_nb.calibration import calibrate_adc
    model = small_3d_model()
    x = np.random.default_rng(12).normal(size=(6,) + model.input_shape[1:]).astype(np.float32)
    ideal = AnalogNetwork.from_keras(model, IDEAL).predict(x)
    config = EIGHT_BIT.replace(nrows_max=32)
    calibration = calibrate_adc(AnalogNetwork.from_keras(model, config, calibration_data=x), x)
    assert set(calibration.adc_limits) == {"conv3d", "depthwise3d", "up3d"}
    calibrated = AnalogNetwork.from_keras(model, config.replace(adc_range_option="CALIBRATED"), calibration_data=x,
                                          adc_limits=calibration.adc_limits).predict(x)
    with_max = AnalogNetwork.from_keras(model, config, calibration_data=x).predict(x)
    assert 1e-3 < relative_error(calibrated, ideal) < 0.5 * relative_error(with_max, ideal)
