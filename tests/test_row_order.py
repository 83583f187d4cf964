"""Row order of tiled convolutions (`conv_row_order`): CrossSim orders a convolution's matrix rows (cin, kh, kw), the
imported order is (kh, kw, cin). Each array's ADC digitises its own partial sum, so with several arrays per layer the
order decides the result. The references here are written from the definitions (DESIGN §3–§5), in NumPy, without the
package: an im2col by explicit loops, the kernel reshaped in the chosen order, rows split as §4 says, a symmetric
quantiser per array."""
import numpy as np
import pytest
import keras

import crosssim_nb.convolution as convolution
from crosssim_nb.config import InferenceConfig
from crosssim_nb.network import AnalogNetwork
from crosssim_nb.calibration import profile_adc_inputs

ADC_BITS = 4
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")       # (coarse, clipping ADCs on purpose: the health warning)


def split_rows(n, n_max):
    "DESIGN §4: T = ceil(n / n_max) arrays; the first T - r get q rows, the last r get q + 1 (q, r = divmod(n, T))."
    arrays = -(-n // n_max)
    q, r = divmod(n, arrays)
    sizes = [q] * (arrays - r) + [q + 1] * r
    return np.split(np.arange(n), np.cumsum(sizes)[:-1])


def patches(x, kh, kw):
    "Valid, stride-1 receptive fields (B, Ho, Wo, kh, kw, C) by explicit loops."
    B, H, W, C = x.shape
    out = np.empty((B, H - kh + 1, W - kw + 1, kh, kw, C), dtype=np.float64)
    for i in range(H - kh + 1):
        for j in range(W - kw + 1):
            out[:, i, j] = x[:, i:i + kh, j:j + kw, :]
    return out


def quantise(current, limit, bits):
    "Symmetric ADC range ±limit: 2^B - 1 sign-magnitude levels, values beyond the range clip (DESIGN §5)."
    levels = 2 ** (bits - 1) - 1
    step = limit / levels
    return np.clip(np.rint(current / step), -levels, levels) * step


def reference_partial_sums(x, kernel, order, n_max, x_max):
    """Per-array column currents [(N, Cout) per array] of a convolution whose dense kernel is (kh, kw, cin, cout):
    rows in `order`, weights and inputs normalised (w_max = max|W|, Gmin = 0, no DAC/weight quantisation)."""
    kh, kw, cin, cout = kernel.shape
    fields = patches(x.astype(np.float64), kh, kw)                      # (B, Ho, Wo, kh, kw, C)
    if order == "channel_first":
        rows = fields.transpose(0, 1, 2, 5, 3, 4).reshape(-1, cin * kh * kw)
        matrix = kernel.astype(np.float64).transpose(2, 0, 1, 3).reshape(-1, cout)
    else:
        rows = fields.reshape(-1, kh * kw * cin)
        matrix = kernel.astype(np.float64).reshape(-1, cout)
    w_max = np.abs(matrix).max()
    drives, weights = rows / x_max, matrix / w_max
    return [drives[:, part] @ weights[part] for part in split_rows(rows.shape[1], n_max)], w_max, fields.shape[:3]


def reference_output(x, kernel, bias, order, n_max, x_max, limit):
    "Σ over arrays of each array's digitised partial sum, back to algorithm units, plus the digital bias."
    sums, w_max, shape = reference_partial_sums(x, kernel, order, n_max, x_max)
    total = sum(quantise(s, limit, ADC_BITS) for s in sums) * w_max * x_max
    return (total + bias).reshape(*shape, -1)


def config(order, n_max, **changes):
    return InferenceConfig(weight_bits=0, dac_bits=0, adc_bits=ADC_BITS, adc_range_option="CALIBRATED", nrows_max=n_max,
                           conv_row_order=order, **changes)


def case(layer, channels=6, size=7, seed=0):
    "A one-layer model, its input and the dense (kh, kw, cin, cout) kernel and bias the layer computes."
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((size, size, channels)), layer])
    rng = np.random.default_rng(seed)
    weights = layer.get_weights()
    layer.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in weights])
    x = rng.normal(size=(3, size, size, channels)).astype(np.float32)
    kernel, bias = layer.get_weights()
    if isinstance(layer, keras.layers.DepthwiseConv2D):          # (kh, kw, C, m) -> dense (kh, kw, C, C·m)
        kh, kw, c, m = kernel.shape
        dense = np.zeros((kh, kw, c, c * m), dtype=np.float32)
        for ch in range(c): dense[:, :, ch, ch * m:(ch + 1) * m] = kernel[:, :, ch, :]
        kernel = dense
    elif getattr(layer, "groups", 1) > 1:                         # (kh, kw, C/g, cout) -> dense block-diagonal
        kh, kw, per_in, cout = kernel.shape
        g, per_out = layer.groups, cout // layer.groups
        dense = np.zeros((kh, kw, per_in * g, cout), dtype=np.float32)
        for k in range(g): dense[:, :, k * per_in:(k + 1) * per_in, k * per_out:(k + 1) * per_out] = kernel[..., k * per_out:(k + 1) * per_out]
        kernel = dense
    return model, x, kernel, bias


LAYERS = {
    "conv": lambda: keras.layers.Conv2D(5, 3, name="layer"),
    "grouped": lambda: keras.layers.Conv2D(4, 3, groups=2, name="layer"),
    "depthwise": lambda: keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="layer"),
}


def run(model, x, order, n_max, limit, x_max, **changes):
    net = AnalogNetwork.from_keras(model, config(order, n_max, **changes), input_ranges={"layer": x_max},
                                   adc_limits={"layer": [-limit, limit]})
    return net, net.predict(x)


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("library", [True, False])
def test_tiled_convolutions_follow_their_row_order(kind, library, monkeypatch):
    """Tiled convolutions with CrossSim's row order give CrossSim's array partial sums (seen through a coarse ADC on
    each array); the imported order equals its own reference; the two differ."""
    monkeypatch.setattr(convolution, "LIBRARY_CONVOLUTION", library)      # TensorFlow's per-tile kernels, or im2col rows
    model, x, kernel, bias = case(LAYERS[kind]())
    x_max, n_max = float(np.abs(x).max()), 20                             # 54 rows -> arrays of 18
    sums, _, _ = reference_partial_sums(x, kernel, "channel_first", n_max, x_max)
    limit = 0.5 * max(np.abs(s).max() for s in sums)                      # coarse and clipping: the partial sums matter
    outputs = {}
    for order in ("channel_first", "channel_last"):
        net, outputs[order] = run(model, x, order, n_max, limit, x_max)
        assert len(net.cores["layer"].row_ranges) == 3
        expected = reference_output(x, kernel, bias, order, n_max, x_max, limit)
        scale = np.abs(expected).max()
        np.testing.assert_allclose(outputs[order], expected, rtol=0, atol=1e-5 * scale, err_msg=order)
    assert np.abs(outputs["channel_first"] - outputs["channel_last"]).max() > 0.05 * np.abs(outputs["channel_last"]).max()


def test_dense_depthwise_core_follows_the_row_order():
    "A depthwise layer on the dense block-diagonal core (interleaved pairs rule out the compact one) follows the same rule."
    model, x, kernel, bias = case(LAYERS["depthwise"]())
    x_max, n_max = float(np.abs(x).max()), 20
    sums, _, _ = reference_partial_sums(x, kernel, "channel_first", n_max, x_max)
    limit = 0.5 * max(np.abs(s).max() for s in sums)
    for order in ("channel_first", "channel_last"):
        net, y = run(model, x, order, n_max, limit, x_max, interleaved_posneg=True)
        assert type(net.cores["layer"]).__name__ == "AnalogCore"
        expected = reference_output(x, kernel, bias, order, n_max, x_max, limit)
        np.testing.assert_allclose(y, expected, rtol=0, atol=1e-5 * np.abs(expected).max(), err_msg=order)


@pytest.mark.parametrize("kind", ["conv", "depthwise"])
def test_profiled_array_inputs_are_the_reference_partial_sums(kind):
    "Profiles follow the order: the ADC inputs profiled on every array are exactly the reference partial sums."
    model, x, kernel, bias = case(LAYERS[kind]())
    x_max, n_max = float(np.abs(x).max()), 20
    for order in ("channel_first", "channel_last"):
        net = AnalogNetwork.from_keras(model, config(order, n_max).replace(adc_range_option="MAX"), input_ranges={"layer": x_max})
        profile = profile_adc_inputs(net, x, capacity=10 ** 6)
        got = np.sort(profile.values("layer"))
        sums, _, _ = reference_partial_sums(x, kernel, order, n_max, x_max)
        expected = np.sort(np.concatenate([s.ravel() for s in sums]))
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max(), err_msg=order)
    first, last = (np.sort(np.concatenate([s.ravel() for s in reference_partial_sums(x, kernel, order, n_max, x_max)[0]]))
                   for order in ("channel_first", "channel_last"))
    assert np.abs(first - last).max() > 0.01 * np.abs(last).max()      # (the two orders put different sums on the arrays)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_one_array_per_layer_does_not_depend_on_the_order(kind):
    "With one array per layer the order changes nothing: same outputs (float32 summation order), the imported matrix kept."
    model, x, kernel, bias = case(LAYERS[kind]())
    x_max = float(np.abs(x).max())
    outputs = {}
    for order in ("channel_first", "channel_last"):
        net, outputs[order] = run(model, x, order, 64, 8.0, x_max)
        core = net.cores["layer"]
        assert core.row_order is None                          # nothing permuted, the fast paths untouched
        if kind != "depthwise": np.testing.assert_array_equal(core.matrix, net.specs["layer"].dense_matrix())
    np.testing.assert_allclose(outputs["channel_first"], outputs["channel_last"], rtol=0, atol=1e-6 * np.abs(outputs["channel_last"]).max())


def test_conv1d_rows_follow_the_order():
    "A 1-D convolution's rows are (cin, k) in CrossSim's order."
    keras.utils.set_random_seed(1)
    layer = keras.layers.Conv1D(4, 3, name="layer")
    model = keras.Sequential([keras.Input((9, 6)), layer])
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 9, 6)).astype(np.float32)
    kernel, bias = layer.get_weights()
    x_max, n_max = float(np.abs(x).max()), 7                            # 18 rows -> 3 arrays of 6
    sums, _, _ = reference_partial_sums(x[:, None], kernel[None], "channel_first", n_max, x_max)
    limit = 0.5 * max(np.abs(s).max() for s in sums)
    for order in ("channel_first", "channel_last"):
        _, y = run(model, x, order, n_max, limit, x_max)
        expected = reference_output(x[:, None], kernel[None], bias, order, n_max, x_max, limit)[:, 0]
        np.testing.assert_allclose(y, expected, rtol=0, atol=1e-5 * np.abs(expected).max(), err_msg=order)


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("changes", [{}, dict(interleaved_posneg=True)])
def test_tiled_linear_layers_equal_keras_in_either_order(kind, changes):
    """Without an ADC the tiled layer is one linear map: TensorFlow's convolution (or the grouped depthwise product) runs
    it with the core's matrix put back in the imported order, and the result is Keras' own."""
    model, x, kernel, bias = case(LAYERS[kind]())
    expected = model.predict(x, verbose=0)
    for order in ("channel_first", "channel_last"):
        net = AnalogNetwork.from_keras(model, InferenceConfig.ideal(nrows_max=20, conv_row_order=order, **changes))
        assert len(net.cores["layer"].row_ranges) == 3
        if kind == "depthwise": assert type(net.engines["layer"]).__name__ == "GroupedDepthwise"   # the per-channel fast path kept
        np.testing.assert_allclose(net.predict(x), expected, rtol=0, atol=1e-5 * np.abs(expected).max(), err_msg=order)


def test_analog_bias_row_sits_on_the_last_array():
    """With an analog bias the bias row (driven at full scale, weight bias/x_max, included in w_max) is the matrix's last
    row in either order: CrossSim's rows then the bias fill the arrays (55 rows on arrays of at most 20: 18, 18, 19)."""
    model, x, kernel, bias = case(LAYERS["conv"]())
    x_max, n_max = float(np.abs(x).max()), 20
    kh, kw, cin, cout = kernel.shape
    fields = patches(x.astype(np.float64), kh, kw)
    outputs = {}
    for order in ("channel_first", "channel_last"):
        if order == "channel_first":
            rows, matrix = fields.transpose(0, 1, 2, 5, 3, 4).reshape(-1, 54), kernel.astype(np.float64).transpose(2, 0, 1, 3).reshape(-1, cout)
        else:
            rows, matrix = fields.reshape(-1, 54), kernel.astype(np.float64).reshape(-1, cout)
        drives = np.hstack([rows / x_max, np.ones((rows.shape[0], 1))])               # the bias row at full scale
        matrix = np.vstack([matrix, bias[None].astype(np.float64) / x_max])
        w_max = np.abs(matrix).max()
        sums = [drives[:, part] @ (matrix[part] / w_max) for part in split_rows(55, n_max)]
        limit = 0.5 * max(np.abs(s).max() for s in sums)
        expected = (sum(quantise(s, limit, ADC_BITS) for s in sums) * w_max * x_max).reshape(*fields.shape[:3], -1)
        _, outputs[order] = run(model, x, order, n_max, limit, x_max, digital_bias=False)
        np.testing.assert_allclose(outputs[order], expected, rtol=0, atol=1e-5 * np.abs(expected).max(), err_msg=order)
