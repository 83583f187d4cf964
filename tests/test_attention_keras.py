"""Keras attention layers on the simulator (attention chapter): MultiHeadAttention, EinsumDense and LayerNormalization
against Keras `predict`, projections counted on cores under 8-bit hardware, attention products written per input
(`attention_products="analog"`) and batch independence of their keyed draws."""
import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from collections import Counter
import numpy as np
import pytest
import keras
from crosssim_nb.config import InferenceConfig
from crosssim_nb.keras_import import UnsupportedLayerError
from crosssim_nb.network import AnalogNetwork

RNG = np.random.default_rng(7)
IDEAL = InferenceConfig.ideal()
HARDWARE = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX")

def relative_error(out, ref) -> float:
    return float(np.abs(np.asarray(out) - ref).max() / np.abs(ref).max())

def check_ideal(model, inputs, config=IDEAL, tolerance=1e-4, **build):
    "The simulator's ideal outputs equal Keras predict to `tolerance` of max|output|, for every model output."
    reference = model.predict(inputs, verbose=0)
    net = AnalogNetwork.from_keras(model, config, **build)
    outputs = net.predict(inputs, batch_size=4)
    for out, ref in zip(*(([outputs], [reference]) if not isinstance(reference, list) else (outputs, reference))):
        assert out.shape == ref.shape
        assert relative_error(out, ref) < tolerance, relative_error(out, ref)
    return net

def sequences(*shape): return RNG.normal(size=shape).astype("float32")

def self_attention_model(heads=2, key_dim=4, value_dim=None, use_bias=True, output_shape=None, causal=False, name="mha"):
    keras.utils.set_random_seed(1)
    x = keras.Input((6, 8), name="tokens")
    layer = keras.layers.MultiHeadAttention(heads, key_dim, value_dim=value_dim, use_bias=use_bias, output_shape=output_shape,
                                            name=name, bias_initializer="random_normal")
    return keras.Model(x, layer(x, x, use_causal_mask=causal))

@pytest.mark.parametrize("options", [dict(), dict(value_dim=3), dict(key_dim=7, heads=3), dict(use_bias=False),
                                     dict(output_shape=(2, 5)), dict(causal=True)])
def test_self_attention_equals_keras(options):
    check_ideal(self_attention_model(**options), sequences(9, 6, 8))

def test_cross_attention_masks_and_scores_equal_keras():
    "query, value and key from different inputs (their own lengths and widths), a padding mask, causal, the scores returned."
    keras.utils.set_random_seed(2)
    query, value, key = keras.Input((5, 8), name="q"), keras.Input((7, 6), name="v"), keras.Input((7, 3), name="k")
    mask = keras.Input((5, 7), name="pad")
    layer = keras.layers.MultiHeadAttention(3, 4, value_dim=5, name="cross", dropout=0.3, bias_initializer="random_normal")
    out, scores = layer(query, value, key, attention_mask=mask, use_causal_mask=True, return_attention_scores=True)
    model = keras.Model([query, value, key, mask], [out, scores])
    padding = np.ones((9, 5, 7), "float32"); padding[:, :, 4:] = 0; padding[::2, :, 2:] = 0     # padded keys
    check_ideal(model, [sequences(9, 5, 8), sequences(9, 7, 6), sequences(9, 7, 3), padding])

def test_padding_mask_only_broadcast_mask_and_sliding_window():
    "A full (batch, T, S) mask, a (batch, 1, S) key-padding mask broadcast over the queries (BERT's), a sliding window."
    keras.utils.set_random_seed(3)
    x, mask, keys = keras.Input((6, 4)), keras.Input((6, 6)), keras.Input((1, 6))
    y = keras.layers.MultiHeadAttention(2, 3, name="pad")(x, x, attention_mask=mask)
    y = keras.layers.MultiHeadAttention(2, 3, name="broadcast")(y, y, attention_mask=keys)
    y = keras.layers.MultiHeadAttention(2, 3, sliding_window=2, name="window")(y, y)
    padding = (RNG.random((8, 6, 6)) > 0.4).astype("float32"); padding[:, :, 0] = 1
    lengths = (np.arange(6)[None, None, :] < RNG.integers(2, 7, size=(8, 1, 1))).astype("float32")
    check_ideal(keras.Model([x, mask, keys], y), [sequences(8, 6, 4), padding, lengths])

def test_image_attention_over_two_axes_and_gate():
    "A (H, W, C) query attends over both spatial axes (the default attention_axes); use_gate multiplies by a sigmoid gate core."
    keras.utils.set_random_seed(4)
    x = keras.Input((3, 4, 5))
    y = keras.layers.MultiHeadAttention(2, 3, name="spatial")(x, x)
    y = keras.layers.MultiHeadAttention(2, 3, use_gate=True, name="gated")(y, y)
    net = check_ideal(keras.Model(x, y), sequences(6, 3, 4, 5))
    assert "gated/gate" in net.cores

def test_einsum_dense_equations_equal_keras():
    keras.utils.set_random_seed(5)
    x = keras.Input((6, 8))
    a = keras.layers.EinsumDense("abc,cd->abd", (None, 5), bias_axes="d", activation="relu", name="plain")(x)
    b = keras.layers.EinsumDense("abc,cde->abde", (None, 2, 3), bias_axes="de", name="heads")(a)
    c = keras.layers.EinsumDense("abcd,cde->abe", (None, 4), bias_axes="e", activation="tanh", name="merge")(b)
    d = keras.layers.EinsumDense("abc,cde->abde", (None, 2, 3), bias_axes="e", name="bias_on_one_axis")(c)
    e = keras.layers.EinsumDense("...b,bc->...c", (7,), name="ellipsis")(keras.layers.Reshape((6, 6))(d))
    model = keras.Model(x, e)
    for layer in model.layers:
        for weight in layer.weights: weight.assign(RNG.normal(size=weight.shape).astype("float32") * 0.5)
    net = check_ideal(model, sequences(5, 6, 8))
    assert set(net.cores) == {"plain", "heads", "merge", "bias_on_one_axis", "ellipsis"}
    assert net.graph.node("plain").compute is None           # a Dense on the last axis runs on the executor's own path
    table = net.hw_config().set_index("layer")
    assert table.loc["plain", "mvms_per_image"] == 6 and table.loc["heads", "mvms_per_image"] == 6

def test_einsum_dense_refused_equation_and_digital_override():
    x = keras.Input((6, 8))
    model = keras.Model(x, keras.layers.EinsumDense("abc,cd->adb", (4, 6), name="transposed")(x))
    with pytest.raises(UnsupportedLayerError, match="'abc,cd->adb'"):
        AnalogNetwork.from_keras(model, IDEAL)
    check_ideal(model, sequences(3, 6, 8), layer_overrides={"transposed": "digital"})

@pytest.mark.parametrize("options", [dict(), dict(center=False, scale=False, epsilon=1e-2), dict(axis=(1, 2)),
                                     dict(axis=-2)])
def test_layer_normalization_equals_keras(options):
    keras.utils.set_random_seed(6)
    x = keras.Input((5, 6))
    layer = keras.layers.LayerNormalization(**options, beta_initializer="random_normal", gamma_initializer="random_normal", name="norm")
    net = check_ideal(keras.Model(x, layer(keras.layers.Dense(6)(x))), sequences(7, 5, 6) * 3 + 1, tolerance=1e-5)
    assert net.graph.node("norm").compute is not None          # NumPy arithmetic, no Keras call per batch

def encoder_block(length=8, width=16, heads=2):
    "A transformer encoder block (MHA + residual + LN + Dense MLP + residual + LN) and a classifier head."
    keras.utils.set_random_seed(8)
    x = keras.Input((length, width), name="tokens")
    attended = keras.layers.MultiHeadAttention(heads, width // heads, name="attention")(x, x)
    y = keras.layers.LayerNormalization(name="norm1")(keras.layers.Add()([x, attended]))
    hidden = keras.layers.Dense(2 * width, activation="gelu", name="mlp1")(y)
    y = keras.layers.LayerNormalization(name="norm2")(keras.layers.Add()([y, keras.layers.Dense(width, name="mlp2")(hidden)]))
    pooled = keras.layers.GlobalAveragePooling1D()(y)
    return keras.Model(x, keras.layers.Dense(4, name="head")(pooled))

def test_encoder_block_ideal_and_8bit_cores_counted():
    model, x = encoder_block(), sequences(12, 8, 16)
    check_ideal(model, x)
    net = AnalogNetwork.from_keras(model, HARDWARE, calibration_data=x)
    reads = Counter()
    out = net.run(x, batch_size=5, observer=lambda name, tensor: reads.update({name: tensor.shape[0]}))[0]
    projections = {"attention/query", "attention/key", "attention/value", "attention/attention_output", "mlp1", "mlp2", "head"}
    assert set(net.cores) == projections and all(reads[name] == len(x) for name in projections), reads
    table = net.hw_config().set_index("layer")
    assert table.loc["attention/query", "mvms_per_image"] == 8 and table.loc["head", "mvms_per_image"] == 1
    reference = model.predict(x, verbose=0)
    error = relative_error(out, reference)
    assert 1e-3 < error < 0.3, error                        # 8-bit hardware, MAX ADC ranges: a real, bounded error

def test_analog_products_ideal_equal_digital_and_cost_is_reported():
    model, x = encoder_block(), sequences(6, 8, 16)
    config = InferenceConfig(weight_bits=16, dac_bits=16, adc_bits=16, adc_range_option="MAX", attention_products="analog")
    digital = AnalogNetwork.from_keras(model, config.replace(attention_products="digital"), calibration_data=x)
    analog = AnalogNetwork.from_keras(model, config, calibration_data=x)
    assert relative_error(analog.predict(x), digital.predict(x)) < 2e-3      # 16-bit converters, no device errors: the same
    table = analog.hw_config().set_index("layer")
    assert table.loc["attention/scores", "writes_per_image"] == 2 and table.loc["attention/context", "writes_per_image"] == 2
    assert table.loc["attention/scores", "matrix"] == "8x8" and table.loc["attention/scores", "mvms_per_image"] == 16
    assert "attention/scores" not in digital.hw_config().layer.values

def test_analog_products_programming_error_batch_independent():
    model, x = encoder_block(), sequences(7, 8, 16)
    errors = InferenceConfig.ideal().replace(error_model="generic", alpha_error=0.05)
    weights_only = AnalogNetwork.from_keras(model, errors).predict(x)
    net = AnalogNetwork.from_keras(model, errors.replace(attention_products="analog"))
    whole, single = net.predict(x, batch_size=7), net.predict(x, batch_size=1)
    np.testing.assert_allclose(whole, single, rtol=0, atol=1e-6 * np.abs(whole).max())
    assert relative_error(whole, weights_only) > 1e-3        # the written K and V arrays carry their own programming error
    net.program(1)
    assert relative_error(net.predict(x), whole) > 1e-3       # a new Monte-Carlo run draws new errors

@pytest.mark.parametrize("products", ["digital", "analog"])
def test_read_noise_batch_independent(products):
    model, x = encoder_block(), sequences(7, 8, 16)
    noisy = InferenceConfig.ideal().replace(noise_model="generic", alpha_noise=0.02, attention_products=products)
    net = AnalogNetwork.from_keras(model, noisy)
    whole, pieces = net.predict(x, batch_size=7), net.predict(x, batch_size=3)
    np.testing.assert_allclose(whole, pieces, rtol=0, atol=1e-6 * np.abs(whole).max())
    assert relative_error(whole, model.predict(x, verbose=0)) > 1e-4

def test_layer_override_of_attention_products():
    "attention_products set for one layer through layer_overrides (read when the graph is built); ideal arrays: Keras' result."
    model, x = encoder_block(), sequences(3, 8, 16)
    net = AnalogNetwork.from_keras(model, IDEAL, layer_overrides={"attention": {"attention_products": "analog"}})
    assert "attention/scores" in net.hw_config().layer.values
    assert relative_error(net.predict(x), model.predict(x, verbose=0)) < 1e-4

def test_shared_attention_layer_called_twice():
    keras.utils.set_random_seed(9)
    x = keras.Input((5, 6))
    layer = keras.layers.MultiHeadAttention(2, 3, name="shared")
    model = keras.Model(x, layer(layer(x, x), x))
    net = check_ideal(model, sequences(4, 5, 6))
    assert sorted(net.cores) == ["shared/attention_output", "shared/key", "shared/query", "shared/value"]
    analog = AnalogNetwork.from_keras(model, IDEAL.replace(attention_products="analog"))
    table = analog.hw_config().set_index("layer")            # each call writes its own arrays (and draws its own errors)
    assert table.loc["shared/scores", "writes_per_image"] == 2 and table.loc["shared#1/context", "writes_per_image"] == 2

def test_refused_options_name_layer_and_option():
    x = keras.Input((4, 3, 6))
    model = keras.Model(x, keras.layers.MultiHeadAttention(2, 3, attention_axes=(2,), name="rows")(x, x))
    with pytest.raises(UnsupportedLayerError, match=r"'rows'.*attention_axes"):
        AnalogNetwork.from_keras(model, IDEAL)
    check_ideal(model, sequences(2, 4, 3, 6), layer_overrides={"rows": "digital"})
    tokens = keras.Input((5,))
    embedded = keras.layers.Embedding(10, 6, mask_zero=True)(tokens)
    masked = keras.Model(tokens, keras.layers.MultiHeadAttention(2, 3, name="masked")(embedded, embedded))
    with pytest.raises(UnsupportedLayerError, match=r"'masked'.*Keras mask"):
        AnalogNetwork.from_keras(masked, IDEAL, layer_overrides={masked.layers[1].name: "digital"})
    x, flat = keras.Input((5, 6)), keras.Input((5,))
    model = keras.Model([x, flat], keras.layers.MultiHeadAttention(2, 3, name="flat_mask")(x, x, attention_mask=flat))
    with pytest.raises(UnsupportedLayerError, match=r"'flat_mask'.*attention_mask of shape \(None, 5\)"):
        AnalogNetwork.from_keras(model, IDEAL)

def test_small_vision_transformer_from_core_layers():
    "Patches by a strided Conv2D, attention, LayerNormalization, an MLP and average pooling (a ViT's layers, zoo size)."
    keras.utils.set_random_seed(10)
    image = keras.Input((28, 28, 1), name="image")
    patches = keras.layers.Reshape((16, 12))(keras.layers.Conv2D(12, 7, strides=7, name="patches")(image))
    x = patches
    for block in range(2):
        attended = keras.layers.MultiHeadAttention(3, 4, name=f"attention{block}")(x, x)
        x = keras.layers.LayerNormalization(name=f"norm{block}a")(x + attended)
        x = keras.layers.LayerNormalization(name=f"norm{block}b")(x + keras.layers.Dense(12, name=f"mlp{block}")(
            keras.layers.Dense(24, activation="gelu", name=f"hidden{block}")(x)))
    model = keras.Model(image, keras.layers.Dense(10, name="classes")(keras.layers.GlobalAveragePooling1D()(x)))
    images = RNG.random((6, 28, 28, 1)).astype("float32")
    check_ideal(model, images)
    net = AnalogNetwork.from_keras(model, HARDWARE, calibration_data=images)
    assert {"patches", "attention0/query", "attention1/attention_output", "mlp1", "classes"} <= set(net.cores)
    assert relative_error(net.predict(images), model.predict(images, verbose=0)) < 0.3

def test_analog_products_on_per_array_cores_when_batching_does_not_apply():
    "Weight slicing is not batched: every written array is then its own AnalogCore, with the same result as digital products."
    model, x = encoder_block(), sequences(3, 8, 16)
    sliced = InferenceConfig(weight_bits=9, nslices=2, dac_bits=0, adc_bits=0)
    digital = AnalogNetwork.from_keras(model, sliced).predict(x)
    analog = AnalogNetwork.from_keras(model, sliced.replace(attention_products="analog")).predict(x)
    assert 1e-6 < relative_error(analog, digital) < 2e-2

def test_calibrated_adcs_with_analog_products():
    "calibrate_adc profiles the projections (written arrays' ADCs off, as the cores'); CALIBRATED written arrays take their own range."
    from crosssim_nb.calibration import calibrate_adc
    model, x = encoder_block(), sequences(16, 8, 16)
    config = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX", attention_products="analog")
    calibration = calibrate_adc(AnalogNetwork.from_keras(model, config, calibration_data=x), x)
    assert set(calibration.adc_limits) == set(AnalogNetwork.from_keras(model, IDEAL).specs)     # the cores only
    net = AnalogNetwork.from_keras(model, config.replace(adc_range_option="CALIBRATED"), adc_limits=calibration)
    reference = model.predict(x, verbose=0)
    assert 1e-4 < relative_error(net.predict(x), reference) < 0.1
