"""End-to-end tests of the Keras importer and the analog network executor.

The independent reference is Keras itself: with `InferenceConfig.ideal()` the simulated network must reproduce
`model.predict` to 1e-4 relative error (max |difference| / max |reference|).
"""
import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest
import keras

from crosssim_nb.config import InferenceConfig
from crosssim_nb.keras_import import UnsupportedLayerError, load_keras_model
import crosssim_nb.convolution as convolution_module
from crosssim_nb.network import AnalogNetwork, CoreEngine, GroupedDepthwise
from crosssim_nb.convolution import DepthwiseCore, DepthwiseEngine
from crosssim_nb.core import AnalogCore
from crosssim_nb.graph import depthwise_matrix
from crosssim_nb.convolution import im2col, conv_row_permutation

IDEAL = InferenceConfig.ideal()
# the library fast paths (TensorFlow's convolution and pooling kernels) stand in only on Keras' TensorFlow backend
TENSORFLOW_BACKEND = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="Keras runs on another backend")


def relative_error(got, expected):
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def check_ideal(model, x, config=IDEAL, tolerance=1e-4, batch_size=7, **kwargs):
    "Build with `config` and compare to Keras predict; returns the network."
    reference = model.predict(x, verbose=0, batch_size=32)
    net = AnalogNetwork.from_keras(model, config, **kwargs)
    got = net.predict(x, batch_size=batch_size)
    got, reference = (got if isinstance(got, list) else [got]), (reference if isinstance(reference, list) else [reference])
    assert len(got) == len(reference)
    for g, r in zip(got, reference):
        assert relative_error(g, r) < tolerance
    return net


def randomize_batchnorm(model, seed=0):
    "Give every BatchNormalization non-trivial statistics, so folding (or not) actually matters."
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            draw = {"gamma": lambda n: rng.uniform(0.5, 1.5, n), "beta": lambda n: rng.normal(0, 0.2, n),
                    "moving_mean": lambda n: rng.normal(0, 0.3, n), "moving_variance": lambda n: rng.uniform(0.5, 2.0, n)}
            for variable in layer.weights:
                variable.assign(draw[variable.path.split("/")[-1]](variable.shape).astype(np.float32))
    return model


@pytest.fixture(params=[True, False], ids=["tensorflow-conv", "im2col"])
def conv_path(request, monkeypatch):
    "Run a test with convolutions through TensorFlow's kernels (one-product cores) and through im2col × matrix."
    monkeypatch.setattr(convolution_module, "LIBRARY_CONVOLUTION", request.param)
    return request.param


def images(n, size, channels=3, seed=0):
    return np.random.default_rng(seed).normal(size=(n, size, size, channels)).astype(np.float32)


# ---------------------------------------------------------------- small models, ideal config == Keras

def mlp():
    keras.utils.set_random_seed(1)
    inp = keras.Input((20,))
    x = keras.layers.Dense(32, activation="relu", name="fc1")(inp)
    x = keras.layers.Dropout(0.5)(x)
    x = keras.layers.Dense(16, activation="tanh", name="fc2")(x)
    return keras.Model(inp, keras.layers.Dense(5, activation="softmax", name="out")(x), name="mlp")


def test_mlp_ideal():
    x = np.random.default_rng(0).normal(size=(50, 20)).astype(np.float32)
    check_ideal(mlp(), x)


def test_raw_keras_ops_run_digitally():
    keras.utils.set_random_seed(11)
    inp = keras.Input((6,))
    hidden = keras.layers.Dense(5, name="fc")(inp)
    out = keras.layers.Dense(2, name="out")(keras.ops.maximum(hidden * 0.5 + 1.0, hidden) - hidden / 3.0)
    model = keras.Model(inp, out)
    net = check_ideal(model, np.random.default_rng(6).normal(size=(9, 6)).astype(np.float32))
    assert {"ops.Multiply", "ops.Add", "ops.Maximum", "ops.Subtract"} <= {n.layer_type for n in net.graph.nodes}


def test_cnn_with_pooling_ideal(conv_path):
    keras.utils.set_random_seed(2)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="c1")(inp)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(12, 3, padding="same", strides=2, name="c2")(x)
    x = keras.layers.LeakyReLU(0.1)(x)
    x = keras.layers.AveragePooling2D(2)(x)
    x = keras.layers.Conv2D(6, 2, dilation_rate=1, padding="same", activation="gelu", name="c3")(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inp, keras.layers.Dense(4, name="out")(x))
    check_ideal(model, images(20, 16))


def resnet_block_model():
    keras.utils.set_random_seed(3)
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inp)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.Activation("relu")(x)
    for i in range(2):
        y = keras.layers.Conv2D(8, 3, padding="same", name=f"b{i}_c1")(x)
        y = keras.layers.BatchNormalization(name=f"b{i}_bn1")(y)
        y = keras.layers.ReLU()(y)
        y = keras.layers.Conv2D(8, 3, padding="same", name=f"b{i}_c2")(y)
        y = keras.layers.BatchNormalization(name=f"b{i}_bn2")(y)
        x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    x = keras.layers.BatchNormalization(name="pre_pool_bn")(x)          # follows an Add: never foldable
    x = keras.layers.GlobalAveragePooling2D()(x)
    return randomize_batchnorm(keras.Model(inp, keras.layers.Dense(10, name="head")(x), name="resnet_block"))


@pytest.mark.parametrize("fold", [True, False])
def test_resnet_add_skips_batchnorm(conv_path, fold):
    model = resnet_block_model()
    net = check_ideal(model, images(16, 12), IDEAL.replace(fold_batchnorm=fold))
    kinds = {n.name: n.kind for n in net.graph.nodes}
    assert ("b0_bn1" in kinds) == (not fold)                   # folded BN layers leave the graph
    assert kinds["pre_pool_bn"] == "digital"
    assert (net.hw_config().folded_batchnorm[0] == "stem_bn") == fold


def test_inception_concatenate_ideal():
    keras.utils.set_random_seed(4)
    inp = keras.Input((10, 10, 4))
    a = keras.layers.Conv2D(4, 1, activation="relu")(inp)
    b = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(keras.layers.Conv2D(3, 1, activation="relu")(inp))
    c = keras.layers.Conv2D(5, (1, 5), padding="same")(inp)
    c = keras.layers.Conv2D(5, (5, 1), padding="same", activation="relu")(c)
    d = keras.layers.Conv2D(2, 1)(keras.layers.AveragePooling2D(3, strides=1, padding="same")(inp))
    x = keras.layers.Concatenate()([a, b, c, d])
    x = keras.layers.GlobalMaxPooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(3)(x))
    net = check_ideal(model, images(12, 10, 4))
    graph_inputs = [n for n in net.graph.nodes if n.layer_type == "Concatenate"][0].inputs
    assert len(graph_inputs) == 4


def mobilenet_block_model(stride=1):
    keras.utils.set_random_seed(5)
    inp = keras.Input((12, 12, 8))
    x = keras.layers.Conv2D(24, 1, use_bias=False)(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", strides=stride, use_bias=False, name="dw")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.Conv2D(8, 1, use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    if stride == 1: x = keras.layers.Add()([inp, x])
    x = keras.layers.GlobalAveragePooling2D()(x)
    return randomize_batchnorm(keras.Model(inp, keras.layers.Dense(3)(x)))


@pytest.mark.parametrize("stride", [1, 2])
def test_mobilenetv2_block_depthwise_relu6(conv_path, stride):
    model = mobilenet_block_model(stride)
    x = images(10, 12, 8) * 3                                   # large enough that relu6 clips
    net = check_ideal(model, x)
    assert isinstance(net.engines["dw"], GroupedDepthwise)     # exact linear case: per-channel product
    row = net.hw_config().set_index("layer").loc["dw"]
    assert row.matrix == "216x24" and row.kernel == "3x3 depthwise"   # block-diagonal (3·3·24) x 24 crossbar
    # the block-diagonal matrix on the core (forced by a current limit that never clips) gives the same result
    net_full = check_ideal(model, x, IDEAL.replace(icol_max=1e9))
    assert isinstance(net_full.engines["dw"], CoreEngine)


def test_depthwise_with_independent_error_simulates_full_matrix():
    model = mobilenet_block_model()
    config = IDEAL.replace(error_model="generic", alpha_error=0.01, proportional_error=False)
    net = AnalogNetwork.from_keras(model, config)
    assert isinstance(net.engines["dw"], CoreEngine)          # zero devices carry errors: channels couple
    proportional = AnalogNetwork.from_keras(model, IDEAL.replace(error_model="generic", alpha_error=0.01))
    assert isinstance(proportional.engines["dw"], GroupedDepthwise)   # sigma = alpha*G leaves zero devices at zero


def test_separable_conv2d(conv_path):
    keras.utils.set_random_seed(6)
    inp = keras.Input((11, 11, 3))
    x = keras.layers.SeparableConv2D(8, 3, depth_multiplier=2, padding="same", activation="relu", name="sep1")(inp)
    x = keras.layers.BatchNormalization(name="sep1_bn")(x)
    x = keras.layers.SeparableConv2D(4, 3, strides=2, name="sep2")(x)
    x = keras.layers.Flatten()(x)
    model = randomize_batchnorm(keras.Model(inp, keras.layers.Dense(2)(x)))
    net = check_ideal(model, images(8, 11))
    table = net.hw_config()
    assert list(table.layer[:4]) == ["sep1/depthwise", "sep1/pointwise", "sep2/depthwise", "sep2/pointwise"]
    assert list(table.matrix[:4]) == ["27x6", "6x8", "72x8", "8x4"]
    # a plain layer name in overrides applies to both cores; a core name to one
    net2 = AnalogNetwork.from_keras(model, IDEAL, layer_overrides={"sep1": {"weight_bits": 6}, "sep2/pointwise": "digital"})
    table2 = net2.hw_config().set_index("layer")
    assert table2.loc["sep1/depthwise", "weight_bits"] == 6 and table2.loc["sep1/pointwise", "weight_bits"] == 6
    assert "sep2/pointwise" not in table2.index and table2.loc["sep2/depthwise", "weight_bits"] == 0


def test_conv1d(conv_path):
    keras.utils.set_random_seed(7)
    inp = keras.Input((30, 4))
    x = keras.layers.Conv1D(6, 5, padding="causal", dilation_rate=2, activation="relu")(inp)
    x = keras.layers.Conv1D(8, 3, strides=2, padding="same")(x)
    x = keras.layers.MaxPooling1D()(x)
    x = keras.layers.ZeroPadding1D(1)(x)
    x = keras.layers.Conv1D(4, 3, padding="valid")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    model = keras.Model(inp, keras.layers.Dense(3)(x))
    x = np.random.default_rng(1).normal(size=(9, 30, 4)).astype(np.float32)
    check_ideal(model, x)


def test_nested_multi_input_output_model():
    keras.utils.set_random_seed(8)
    block = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu", name="d1"),
                              keras.layers.Dense(6, name="d2")], name="block")
    a, b = keras.Input((6,), name="a"), keras.Input((3,), name="b")
    h = block(a)
    joined = keras.layers.Concatenate()([h, keras.layers.Dense(4, name="side")(b)])
    out1 = keras.layers.Dense(2, name="o1")(joined)
    out2 = keras.layers.Subtract()([block(h), keras.layers.Dense(6, name="proj")(b)])
    model = keras.Model([a, b], [out1, out2])
    rng = np.random.default_rng(2)
    x = [rng.normal(size=(11, 6)).astype(np.float32), rng.normal(size=(11, 3)).astype(np.float32)]
    net = check_ideal(model, x)
    assert "block/d1" in net.cores and sum(n.layer_name == "block/d1" for n in net.graph.nodes) == 2
    assert int(net.hw_config().set_index("layer").loc["block/d1", "mvms_per_image"]) == 2   # a shared core, used twice
    same = net.predict({"a": x[0], "b": x[1]})
    np.testing.assert_array_equal(same[0], net.predict(x)[0])
    digital = AnalogNetwork.from_keras(model, IDEAL.replace(weight_bits=3), layer_overrides={"block/d2": "digital"})
    assert "block/d2" not in digital.cores and "block/d1" in digital.cores


# ---------------------------------------------------------------- keras.applications (random weights)

@pytest.mark.parametrize("name, size", [("ResNet50", 32), ("MobileNetV2", 32), ("InceptionV3", 75), ("MobileNetV3Small", 32)])
def test_keras_applications(name, size):
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classifier_activation=None)
    randomize_batchnorm(model)
    check_ideal(model, images(3, size) * 0.5)


# ---------------------------------------------------------------- file formats

def small_keras2_model(tf_keras):
    tf_keras.utils.set_random_seed(9)
    inp = tf_keras.Input((10, 10, 3))
    x = tf_keras.layers.Conv2D(6, 3, padding="same")(inp)
    x = tf_keras.layers.BatchNormalization()(x)
    x = tf_keras.layers.ReLU(6.0)(x)
    x = tf_keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(x)
    x = tf_keras.layers.SeparableConv2D(5, 3, activation="relu")(x)
    x = tf_keras.layers.GlobalAveragePooling2D()(x)
    model = tf_keras.Model(inp, tf_keras.layers.Dense(4, activation="softmax")(x))
    for layer in model.layers:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            layer.set_weights([np.full(6, 1.3), np.full(6, 0.1), np.linspace(-0.5, 0.5, 6), np.linspace(0.5, 1.5, 6)])
    return model


def test_keras2_h5_from_tf_keras(tmp_path):
    tf_keras = pytest.importorskip("tf_keras", reason="tf_keras is not installed: no Keras-2 .h5 writer")
    model = small_keras2_model(tf_keras)
    path = tmp_path / "keras2.h5"
    model.save(path)
    x = images(6, 10)
    reference = model.predict(x, verbose=0)                  # the Keras-2 model itself is the reference
    net = AnalogNetwork.from_keras(str(path), IDEAL)
    assert relative_error(net.predict(x), reference) < 1e-4
    assert any(name.endswith("/pointwise") for name in net.cores)


def test_keras3_file_formats(tmp_path):
    model = mlp()
    x = np.random.default_rng(3).normal(size=(7, 20)).astype(np.float32)
    reference = model.predict(x, verbose=0)
    for name in ("model.keras", "model.h5"):
        model.save(tmp_path / name)
        assert relative_error(AnalogNetwork.from_keras(tmp_path / name, IDEAL).predict(x), reference) < 1e-4


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        AnalogNetwork.from_keras(tmp_path / "nothing.keras", IDEAL)
    (tmp_path / "garbage.h5").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="cannot read"):
        load_keras_model(tmp_path / "garbage.h5")
    model = mlp()
    model.save_weights(tmp_path / "only.weights.h5")
    with pytest.raises(ValueError, match="without a model configuration"):
        load_keras_model(tmp_path / "only.weights.h5")
    (tmp_path / "model.pb").write_text("x")
    with pytest.raises(ValueError, match="suffix '.pb' not allowed"):
        load_keras_model(tmp_path / "model.pb")


# ---------------------------------------------------------------- errors

def test_unsupported_layer_error_names_layer_type_and_supported():
    inp = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(3, 3, name="fine")(inp)
    x = keras.layers.GroupNormalization(3, name="normaliser")(x)
    model = keras.Model(inp, x)
    with pytest.raises(UnsupportedLayerError) as error:
        AnalogNetwork.from_keras(model, IDEAL)
    message = str(error.value)
    assert "'normaliser' of type 'GroupNormalization' is not supported" in message
    assert "Supported layer types:" in message and "DepthwiseConv2D" in message
    assert isinstance(error.value, ValueError)


def test_bad_inputs():
    net = AnalogNetwork.from_keras(mlp(), IDEAL)
    x = np.ones((4, 20), np.float32)
    x[2, 5] = np.inf
    with pytest.raises(ValueError, match="contains NaN or inf"):
        net.predict(x)
    with pytest.raises(ValueError, match=r"must have shape \(batch, 20\)"):
        net.predict(np.ones((4, 21), np.float32))
    with pytest.raises(ValueError, match="no samples"):
        net.predict(np.ones((0, 20), np.float32))


def test_ranges_required_and_calibrated_limits_required():
    model = mlp()
    with pytest.raises(ValueError, match="calibration_data="):
        AnalogNetwork.from_keras(model, InferenceConfig(adc_bits=0, dac_bits=8))
    with pytest.raises(ValueError, match="adc_limits"):
        AnalogNetwork.from_keras(model, InferenceConfig(dac_bits=0, adc_bits=8, adc_range_option="CALIBRATED"),
                                 input_ranges={"fc1": 3.0, "fc2": 1.0, "out": 1.0})
    limits = {"fc1": [-4.0, 4.0], "fc2": [-3.0, 3.0], "out": [-2.0, 2.0]}
    net = AnalogNetwork.from_keras(model, InferenceConfig(dac_bits=0, adc_bits=8, adc_range_option="CALIBRATED"),
                                   input_ranges={"fc1": 3.0, "fc2": 1.0, "out": 1.0}, adc_limits=limits)
    np.testing.assert_array_equal(net.cores["fc2"].adc_limits.reshape(-1), [-3.0, 3.0])


# ---------------------------------------------------------------- DAC ranges, tiling, overrides

def test_profiled_input_ranges_match_keras_activations():
    model = resnet_block_model()
    x = images(24, 12)
    net = AnalogNetwork.from_keras(model, InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX"),
                                   calibration_data=x, calibration_samples=16)
    chosen = np.sort(np.random.default_rng(0).choice(24, 16, replace=False))   # the seeded calibration subset
    for name in ("stem", "b0_c2", "b1_c1", "head"):
        layer_input = keras.Model(model.inputs, model.get_layer(name).input).predict(x[chosen], verbose=0)
        expected = np.percentile(np.abs(layer_input), 99.99)
        low, high = net.input_ranges[name]
        assert abs(high - expected) <= 1e-4 * expected
        assert (low == 0) == (name in ("b0_c2", "b1_c1"))            # after a ReLU: unsigned; stem/head: signed
    table = net.hw_config().set_index("layer")
    assert table.loc["b0_c1", "input"] == "unsigned" and table.loc["head", "input"] == "signed"


def test_input_ranges_given_and_nonnegative_input():
    model = mlp()
    net = AnalogNetwork.from_keras(model, InferenceConfig(dac_bits=8, adc_bits=0), input_ranges={"fc1": 2.5, "fc2": (-1, 4),
                                   "out": (0, 1.5)}, input_nonnegative=True)
    assert net.input_ranges == {"fc1": (0.0, 2.5), "fc2": (-4.0, 4.0), "out": (0.0, 1.5)}


def test_tiling_never_changes_ideal_result():
    model = resnet_block_model()
    x = images(8, 12)
    base = AnalogNetwork.from_keras(model, IDEAL).predict(x)
    tiled_config = IDEAL.replace(nrows_max=7, ncols_max=3)
    tiled = AnalogNetwork.from_keras(model, tiled_config)
    assert relative_error(tiled.predict(x), base) < 1e-5
    table = tiled.hw_config().set_index("layer")
    assert table.loc["b0_c1", "row_tiles"] == 11 and table.loc["b0_c1", "col_tiles"] == 3    # 72 rows / 7; 8 cols / 3
    assert table.loc["b0_c1", "arrays"] == 11 * 3 * 2                                     # x2: BALANCED pairs


def test_overrides_take_effect():
    keras.utils.set_random_seed(10)
    inp = keras.Input((12,))
    hidden = keras.layers.Dense(9, name="first")(inp)
    model = keras.Model(inp, keras.layers.Dense(3, name="last")(hidden))
    x = np.random.default_rng(4).normal(size=(20, 12)).astype(np.float32)
    # first layer on 4-bit weights, the rest ideal: the reference is float math with the first kernel quantised
    net = AnalogNetwork.from_keras(model, IDEAL, layer_overrides={"first": {"weight_bits": 4}})
    kernel, bias = model.get_layer("first").get_weights()
    w_max = np.abs(kernel).max()
    quantised = np.rint(kernel / w_max * 7) / 7 * w_max              # BALANCED ONE_SIDED: Kw = 2^3 - 1 levels
    last_kernel, last_bias = model.get_layer("last").get_weights()
    expected = (x @ quantised + bias) @ last_kernel + last_bias
    assert relative_error(net.predict(x), expected) < 1e-5
    assert relative_error(net.predict(x), model.predict(x, verbose=0)) > 1e-3
    table = net.hw_config().set_index("layer")
    assert table.loc["first", "weight_bits"] == 4 and table.loc["last", "weight_bits"] == 0
    # everything digital: exact whatever the hardware config
    all_digital = AnalogNetwork.from_keras(model, InferenceConfig(weight_bits=2, dac_bits=4, adc_bits=4, adc_range_option="MAX"),
                                           layer_overrides={"first": "digital", "last": "digital"})
    assert relative_error(all_digital.predict(x), model.predict(x, verbose=0)) < 1e-5
    assert len(all_digital.hw_config()) == 0
    with pytest.raises(ValueError, match="not an analog layer"):
        AnalogNetwork.from_keras(model, IDEAL, layer_overrides={"firts": "digital"})
    with pytest.raises(ValueError, match="unknown InferenceConfig field"):
        AnalogNetwork.from_keras(model, IDEAL, layer_overrides={"first": {"adc_bitz": 3}})


def test_program_runs_are_reproducible():
    model = mlp()
    x = np.random.default_rng(5).normal(size=(10, 20)).astype(np.float32)
    config = IDEAL.replace(error_model="generic", alpha_error=0.1)
    net = AnalogNetwork.from_keras(model, config)
    run0 = net.predict(x)
    run1 = net.program(1).predict(x)
    assert np.abs(run0 - run1).max() > 0
    np.testing.assert_array_equal(net.program(0).predict(x), run0)
    np.testing.assert_array_equal(AnalogNetwork.from_keras(model, config).predict(x), run0)


@pytest.mark.parametrize("nrows_max", [40, 0], ids=["im2col-tiles", "tensorflow-conv"])
def test_threaded_chunks_are_bit_identical(monkeypatch, nrows_max):
    model = resnet_block_model()
    x = images(40, 12)
    config = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX", nrows_max=nrows_max)
    if not convolution_module._blas_threads.available(): pytest.skip("BLAS threads cannot be limited here: chunks run serially")
    net = AnalogNetwork.from_keras(model, config, calibration_data=x)
    monkeypatch.setattr(convolution_module, "MIN_CHUNK_ROWS", 64)           # many chunks per layer
    monkeypatch.setattr(convolution_module, "CHUNK_ELEMENTS", 64 * 72)
    monkeypatch.setattr(convolution_module, "THREADS", 1)
    serial = net.predict(x, batch_size=40)
    monkeypatch.setattr(convolution_module, "THREADS", 2)
    np.testing.assert_array_equal(net.predict(x, batch_size=40), serial)


def geometry_zoo_model():
    "Every convolution geometry the executor handles: same/valid, strides, dilation, depthwise ×2, separable, 1×1 strided."
    keras.utils.set_random_seed(11)
    inp = keras.Input((13, 13, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="same")(inp)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="valid", activation="relu", name="strided")(x)
    x = keras.layers.Conv2D(8, 3, dilation_rate=2, padding="same", name="dilated")(x)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", activation="relu", name="depthwise")(x)
    x = keras.layers.SeparableConv2D(6, 3, strides=2, padding="same", name="separable")(x)
    x = keras.layers.Conv2D(4, 1, strides=2, name="pointwise_strided")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inp, keras.layers.Dense(3, name="head")(x))


@pytest.mark.parametrize("settings", [dict(), dict(subtract_current_in_xbar=False), dict(style="OFFSET"),
                                      dict(digital_bias=False), dict(nslices=2), dict(adc_bits=0), dict(icol_max=1.5, adc_bits=12),
                                      dict(stochastic_rounding=True), dict(bias_bits=6), dict(balanced_style="TWO_SIDED")],
                         ids=["balanced", "pair", "offset", "analog-bias", "two-slices", "dac-only", "current-limit",
                              "stochastic-rounding", "bias-bits", "two-sided"])
@TENSORFLOW_BACKEND
def test_tensorflow_convolution_equals_im2col(monkeypatch, settings):
    "The library convolution is only a faster product: with DAC, ADC and programming errors the outputs match im2col."
    model = geometry_zoo_model()
    x = images(12, 13)
    config = InferenceConfig(**{**dict(weight_bits=8, dac_bits=8, adc_bits=10, adc_range_option="MAX", nrows_max=0,
                                       error_model="generic", alpha_error=0.02), **settings})
    net = AnalogNetwork.from_keras(model, config, calibration_data=x)
    assert all(net.engines[name].library_kernel is not None for name in ("same", "strided", "dilated", "separable/pointwise"))
    per_channel = config.style == "BALANCED" and not config.stochastic_rounding
    if per_channel:                           # diagonal devices only, convolved per channel (proportional error: zeros stay 0)
        assert isinstance(net.engines["depthwise"], DepthwiseEngine) and isinstance(net.engines["separable/depthwise"], DepthwiseEngine)
    monkeypatch.setattr(convolution_module, "LIBRARY_CONVOLUTION", True)
    convolved = []                                  # layers TensorFlow actually convolved (not a silent im2col fallback)
    original = convolution_module._library_convolution
    def counting(x, kernel, depthwise, spec):
        currents = original(x, kernel, depthwise, spec)
        if currents is not None: convolved.append((spec.name, depthwise))
        return currents
    monkeypatch.setattr(convolution_module, "_library_convolution", counting)
    fused = convolution_module._fused_float_convolution      # (a core whose periphery only adds the bias: bias and ReLU fused in)
    def counting_fused(engine, x, spec, post, residual=None):
        out = fused(engine, x, spec, post, residual)
        if out is not None: convolved.append((spec.name, False))
        return out
    monkeypatch.setattr(convolution_module, "_fused_float_convolution", counting_fused)
    library = net.predict(x)
    assert {"same", "strided", "dilated"} <= {name for name, _ in convolved}
    if per_channel: assert ("depthwise", True) in convolved
    monkeypatch.setattr(convolution_module, "LIBRARY_CONVOLUTION", False)
    reference = net.predict(x)
    assert relative_error(library, reference) < 1e-4


@pytest.mark.parametrize("settings", [dict(adc_per_ibit=True), dict(noise_model="generic", alpha_noise=0.02)],
                         ids=["adc-per-input-bit", "read-noise"])
def test_input_bit_slicing_reads_every_slice_on_every_path(monkeypatch, settings):
    "Bit-serial inputs are one read (and one ADC conversion, one noise draw) per input slice, also where a layer could be one library convolution."
    model = geometry_zoo_model()
    x = images(12, 13)
    config = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX", nrows_max=0,
                             input_bitslicing=True, noise_variance_precision="float32", **settings)
    net = AnalogNetwork.from_keras(model, config, calibration_data=x)
    outputs = {}
    for library in (True, False):
        monkeypatch.setattr(convolution_module, "LIBRARY_CONVOLUTION", library)
        outputs[library] = net.predict(x)
    assert relative_error(outputs[True], outputs[False]) < 1e-4
    whole = AnalogNetwork.from_keras(model, config.replace(input_bitslicing=False, adc_per_ibit=False), calibration_data=x).predict(x)
    assert relative_error(outputs[True], whole) > 1e-2          # slicing changes what the hardware outputs here


def noise_model_small():
    "Conv (27 rows), depthwise, 1×1 conv and Dense on a Dense-on-sequence: every way a core is read."
    keras.utils.set_random_seed(21)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(12, 3, padding="same", activation="relu", name="conv")(inp)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise")(x)
    x = keras.layers.Conv2D(6, 1, strides=2, activation="relu", name="pointwise")(x)
    x = keras.layers.Reshape((16, 6))(x)
    x = keras.layers.Dense(5, activation="relu", name="per_position")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inp, keras.layers.Dense(4, name="head")(x))


@pytest.mark.parametrize("nrows_max", [10, 0], ids=["three-row-tiles-im2col", "one-tile-library-conv"])
def test_read_noise_does_not_depend_on_the_batch_size(nrows_max):
    "Read noise is keyed per image: batches of 256, 37 and 1 give bit-identical outputs (row tiles, 6-bit ADC)."
    model = noise_model_small()
    x = images(300, 8, seed=5)
    config = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=6, adc_range_option="CALIBRATED", nrows_max=nrows_max,
                             noise_model="generic", alpha_noise=0.05, seed=4)
    limits = {name: (-3.0, 3.0) for name in ("conv", "depthwise", "pointwise", "per_position", "head")}
    net = AnalogNetwork.from_keras(model, config, calibration_data=x, adc_limits=limits)
    if nrows_max: assert len(net.cores["conv"].row_ranges) == 3
    else: assert net.engines["conv"].noise_kernel is not None          # noise through a second library convolution
    reference = net.predict(x, batch_size=256)
    for batch_size in (37, 1):
        np.testing.assert_array_equal(net.predict(x, batch_size=batch_size), reference)
    assert np.mean(reference != 0) > 0.5                                                 # not a trivially zero output
    net.program(1)
    assert not np.array_equal(net.predict(x[:40], batch_size=40), reference[:40])      # another run: other noise


def test_noisy_library_convolution_equals_noisy_im2col(monkeypatch):
    "Noise variance as conv(x², σ²-kernel) draws the same keyed noise as the im2col read: the outputs agree."
    model = noise_model_small()
    x = images(40, 8, seed=6)
    for proportional in (False, True):              # independent noise couples depthwise channels; proportional does not
        config = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=10, adc_range_option="MAX", nrows_max=0,
                                 noise_model="generic", alpha_noise=0.05, proportional_noise=proportional)
        net = AnalogNetwork.from_keras(model, config, calibration_data=x)
        if proportional: assert isinstance(net.engines["depthwise"], DepthwiseEngine)   # zeros stay quiet: diagonal only
        else: assert net.engines["depthwise"].noise_kernel[1] is False              # noise on the zeros: dense σ² kernel
        monkeypatch.setattr(convolution_module, "LIBRARY_CONVOLUTION", True)
        library = net.predict(x)
        monkeypatch.setattr(convolution_module, "LIBRARY_CONVOLUTION", False)
        im2col = net.predict(x)
        assert relative_error(library, im2col) < 1e-3
        noiseless = AnalogNetwork.from_keras(model, config.replace(alpha_noise=0.0, noise_model="none"), calibration_data=x)
        assert relative_error(library, noiseless.predict(x)) > 1e-3                  # the noise is really there


@pytest.mark.parametrize("settings", [dict(style="OFFSET"), dict(subtract_current_in_xbar=False), dict(nslices=2),
                                      dict(digital_bias=False), dict(icol_max=1.5), dict(nrows_max=20),
                                      dict(stochastic_rounding=True), dict(balanced_style="TWO_SIDED"), dict(adc_bits=0)],
                         ids=["offset", "pair", "two-slices", "analog-bias", "current-limit", "row-tiles",
                              "stochastic-rounding", "two-sided", "no-adc"])
def test_noisy_library_convolution_equals_noisy_im2col_in_every_mode(monkeypatch, settings):
    "Every periphery the fast paths serve (per-channel depthwise, library convolution, fused noise + ADC) draws and digitises"
    " as the im2col read does."
    model = noise_model_small()
    x = images(40, 8, seed=6)
    config = InferenceConfig(**{**dict(weight_bits=8, dac_bits=8, adc_bits=10, adc_range_option="MAX", nrows_max=0,
                                       noise_model="generic", alpha_noise=0.05, noise_variance_precision="float32"), **settings})
    net = AnalogNetwork.from_keras(model, config, calibration_data=x)
    outputs = {}
    for library in (True, False):
        monkeypatch.setattr(convolution_module, "LIBRARY_CONVOLUTION", library)
        outputs[library] = net.predict(x)
    assert np.abs(outputs[True]).max() > 0
    assert relative_error(outputs[True], outputs[False]) < 1e-3


def grouped_model():
    "ConvNeXt-style block (Conv2D groups=C, LayerNormalization, gelu MLP, LayerScale, StochasticDepth), a grouped Conv2D,"
    " a depthwise Conv2D(groups=C) with multiplier 2 and InceptionResNetV2's scale layer."
    from keras.src.applications.convnext import LayerScale, StochasticDepth
    from keras.src.applications.inception_resnet_v2 import CustomScaleLayer
    keras.utils.set_random_seed(1)
    inp = keras.Input((10, 10, 8))
    x = keras.layers.Conv2D(8, 7, padding="same", groups=8, name="dw")(inp)
    x = keras.layers.LayerNormalization(epsilon=1e-6)(x)
    x = keras.layers.Dense(16, activation="gelu", name="mlp1")(x)
    x = keras.layers.Dense(8, name="mlp2")(x)
    x = LayerScale(0.5, 8)(x)
    x = StochasticDepth(0.1)(x)
    x = keras.layers.Add()([inp, x])
    y = keras.layers.Conv2D(12, 3, groups=4, padding="same", name="grouped")(x)
    y = keras.layers.Conv2D(24, 3, groups=12, strides=2, name="dw_multiplier")(y)
    z = keras.layers.Conv2D(24, 1, name="branch")(keras.layers.MaxPooling2D(3, 2)(x))
    y = CustomScaleLayer(0.2)([z, y])
    return keras.Model(inp, keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D()(y)))


def test_grouped_convolutions_and_application_layers_match_keras(conv_path):
    model = grouped_model()
    x = images(6, 10, channels=8, seed=3)
    net = check_ideal(model, x)
    assert net.specs["dw"].is_depthwise and net.specs["dw_multiplier"].depth_multiplier == 2    # per channel
    grouped = net.specs["grouped"].matrix.reshape(12, 9, 8)                                  # (cout, taps, cin)
    assert np.all(grouped[:3, :, 2:] == 0) and np.all(grouped[9:, :, :6] == 0)                # block-diagonal groups
    eight_bit = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=0, nrows_max=0)
    check_ideal(model, x, eight_bit, tolerance=0.05, calibration_data=x)                      # quantised: close


@pytest.mark.parametrize("settings", [dict(), dict(subtract_current_in_xbar=False), dict(digital_bias=False), dict(nslices=2),
                                      dict(noise_model="generic", alpha_noise=0.05, proportional_noise=True),
                                      dict(icol_max=3.0), dict(adc_bits=0, dac_bits=0)],
                         ids=["balanced", "pair", "analog-bias", "two-slices", "proportional-noise", "current-limit", "linear"])
def test_depthwise_core_equals_dense_block_diagonal_core(settings):
    "Storing only the diagonal devices changes nothing: same outputs as the dense block-diagonal core (3 row tiles, ADC)."
    rng = np.random.default_rng(31)
    kernel = rng.normal(size=(9, 6, 2)).astype(np.float32)               # 3x3 taps, 6 channels, multiplier 2
    bias = rng.normal(size=12).astype(np.float32)
    config = InferenceConfig(**{**dict(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX", nrows_max=20), **settings})
    assert DepthwiseCore.exact_for(config)
    x = rng.uniform(-2.4, 2.4, size=(2, 7, 7, 6)).astype(np.float32)
    for order in ("channel_first", "channel_last"):      # tiled rows in CrossSim's (cin, kh, kw) order, or the imported one
        matrix, rows = depthwise_matrix(kernel.reshape(3, 3, 6, 2)), im2col(x, (3, 3), padding="same")
        permutation = conv_row_permutation(9, 6, 54 + int(settings.get("digital_bias") is False), config.replace(conv_row_order=order))
        assert (permutation is None) == (order == "channel_last")
        if permutation is not None: matrix, rows = matrix[:, permutation], np.ascontiguousarray(rows[:, permutation])
        dense = AnalogCore(matrix, config.replace(conv_row_order=order), bias=bias, input_range=(-2, 2), name="dw")
        compact = DepthwiseCore(kernel, config.replace(conv_row_order=order), bias=bias, input_range=(-2, 2), name="dw")
        assert (compact.row_order is None and permutation is None) or np.array_equal(compact.row_order, permutation)
        assert len(compact.row_ranges) == len(dense.row_ranges) == 3 and compact.hw_summary() == dense.hw_summary()
        got, expected = compact.apply(rows), dense.apply(rows)
        close = np.isclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
        assert close.mean() > 0.99, order  # the rest: quantised values on an exact ADC rounding tie, summed in another order
    assert not DepthwiseCore.exact_for(config.replace(error_model="generic", alpha_error=0.01, proportional_error=False))


@pytest.mark.parametrize("proportional", [False, True], ids=["independent", "proportional"])
def test_two_convolution_noise_has_the_analytic_std(monkeypatch, proportional):
    "Noise through conv(x², σ²-kernel) + one draw per output: over 300 reads each output's std is sqrt(conv(x², σ²)) (checked"
    " against im2col × σ²), the mean is the noiseless output, and the im2col noisy path has the same statistics."
    from crosssim_nb.convolution import apply_conv
    keras.utils.set_random_seed(5)
    inp = keras.Input((9, 9, 4))
    model = keras.Model(inp, keras.layers.Conv2D(6, 3, padding="same", name="conv")(inp))
    x = images(2, 9, channels=4, seed=8)
    config = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=0, nrows_max=0, noise_model="generic", alpha_noise=0.1,
                             proportional_noise=proportional)
    net = AnalogNetwork.from_keras(model, config, calibration_data=x)
    clean = AnalogNetwork.from_keras(model, config.replace(noise_model="none", alpha_noise=0.0), calibration_data=x)
    engine, spec, core = net.engines["conv"], net.specs["conv"], net.cores["conv"]
    assert engine.noise_kernel is not None                                   # the two-convolution path is taken
    expected = apply_conv(x, spec, clean.engines["conv"])
    drives = core.input_drives(x)
    rows = im2col(drives, spec.kernel_size, spec.strides, spec.dilation, spec.padding)
    currents = rows @ core.conv_matrix()[:, :core.n_out]
    scale = np.median(expected.reshape(-1, core.n_out)[np.abs(currents) > 1e-3 * np.abs(currents).max()]
                      / currents[np.abs(currents) > 1e-3 * np.abs(currents).max()])
    full_spread = np.broadcast_to(core.conv_spread(), core.conv_matrix().shape)[:, :core.n_out]
    analytic = np.abs(scale) * np.sqrt((rows * rows) @ full_spread).reshape(expected.shape)
    for library in (True, False):
        monkeypatch.setattr(convolution_module, "LIBRARY_CONVOLUTION", library)
        reads = np.stack([apply_conv(x, spec, engine, read=r) for r in range(300)])
        std, mean = reads.std(axis=0), reads.mean(axis=0)
        ratio = std / analytic
        assert abs(ratio.mean() - 1) < 0.02 and np.quantile(np.abs(ratio - 1), 0.99) < 0.2
        assert np.all(np.abs(mean - expected) < 5 * analytic / np.sqrt(300) + 1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("kernel,strides", [(3, 2), (1, 1)], ids=["3x3-stride-2", "1x1"])
@pytest.mark.parametrize("dependence", ["proportional", "independent"])
def test_library_and_im2col_noise_are_the_same_draws(monkeypatch, dependence, kernel, strides):
    "Keyed per output pixel, the noise of the library-convolution path (variance by a second convolution, or by window sums of"
    " Σ x² for one σ everywhere) equals the im2col path's draw for draw: the two outputs agree to float32 rounding."
    from crosssim_nb.convolution import apply_conv
    keras.utils.set_random_seed(6)
    inp = keras.Input((11, 10, 5))
    model = keras.Model(inp, keras.layers.Conv2D(7, kernel, strides=strides, padding="same", name="conv")(inp))
    x = np.random.default_rng(9).uniform(-1, 1, (3, 11, 10, 5)).astype(np.float32)
    config = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=0, nrows_max=0, noise_model="generic", alpha_noise=0.05,
                             noise_dependence=dependence)
    net = AnalogNetwork.from_keras(model, config, calibration_data=x)
    engine, spec = net.engines["conv"], net.specs["conv"]
    assert engine.noise_kernel is not None and engine.noise_channel_sum == (dependence == "independent")
    outputs = {}
    for library in (True, False):
        monkeypatch.setattr(convolution_module, "LIBRARY_CONVOLUTION", library)
        outputs[library] = apply_conv(x, spec, engine, first_image=4, read=2)
    clean = AnalogNetwork.from_keras(model, config.replace(noise_model="none", alpha_noise=0.0), calibration_data=x)
    noise = outputs[True] - apply_conv(x, spec, clean.engines["conv"])
    assert noise.std() > 1e-3 * np.abs(outputs[True]).max()                   # the noise is there
    assert np.abs(outputs[True] - outputs[False]).max() < 1e-3 * noise.std()    # and it is the same draws on both paths
    other = apply_conv(x, spec, engine, first_image=5, read=2)                   # other pixel keys: other draws
    assert np.abs(other - outputs[True]).max() > noise.std()


@pytest.mark.parametrize("kernel", [3, 1])
def test_bfloat16_convolution_noise_is_the_float32_noise_within_its_bound(kernel):
    "The library path's variance convolution on bfloat16 operands keeps every draw of the float32 one and each σ within"
    " 0.6 % (1.5 × bfloat16's unit roundoff 2⁻⁸; the bound is derived in the keyed_noise notebook)."
    from crosssim_nb.convolution import apply_conv
    keras.utils.set_random_seed(7)
    inp = keras.Input((12, 11, 24))
    model = keras.Model(inp, keras.layers.Conv2D(20, kernel, padding="same", name="conv")(inp))
    x = np.random.default_rng(10).uniform(-1, 1, (3, 12, 11, 24)).astype(np.float32)
    config = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=0, nrows_max=0, noise_model="generic", alpha_noise=0.05)
    outputs = {}
    for precision in ("float32", "bfloat16"):
        net = AnalogNetwork.from_keras(model, config.replace(noise_variance_precision=precision), calibration_data=x)
        engine = net.engines["conv"]
        assert (engine.noise_kernel_bfloat16 is not None) == (precision == "bfloat16")
        outputs[precision] = apply_conv(x, net.specs["conv"], engine, first_image=2, read=1)
    clean_net = AnalogNetwork.from_keras(model, config.replace(noise_model="none", alpha_noise=0.0), calibration_data=x)
    clean = apply_conv(x, clean_net.specs["conv"], clean_net.engines["conv"])
    noise = outputs["float32"] - clean
    assert noise.std() > 1e-3 * np.abs(clean).max()
    change = np.abs(outputs["bfloat16"] - outputs["float32"])
    assert np.all(change <= 1.5 * 2.0 ** -8 * np.abs(noise) + 2e-6 * np.abs(clean).max())
    assert change.max() > 0


def pooling_case(layer):
    "A model of the one pooling `layer` on (9, 8, 3) inputs: (model, its ideal AnalogNetwork, the layer's graph node, 2 images)."
    inp = keras.Input((9, 8, 3))
    model = keras.Model(inp, layer(inp))
    net = AnalogNetwork.from_keras(model, InferenceConfig.ideal())
    node = [n for n in net.graph.nodes if n.layer is layer][0]
    return model, net, node, np.ascontiguousarray(images(2, 9, channels=3, seed=4)[:, :, :8])


@TENSORFLOW_BACKEND
@pytest.mark.parametrize("kind", ["MaxPooling2D", "AveragePooling2D"])
@pytest.mark.parametrize("padding,strides", [("valid", (2, 2)), ("same", (2, 2)), ("same", (1, 1)), ("valid", (3, 2))])
def test_pooling_fast_path_is_the_keras_layer(kind, padding, strides):
    "The pooling fast path (TensorFlow's kernel called directly) gives the Keras layer's result bit for bit."
    from crosssim_nb.network import _fast_digital
    layer = getattr(keras.layers, kind)((3, 2), strides=strides, padding=padding, name="pool")
    model, net, node, x = pooling_case(layer)
    got = _fast_digital(node, [x], [False])
    assert got is not None
    np.testing.assert_array_equal(got, keras.ops.convert_to_numpy(layer(x)))
    np.testing.assert_array_equal(net.predict(x), model.predict(x, verbose=0))


@pytest.mark.parametrize("make", [lambda: keras.layers.MaxPooling2D((3, 2), strides=(2, 1)), lambda: keras.layers.AveragePooling2D((3, 2), strides=(3, 2)),
                                  lambda: keras.layers.GlobalAveragePooling2D(), lambda: keras.layers.GlobalMaxPooling2D(keepdims=True),
                                  lambda: keras.layers.MaxPooling2D(2, padding="same")],
                         ids=["max-valid", "average-valid", "global-average", "global-max-keepdims", "max-same-refused"])
def test_gpu_pooling_is_the_keras_layer(make):
    "The pooling a GPU network runs where its activations are (`_device_pooling`, array-module agnostic: checked here on NumPy) = Keras."
    from crosssim_nb.network import _device_pooling
    layer = make()
    _, _, node, x = pooling_case(layer)
    got = _device_pooling(node, x)
    if getattr(layer, "padding", None) == "same": assert got is None; return    # (the host's kernel does 'same' pooling)
    want = keras.ops.convert_to_numpy(layer(x))
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
