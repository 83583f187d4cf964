"""Keras recurrent layers and embeddings on crossbars: the ideal configuration equals Keras `predict`, 8-bit hardware
reads every core, read noise is keyed (batch-size independent) and independent from one time step to the next."""
import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from collections import Counter
import numpy as np
import pytest
import crosssim_nb  # noqa: F401  (before Keras)
import keras
from crosssim_nb.config import InferenceConfig
from crosssim_nb.keras_import import UnsupportedLayerError
from crosssim_nb.network import AnalogNetwork

STEPS, FEATURES = 7, 3
EIGHT_BITS = dict(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX")


def randomized(model, seed=0, scale=0.5):
    "The model with every weight drawn anew (Keras starts biases at zero, which would hide bias mistakes)."
    rng = np.random.default_rng(seed)
    for weight in model.weights: weight.assign(rng.normal(scale=scale, size=weight.shape).astype(np.float32))
    return model


def sequences(count=11, seed=1):
    return np.random.default_rng(seed).normal(size=(count, STEPS, FEATURES)).astype(np.float32)


def assert_ideal(model, x, **build):
    "Ideal configuration = Keras predict to 1e-4 of max|output|, for every output."
    net = AnalogNetwork.from_keras(model, InferenceConfig.ideal(**build.pop("config", {})), **build)
    want = model.predict(x, verbose=0)
    got = net.predict(x)
    want, got = (list(want), got) if isinstance(want, (list, tuple)) else ([want], [got])
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w))       # (an average over a fully masked sequence: 0/0 in both)
        assert np.nanmax(np.abs(g - w)) <= 1e-4 * np.nanmax(np.abs(w)), (np.nanmax(np.abs(g - w)), np.nanmax(np.abs(w)))
    return net


def recurrent_model(kind, mode_options, **options):
    inp = keras.Input((STEPS, FEATURES), name="x")
    out = getattr(keras.layers, kind)(4, name="rec", **mode_options, **options)(inp)
    return randomized(keras.Model(inp, out))


CELLS = [("SimpleRNN", {}), ("LSTM", {}), ("GRU", dict(reset_after=True)), ("GRU", dict(reset_after=False))]
OPTIONS = [dict(), dict(return_sequences=True, go_backwards=True), dict(return_state=True, go_backwards=True),
           dict(return_sequences=True, return_state=True)]


@pytest.mark.parametrize("kind,cell_options", CELLS, ids=["SimpleRNN", "LSTM", "GRU-reset_after", "GRU-reset_before"])
@pytest.mark.parametrize("cores", ["stacked", "separate"])
def test_cells_equal_keras(kind, cell_options, cores):
    x = sequences()
    for options in OPTIONS:
        assert_ideal(recurrent_model(kind, cell_options, **options), x, config=dict(recurrent_cores=cores))


def test_activations_and_rnn_wrapper_equal_keras():
    x = sequences()
    inp = keras.Input((STEPS, FEATURES))
    hidden = keras.layers.LSTM(4, activation="softsign", recurrent_activation="hard_sigmoid", return_sequences=True,
                               use_bias=False, unroll=True)(inp)
    hidden = keras.layers.RNN(keras.layers.GRUCell(3, activation="relu"), return_sequences=True)(hidden)
    out = keras.layers.SimpleRNN(2, activation="elu")(hidden)
    assert_ideal(randomized(keras.Model(inp, out)), x)


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
def test_bidirectional_merge_modes(merge_mode):
    x = sequences()
    inp = keras.Input((STEPS, FEATURES))
    outs = keras.layers.Bidirectional(keras.layers.LSTM(3, return_sequences=True, return_state=True), merge_mode=merge_mode)(inp)
    last = keras.layers.Bidirectional(keras.layers.GRU(2), merge_mode=merge_mode)(inp)
    model = randomized(keras.Model(inp, list(outs) + (list(last) if merge_mode is None else [last])))
    for cores in ("stacked", "separate"): assert_ideal(model, x, config=dict(recurrent_cores=cores))


def test_initial_states_as_inputs():
    rng = np.random.default_rng(3)
    inp, h0, c0 = keras.Input((STEPS, FEATURES)), keras.Input((4,)), keras.Input((4,))
    out = keras.layers.LSTM(4, return_sequences=True)(inp, initial_state=[h0, c0])
    g0 = keras.Input((2,))
    gru = keras.layers.GRU(2, return_state=True, go_backwards=True)(out, initial_state=g0)
    model = randomized(keras.Model([inp, h0, c0, g0], list(gru)))
    feeds = [sequences(), *(rng.normal(size=(11, n)).astype(np.float32) for n in (4, 4, 2))]
    assert_ideal(model, feeds)


def padded_ids(count=13, seed=4):
    "Token ids with zero padding at the end, at the start, and inside (Keras masks each zero step)."
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 20, size=(count, STEPS))
    for i in range(count):
        cut = rng.integers(1, STEPS)
        if i % 3 == 0: ids[i, cut:] = 0
        elif i % 3 == 1: ids[i, :cut] = 0
        else: ids[i, rng.integers(0, STEPS, size=2)] = 0
    ids[0] = 0                                          # a fully masked sequence
    return ids.astype(np.float32)


@pytest.mark.parametrize("embedding", ["digital", "analog"])
def test_masked_embedding_lstm(embedding):
    ids = keras.Input((STEPS,))
    embedded = keras.layers.Embedding(20, 5, mask_zero=True)(ids)
    sequence = keras.layers.LSTM(4, return_sequences=True)(embedded)
    pooled = keras.layers.GlobalAveragePooling1D()(sequence)            # takes the mask too
    both = keras.layers.Bidirectional(keras.layers.GRU(3, return_sequences=True))(sequence)    # zero outputs where masked
    last = keras.layers.SimpleRNN(2, go_backwards=True)(sequence)
    model = randomized(keras.Model(ids, [pooled, both, last]))
    for cores in ("stacked", "separate"):
        assert_ideal(model, padded_ids(), config=dict(recurrent_cores=cores, embedding=embedding))


def test_masking_layer():
    x = sequences()
    x[:, 2] = 0; x[::2, -2:] = 0
    inp = keras.Input((STEPS, FEATURES))
    out = keras.layers.LSTM(3, return_sequences=True)(keras.layers.Masking(0.0)(inp))
    assert_ideal(randomized(keras.Model(inp, out)), x)


def test_per_layer_overrides_and_digital():
    inp = keras.Input((STEPS, FEATURES))
    out = keras.layers.GRU(3, name="second")(keras.layers.LSTM(4, return_sequences=True, name="first")(inp))
    model = randomized(keras.Model(inp, out))
    net = assert_ideal(model, sequences(), layer_overrides={"first": {"recurrent_cores": "separate"}, "second": "digital"})
    assert sorted(net.cores) == ["first/input", "first/recurrent"]
    assert net.graph.node("second").kind == "digital"
    ids = keras.Input((STEPS,))                         # kept digital with a mask and several outputs: the Keras layer runs
    outputs = keras.layers.LSTM(3, return_state=True, return_sequences=True, name="kept")(keras.layers.Embedding(20, 4, mask_zero=True)(ids))
    net = assert_ideal(randomized(keras.Model(ids, list(outputs))), padded_ids(), layer_overrides={"kept": "digital"})
    assert net.graph.node("kept").kind == "digital" and not net.cores


def count_reads(net, x):
    reads = Counter()
    net.run(x, observer=lambda name, tensor: reads.update([name]))
    return reads


@pytest.mark.parametrize("cores", ["stacked", "separate"])
def test_eight_bit_hardware_runs_on_cores(cores):
    ids = keras.Input((STEPS,))
    sequence = keras.layers.LSTM(4, return_sequences=True, name="lstm")(keras.layers.Embedding(20, 5, name="emb")(ids))
    out = keras.layers.Bidirectional(keras.layers.GRU(3, reset_after=False), name="bi")(sequence)
    model = randomized(keras.Model(ids, keras.layers.Dense(2, name="head")(out)))
    x = padded_ids(40)
    config = InferenceConfig(recurrent_cores=cores, embedding="analog", **EIGHT_BITS)
    net = AnalogNetwork.from_keras(model, config, calibration_data=x, input_ranges={"emb": 1.0})
    reads = count_reads(net, x[:8])
    per_step = {"stacked": ["lstm", "bi/forward", "bi/backward"],
                "separate": ["lstm/recurrent", "bi/forward/recurrent", "bi/backward/recurrent"]}[cores]
    for core in per_step: assert reads[core] == STEPS, (core, reads)        # one batch of 8: a read per time step
    for core in ("bi/forward/candidate", "bi/backward/candidate"): assert reads[core] == STEPS
    assert reads["emb"] == 1 and reads["head"] == 1
    if cores == "separate": assert reads["lstm/input"] == 1
    assert set(reads) == set(net.cores)
    got, want = net.predict(x), model.predict(x, verbose=0)
    error = np.abs(got - want).max() / np.abs(want).max()
    assert 1e-4 < error < 0.1, error
    table = net.hw_config().set_index("layer")
    assert table.loc["lstm" if cores == "stacked" else "lstm/recurrent", "mvms_per_image"] == STEPS
    assert table.loc["emb", "mvms_per_image"] == STEPS
    assert table.loc["lstm" if cores == "stacked" else "lstm/recurrent", "role"].startswith("gates i f c o (4 columns each)")
    assert table.loc["bi/forward/candidate", "role"].endswith(f"{STEPS} reads per sequence")


NOISE = dict(noise_model="generic", alpha_noise=0.05)


@pytest.mark.parametrize("cores", ["stacked", "separate"])
def test_read_noise_is_batch_independent(cores):
    inp = keras.Input((STEPS, FEATURES))
    out = keras.layers.Bidirectional(keras.layers.LSTM(4))(keras.layers.GRU(4, return_sequences=True)(inp))
    model = randomized(keras.Model(inp, out))
    x = sequences(32)
    net = AnalogNetwork.from_keras(model, InferenceConfig.ideal(recurrent_cores=cores, **NOISE))
    results = [net.predict(x, batch_size=size) for size in (1, 3, 32)]
    assert np.abs(results[0] - model.predict(x, verbose=0)).max() > 1e-3          # the noise acts
    for other in results[1:]: np.testing.assert_allclose(other, results[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("cores", ["stacked", "separate"])
def test_read_noise_independent_over_time_steps(cores):
    "A linear SimpleRNN with W = I, U = 0 and a constant input: each step's output is x + that step's read noise."
    units, count = 8, 400
    inp = keras.Input((STEPS, units))
    layer = keras.layers.SimpleRNN(units, activation="linear", return_sequences=True, use_bias=False)
    model = keras.Model(inp, layer(inp))
    layer.set_weights([np.eye(units, dtype=np.float32), np.zeros((units, units), np.float32)])
    x = np.repeat(np.random.default_rng(5).uniform(0.5, 1, size=(count, 1, units)).astype(np.float32), STEPS, axis=1)
    net = AnalogNetwork.from_keras(model, InferenceConfig.ideal(recurrent_cores=cores, **NOISE))
    noise = (net.predict(x, batch_size=64) - x).transpose(1, 0, 2).reshape(STEPS, -1)        # (step, image × unit)
    assert noise.std(axis=1).min() > 0.01
    correlation = np.corrcoef(noise)[np.triu_indices(STEPS, 1)]
    assert np.abs(correlation).max() < 5 / np.sqrt(noise.shape[1]), correlation      # ~0: fresh draws at every step


class Doubling(keras.layers.Layer):
    "A custom recurrent cell (h = 2·h + x·1)."
    def __init__(self, units, **kwargs):
        super().__init__(**kwargs); self.units, self.state_size = units, units
    def call(self, inputs, states):
        h = 2 * states[0] + keras.ops.sum(inputs, axis=-1, keepdims=True)
        return h, [h]


def test_refusals_name_layer_and_option():
    stateful = keras.Sequential([keras.Input((STEPS, FEATURES), batch_size=4), keras.layers.LSTM(2, stateful=True, name="memory")])
    with pytest.raises(UnsupportedLayerError, match="layer 'memory' of type 'LSTM' has stateful=True"):
        AnalogNetwork.from_keras(stateful, InferenceConfig.ideal())
    inp = keras.Input((STEPS, FEATURES))
    custom = keras.Model(inp, keras.layers.RNN(Doubling(1), name="doubling")(inp))
    with pytest.raises(UnsupportedLayerError, match="layer 'doubling' of type 'RNN' has a custom cell 'Doubling'"):
        AnalogNetwork.from_keras(custom, InferenceConfig.ideal())
    x = sequences()
    got = AnalogNetwork.from_keras(custom, InferenceConfig.ideal(), layer_overrides={"doubling": "digital"}).predict(x)
    np.testing.assert_allclose(got, custom.predict(x, verbose=0), rtol=1e-6)        # kept digital: the Keras layer runs
    ragged = keras.Input((None, FEATURES))
    unknown = keras.Model(ragged, keras.layers.GRU(2, name="gru")(ragged))
    with pytest.raises(UnsupportedLayerError, match="layer 'gru' of type 'GRU' has an unknown sequence length"):
        AnalogNetwork.from_keras(unknown, InferenceConfig.ideal())


def test_shared_nested_and_saved(tmp_path):
    "A recurrent layer called twice reads one set of cores; a nested model's layers are 'outer/inner'; a saved file loads."
    inner_in = keras.Input((STEPS, FEATURES))
    inner = keras.Model(inner_in, keras.layers.GRU(3, return_sequences=True, name="gru")(inner_in), name="encoder")
    ids, numbers = keras.Input((STEPS,)), keras.Input((STEPS, FEATURES))
    embedded = keras.layers.Embedding(20, 3, mask_zero=True, name="emb")(ids)
    shared = keras.layers.LSTM(2, name="shared")
    out = keras.layers.Concatenate()([shared(embedded), shared(inner(numbers))])
    model = randomized(keras.Model([ids, numbers], out))
    x = [padded_ids(), sequences(13)]
    net = assert_ideal(model, x)
    assert sorted(net.cores) == ["encoder/gru", "shared"]
    assert count_reads(net, [a[:5] for a in x]) == {"encoder/gru": STEPS, "shared": 2 * STEPS}
    model.save(tmp_path / "text.keras")
    got = AnalogNetwork.from_keras(tmp_path / "text.keras", InferenceConfig.ideal()).predict(x)
    np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=1e-4 * np.abs(got).max())
    masked_nested = keras.Model(ids, shared(inner(embedded)))
    with pytest.raises(UnsupportedLayerError, match="nested model 'encoder' receives a Keras mask"):
        AnalogNetwork.from_keras(masked_nested, InferenceConfig.ideal())


def test_calibrated_adc_limits_for_per_step_cores():
    from crosssim_nb.calibration import calibrate_adc
    inp = keras.Input((STEPS, FEATURES))
    model = randomized(keras.Model(inp, keras.layers.LSTM(16)(keras.layers.GRU(16, return_sequences=True)(inp))))
    x, test = sequences(64, seed=6), sequences(32, seed=7)
    want = model.predict(test, verbose=0)
    errors = {}
    for cores in ("stacked", "separate"):
        config = InferenceConfig(recurrent_cores=cores, **EIGHT_BITS)
        net = AnalogNetwork.from_keras(model, config, calibration_data=x)
        calibration = calibrate_adc(net, x)
        assert set(calibration.adc_limits) == set(net.cores)
        calibrated = AnalogNetwork.from_keras(model, config.replace(adc_range_option="CALIBRATED"), adc_limits=calibration)
        errors[cores] = [np.abs(n.predict(test) - want).max() / np.abs(want).max() for n in (net, calibrated)]
        assert errors[cores][1] < errors[cores][0], errors               # calibrated ranges beat MAX
        assert errors[cores][1] < 0.1, errors                             # (8-bit weights, DAC and ADC)


@pytest.mark.parametrize("array_module", ["cupy", "fake-cupy"])
def test_on_the_gpu_matches_the_cpu(monkeypatch, array_module):
    "`use_gpu=True`: the cores' reads return device arrays; the sequence, states and mask follow them there."
    import sys
    from crosssim_nb.backend import gpu_available, gpu_status
    if array_module == "cupy" and not gpu_available(): pytest.skip("no usable CUDA GPU")
    if array_module == "fake-cupy":
        sys.path.insert(0, os.path.dirname(__file__))
        import fake_cupy
        monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    gpu_status.cache_clear()
    try:
        ids = keras.Input((STEPS,))
        sequence = keras.layers.LSTM(4, return_sequences=True)(keras.layers.Embedding(20, 5, mask_zero=True)(ids))
        both = keras.layers.Bidirectional(keras.layers.GRU(3, reset_after=False, return_state=True))(sequence)
        model = randomized(keras.Model(ids, list(both)))
        x = padded_ids()
        want = model.predict(x, verbose=0)
        for cores in ("stacked", "separate"):
            config = InferenceConfig.ideal(recurrent_cores=cores, embedding="analog", use_gpu=True)
            net = AnalogNetwork.from_keras(model, config)
            assert all(core.xp is sys.modules["cupy"] for core in net.cores.values())
            for got, expected in zip(net.predict(x, batch_size=4), want):
                np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())
            noisy = config.replace(**NOISE)
            gpu = AnalogNetwork.from_keras(model, noisy).predict(x)
            cpu = AnalogNetwork.from_keras(model, noisy.replace(use_gpu=False)).predict(x)
            for g, c in zip(gpu, cpu):
                if array_module == "fake-cupy":   # the same keyed draws; the noise variance product may round differently there
                    np.testing.assert_allclose(g, c, atol=1e-3 * np.abs(c).max())
                else: assert np.median(np.abs(g - c)) <= 1e-3 * np.abs(c).max()     # (a GPU's float rounding may differ)
    finally:
        gpu_status.cache_clear()


def test_analog_embedding_of_a_large_vocabulary():
    "A one-hot read holds at most ONE_HOT_ELEMENTS values per image: 20 indices of a 30000-row table take 4 reads of 5."
    ids = keras.Input((20,))
    model = randomized(keras.Model(ids, keras.layers.Dense(3, name="head")(keras.layers.Embedding(30000, 4, name="emb")(ids))))
    x = np.random.default_rng(8).integers(0, 30000, size=(6, 20)).astype(np.float32)
    assert_ideal(model, x, config=dict(embedding="analog"))
    net = AnalogNetwork.from_keras(model, InferenceConfig(embedding="analog", **EIGHT_BITS), calibration_data=x)
    assert count_reads(net, x)["emb"] == 4
    assert net.hw_config().set_index("layer").loc["emb", "role"].endswith("4 reads per sequence")


def test_embedding_override_keeps_one_table_digital():
    ids = keras.Input((STEPS,))
    model = randomized(keras.Model(ids, keras.layers.Dense(2, name="head")(keras.layers.Embedding(20, 3, name="emb")(ids))))
    net = assert_ideal(model, padded_ids(), config=dict(embedding="analog"), layer_overrides={"emb": {"embedding": "digital"}})
    assert sorted(net.cores) == ["head"]
    net = assert_ideal(model, padded_ids(), layer_overrides={"emb": {"embedding": "analog"}})
    assert sorted(net.cores) == ["emb", "head"]
