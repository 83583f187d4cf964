"""ONNX RNN, GRU and LSTM nodes and embedding Gathers on analog cores (nbs/41_onnx_import.ipynb), against onnxruntime.

Op-level graphs are built with onnx.helper; the PyTorch-exported models are the committed files of tests/data/onnx/torch/
(made by nbs/56_torch_models.ipynb). onnxruntime on the same graph is the independent reference: the ideal
configuration must equal it to 1e-4 of max|output|.
"""
import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from crosssim_nb import InferenceConfig
from crosssim_nb.network import AnalogNetwork
from crosssim_nb.onnx_import import UnsupportedModelError, node_names

FOLDER = Path(__file__).parent / "data" / "onnx" / "torch"
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
BATCH, STEPS, FEATURES, HIDDEN = 5, 4, 3, 4
LAYOUT_ZERO = {}    # id of a layout-1 test model -> (that model, the same model in layout 0): onnxruntime's reference runs the latter


def recurrent_model(op, direction="forward", layout=0, bias=True, initial=False, lengths=False, attributes=None,
                    peepholes=None, seed=0):
    """A model with one recurrent node and batch-first graph inputs and outputs (x, then h0, c0, lengths as asked;
    outputs Y, Y_h (and Y_c)): Transposes around the node give layout 0 its sequence-first tensors."""
    rng = np.random.default_rng(seed)
    dirs = 2 if direction == "bidirectional" else 1
    gates = GATES[op]
    def weight(*shape, scale=0.6): return (scale * rng.standard_normal(shape)).astype(np.float32)
    initializers = [numpy_helper.from_array(weight(dirs, gates * HIDDEN, FEATURES), "W"),
                    numpy_helper.from_array(weight(dirs, gates * HIDDEN, HIDDEN), "R")]
    if bias: initializers.append(numpy_helper.from_array(weight(dirs, 2 * gates * HIDDEN, scale=0.3), "B"))
    if peepholes is not None: initializers.append(numpy_helper.from_array(np.full((dirs, 3 * HIDDEN), peepholes, np.float32), "P"))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", STEPS, FEATURES])]
    nodes, names = [], ["X", "W", "R", "B" if bias else "", "", "", "", ""]
    if layout == 0: nodes.append(helper.make_node("Transpose", ["x"], ["X"], perm=[1, 0, 2]))
    else: names[0] = "x"
    states = ["h0", "c0"] if op == "LSTM" else ["h0"]
    if initial:
        for slot, state in zip((5, 6), states):
            inputs.append(helper.make_tensor_value_info(state, TensorProto.FLOAT, ["N", dirs, HIDDEN]))
            if layout == 0: nodes.append(helper.make_node("Transpose", [state], [state + "_t"], perm=[1, 0, 2]))
            names[slot] = state + "_t" if layout == 0 else state
    if lengths:
        inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT32, ["N"]))
        names[4] = "lengths"
    if peepholes is not None: names[7] = "P"
    names = names[:max(i for i, n in enumerate(names) if n) + 1]
    produced = ["Y", "Y_h", "Y_c"][:3 if op == "LSTM" else 2]
    settings = dict(hidden_size=HIDDEN, direction=direction, **(dict(layout=1) if layout else {}), **(attributes or {}))
    nodes.append(helper.make_node(op, names, produced, name="cell", **settings))
    outputs = []
    for tensor in produced:
        perm = ([2, 0, 1, 3] if tensor == "Y" else [1, 0, 2]) if layout == 0 else None
        if perm: nodes.append(helper.make_node("Transpose", [tensor], [tensor + "_out"], perm=perm))
        else: nodes.append(helper.make_node("Identity", [tensor], [tensor + "_out"]))
        outputs.append(helper.make_tensor_value_info(tensor + "_out", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "recurrent", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    if layout: LAYOUT_ZERO[id(model)] = (model, recurrent_model(op, direction, 0, bias, initial, lengths, attributes, peepholes, seed))
    return model


def sample(model, batch=BATCH, seed=1):
    "Inputs for `model` as a dict: normal sequences and states, lengths between 1 and STEPS."
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        dims = [batch if d.dim_param else d.dim_value for d in value.type.tensor_type.shape.dim]
        if value.type.tensor_type.elem_type == TensorProto.INT32: feeds[value.name] = rng.integers(1, STEPS + 1, dims).astype(np.int32)
        else: feeds[value.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def reference(model, feeds):
    "onnxruntime's outputs. (It refuses layout 1: a model of `recurrent_model` is then rebuilt in layout 0, the same I/O and weights.)"
    if id(model) in LAYOUT_ZERO and LAYOUT_ZERO[id(model)][0] is model: model = LAYOUT_ZERO[id(model)][1]
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def network_inputs(model, feeds):
    "The feeds in the network's input order, as float32 (the network takes float arrays; integer inputs must hold integers)."
    return [feeds[v.name].astype(np.float32) for v in model.graph.input]


def assert_matches(outputs, expected):
    outputs = outputs if isinstance(outputs, list) else [outputs]
    assert len(outputs) == len(expected)
    for got, want in zip(outputs, expected):
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-4 * max(np.abs(want).max(), 1e-6), np.abs(got - want).max()


def relative_error(got, want):
    return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


@pytest.mark.parametrize("cores", ["stacked", "separate"])
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_ideal_equals_onnxruntime(op, direction, layout, cores):
    "Every output (Y, Y_h, Y_c) with initial states and sequence lengths, both layouts, directions and core layouts."
    model = recurrent_model(op, direction, layout, initial=True, lengths=True)
    feeds = sample(model)
    network = AnalogNetwork.from_onnx(model, InferenceConfig.ideal().replace(recurrent_cores=cores))
    assert_matches(network.predict(network_inputs(model, feeds)), reference(model, feeds))
    dirs = 2 if direction == "bidirectional" else 1
    assert len(network.cores) == dirs * (1 if cores == "stacked" else 2) + (dirs if op == "GRU" else 0)   # (GRU reset before: U_h apart)


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_no_bias_no_optional_inputs(op):
    model = recurrent_model(op, "bidirectional", bias=False)
    feeds = sample(model)
    assert_matches(AnalogNetwork.from_onnx(model, InferenceConfig.ideal()).predict(network_inputs(model, feeds)), reference(model, feeds))


@pytest.mark.parametrize("cores", ["stacked", "separate"])
@pytest.mark.parametrize("linear_before_reset", [0, 1])
def test_gru_linear_before_reset(linear_before_reset, cores):
    "linear_before_reset=1 (Keras reset_after) keeps R_h h + Rb_h apart; 0 reads U_h with r ⊙ h on a core of its own."
    model = recurrent_model("GRU", "bidirectional", 1, initial=True, lengths=True, attributes=dict(linear_before_reset=linear_before_reset))
    feeds = sample(model)
    network = AnalogNetwork.from_onnx(model, InferenceConfig.ideal().replace(recurrent_cores=cores))
    assert_matches(network.predict(network_inputs(model, feeds)), reference(model, feeds))
    assert any(name.endswith("/candidate") for name in network.cores) == (not linear_before_reset)


ACTIVATION_CASES = [
    ("RNN", dict(activations=["Relu"])),
    ("RNN", dict(activations=["LeakyRelu"], activation_alpha=[0.2])),
    ("RNN", dict(activations=["Affine", "ScaledTanh"], activation_alpha=[0.5, 1.5], activation_beta=[0.1, 0.7], direction="bidirectional")),
    ("RNN", dict(activations=["Softsign"])),
    ("RNN", dict(activations=["Softplus"])),
    ("RNN", dict(activations=["Elu"], activation_alpha=[0.6])),
    ("RNN", dict(activations=["ThresholdedRelu"], activation_alpha=[0.3])),
    ("GRU", dict(activations=["HardSigmoid", "Tanh"], activation_alpha=[0.3], activation_beta=[0.4])),
    ("GRU", dict(activations=["Sigmoid", "ScaledTanh"], activation_alpha=[0.8], activation_beta=[1.2], linear_before_reset=1)),
    ("LSTM", dict(activations=["HardSigmoid", "Tanh", "Softsign"])),
    ("LSTM", dict(activations=["Sigmoid", "Relu", "Tanh", "Sigmoid", "Tanh", "Relu"], direction="bidirectional")),
    ("LSTM", dict(clip=0.5)),
    ("GRU", dict(clip=0.4)),
    ("RNN", dict(clip=0.3)),
]


@pytest.mark.parametrize("op,attributes", ACTIVATION_CASES, ids=[f"{op}-{i}" for i, (op, _) in enumerate(ACTIVATION_CASES)])
def test_activations_and_clip(op, attributes):
    "The activations attribute (with alpha/beta consumed in order) and clip, against onnxruntime."
    attributes = dict(attributes)
    direction = attributes.pop("direction", "forward")
    model = recurrent_model(op, direction, 1, initial=True, attributes=attributes, seed=4)
    feeds = sample(model)
    try: expected = reference(model, feeds)
    except Exception as error: pytest.skip(f"onnxruntime does not run {attributes}: {str(error)[:100]}")
    assert_matches(AnalogNetwork.from_onnx(model, InferenceConfig.ideal()).predict(network_inputs(model, feeds)), expected)


def test_zero_peepholes_accepted():
    model = recurrent_model("LSTM", "bidirectional", peepholes=0.0)
    feeds = sample(model)
    assert_matches(AnalogNetwork.from_onnx(model, InferenceConfig.ideal()).predict(network_inputs(model, feeds)), reference(model, feeds))


@pytest.mark.parametrize("case", ["peepholes", "input_forget", "activation", "weights_from_data"])
def test_refusals_name_node_and_attribute(case):
    "Options the simulator cannot run are refused before any work, naming the node and the attribute; 'digital' runs them in onnxruntime."
    if case == "peepholes": model, word = recurrent_model("LSTM", peepholes=0.5), "peephole"
    elif case == "input_forget": model, word = recurrent_model("LSTM", attributes=dict(input_forget=1)), "input_forget"
    elif case == "activation": model, word = recurrent_model("RNN", attributes=dict(activations=["Gelu"])), "activations"
    else:
        model, word = recurrent_model("GRU"), "input W"
        weights = model.graph.initializer[0]                 # W becomes a model input: computed from the data
        model.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, list(weights.dims)))
        del model.graph.initializer[0]
    with pytest.raises(UnsupportedModelError) as error:
        AnalogNetwork.from_onnx(model, InferenceConfig.ideal())
    assert "'cell'" in str(error.value) and word in str(error.value), str(error.value)
    if case in ("peepholes", "input_forget"):          # (onnxruntime runs these; it has no Gelu recurrent activation)
        feeds = sample(model)
        network = AnalogNetwork.from_onnx(model, InferenceConfig.ideal(), layer_overrides={"cell": "digital"})
        assert not network.cores
        np.testing.assert_allclose(network.predict(network_inputs(model, feeds))[0], reference(model, feeds)[0], rtol=0, atol=1e-6)


def count_reads(network, x):
    reads = Counter()
    network.run(x, batch_size=len(x[0]) if isinstance(x, list) else len(x), observer=lambda name, tensor: reads.update([name]))
    return reads


@pytest.mark.filterwarnings("ignore::crosssim_nb.adc_health.ADCHealthWarning")
@pytest.mark.parametrize("cores", ["stacked", "separate"])
def test_8bit_runs_on_cores(cores):
    "8-bit weights, DAC and ADC: every core is read (once per step; a 'separate' input core once per sequence), the output stays close."
    model = recurrent_model("LSTM", "bidirectional", 1, initial=True, lengths=True)
    feeds = sample(model)
    config = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX", recurrent_cores=cores)
    calibration = network_inputs(model, sample(model, batch=32, seed=5))
    network = AnalogNetwork.from_onnx(model, config, calibration_data=calibration)
    x = network_inputs(model, feeds)
    reads = count_reads(network, x)
    expected = ({"cell/forward": STEPS, "cell/reverse": STEPS} if cores == "stacked" else
                {f"cell/{d}/{role}": (1 if role == "input" else STEPS) for d in ("forward", "reverse") for role in ("input", "recurrent")})
    assert dict(reads) == expected
    table = network.hw_config().set_index("layer")
    for name in expected:
        assert table.loc[name, "mvms_per_image"] == STEPS
        assert "i f c o" in table.loc[name, "role"]                  # what the core holds: the LSTM's gate blocks
    outputs, ideal = network.predict(x), reference(model, feeds)
    errors = [relative_error(o, e) for o, e in zip(outputs, ideal)]
    assert all(1e-5 < e < 0.1 for e in errors), errors


def test_read_noise_is_batch_independent():
    "With read noise, the result is the same for any batch size, and differs from the ideal one."
    model = recurrent_model("GRU", "bidirectional", 0, initial=True, lengths=True, attributes=dict(linear_before_reset=1))
    feeds = sample(model, batch=7)
    x = network_inputs(model, feeds)
    for cores in ("stacked", "separate"):
        config = InferenceConfig(noise_model="generic", alpha_noise=0.05, dac_bits=0, adc_bits=0, recurrent_cores=cores)
        network = AnalogNetwork.from_onnx(model, config)
        runs = [network.predict(x, batch_size=size) for size in (7, 3, 1)]
        for other in runs[1:]:
            for a, b in zip(runs[0], other): np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
        assert relative_error(runs[0][0], reference(model, feeds)[0]) > 1e-3


@pytest.mark.parametrize("layout", [0, 1])
def test_digital_override_runs_onnxruntime(layout):
    "layer_overrides={node: 'digital'} runs the node exactly in onnxruntime (a batch-first node as its layout-0 equivalent)."
    model = recurrent_model("LSTM", "bidirectional", layout, initial=True, lengths=True)
    feeds = sample(model)
    network = AnalogNetwork.from_onnx(model, InferenceConfig.ideal(), layer_overrides={"cell": "digital"})
    assert not network.cores
    for got, want in zip(network.predict(network_inputs(model, feeds)), reference(model, feeds)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_per_node_override_of_recurrent_cores():
    model = recurrent_model("RNN", "forward")
    network = AnalogNetwork.from_onnx(model, InferenceConfig.ideal(), layer_overrides={"cell": {"recurrent_cores": "separate"}})
    assert sorted(network.cores) == ["cell/input", "cell/recurrent"]


# ---- embeddings


def embedding_model(vocabulary=11, dimension=4, seed=0):
    "Token indices (int64, (N, 6)) -> Gather from a constant table -> Y, plus a second output reading a negative index."
    rng = np.random.default_rng(seed)
    table = numpy_helper.from_array(rng.standard_normal((vocabulary, dimension)).astype(np.float32), "table")
    nodes = [helper.make_node("Gather", ["table", "tokens"], ["y"], name="embed", axis=0)]
    graph = helper.make_graph(nodes, "embedding", [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[table])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_embedding_digital_and_analog():
    "Digital by default (no core); embedding='analog' reads the table on a core with one-hot vectors: exact when ideal, negative indices too."
    model = embedding_model()
    tokens = np.random.default_rng(2).integers(-11, 11, (9, 6))
    expected = reference(model, {"tokens": tokens})[0]
    digital = AnalogNetwork.from_onnx(model, InferenceConfig.ideal())
    assert not digital.cores
    np.testing.assert_array_equal(digital.predict(tokens.astype(np.float32)), expected)
    analog = AnalogNetwork.from_onnx(model, InferenceConfig.ideal().replace(embedding="analog"))
    assert list(analog.cores) == ["embed"] and analog.specs["embed"].matrix.shape == (4, 11)     # (dim, vocabulary)
    np.testing.assert_allclose(analog.predict(tokens.astype(np.float32)), expected, rtol=0, atol=1e-6)
    override = AnalogNetwork.from_onnx(model, InferenceConfig.ideal(), layer_overrides={"embed": {"embedding": "analog"}})
    assert list(override.cores) == ["embed"]
    with pytest.raises(ValueError, match="integer"):
        digital.predict(tokens.astype(np.float32) + 0.5)


def test_embedding_analog_noise_and_8bit():
    "Programming error and read noise act on the analog table; batch independent; 8-bit hardware reads the core once per image."
    model = embedding_model()
    tokens = np.random.default_rng(3).integers(0, 11, (8, 6)).astype(np.float32)
    expected = reference(model, {"tokens": tokens.astype(np.int64)})[0]
    noisy = InferenceConfig(noise_model="generic", alpha_noise=0.05, error_model="generic", alpha_error=0.05,
                            dac_bits=0, adc_bits=0, embedding="analog")
    network = AnalogNetwork.from_onnx(model, noisy)
    a, b = network.predict(tokens, batch_size=8), network.predict(tokens, batch_size=3)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert 1e-3 < relative_error(a, expected) < 0.5
    config = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX", embedding="analog")
    network = AnalogNetwork.from_onnx(model, config, calibration_data=tokens)
    assert dict(count_reads(network, tokens)) == {"embed": 1}
    assert 1e-5 < relative_error(network.predict(tokens), expected) < 0.1


# ---- PyTorch-exported models (committed files)

MANIFEST = json.loads((FOLDER / "manifest.json").read_text())
SEQUENCE_FILES = {row["file"]: row for row in MANIFEST["files"] if row["model"] in ("lstm_classifier", "embedding_gru", "rnn_relu_bidirectional")}


def test_sequence_models_are_committed():
    assert {(row["model"], row["exporter"]) for row in SEQUENCE_FILES.values()} == {
        (m, e) for m in ("lstm_classifier", "embedding_gru", "rnn_relu_bidirectional") for e in ("dynamo", "torchscript")}


def committed(name):
    row = SEQUENCE_FILES[name]
    data = np.load(FOLDER / row["reference"], allow_pickle=False)
    return onnx.load(str(FOLDER / name)), data["input_0"], data["output_0"]


@pytest.mark.parametrize("embedding", ["digital", "analog"])
@pytest.mark.parametrize("cores", ["stacked", "separate"])
@pytest.mark.parametrize("name", sorted(SEQUENCE_FILES))
def test_torch_exports_ideal_equal_onnxruntime(name, cores, embedding):
    model, x, expected = committed(name)
    np.testing.assert_allclose(reference(model, {"x0": x})[0], expected, rtol=0, atol=1e-6)
    network = AnalogNetwork.from_onnx(model, InferenceConfig.ideal().replace(recurrent_cores=cores, embedding=embedding))
    assert relative_error(network.predict(x.astype(np.float32)), expected) <= 1e-4
    recurrent = [n for n, node in zip(node_names(model), model.graph.node) if node.op_type in GATES]
    assert all(any(core == n or core.startswith(n + "/") for core in network.cores) for n in recurrent)
    embeds = [n for n in network.cores if network.specs[n].layer_type == "onnx:Gather"]
    assert len(embeds) == (1 if embedding == "analog" and "embedding" in name else 0)


@pytest.mark.filterwarnings("ignore::crosssim_nb.adc_health.ADCHealthWarning")
@pytest.mark.parametrize("name", sorted(SEQUENCE_FILES))
def test_torch_exports_8bit_run_every_weight_on_cores(name):
    "8-bit hardware: every recurrent direction, the Linear head (and an analog embedding) is read, and the output stays close."
    model, x, expected = committed(name)
    config = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX", embedding="analog")
    rng = np.random.default_rng(0)
    calibration = (rng.integers(0, 20, (16,) + x.shape[1:]) if "embedding" in name else rng.standard_normal((16,) + x.shape[1:])).astype(np.float32)
    network = AnalogNetwork.from_onnx(model, config, calibration_data=calibration)
    reads = count_reads(network, x.astype(np.float32))
    assert set(reads) == set(network.cores) and all(count > 0 for count in reads.values())
    directions = sum(2 if any(a.name == "direction" and a.s == b"bidirectional" for a in n.attribute) else 1
                     for n in model.graph.node if n.op_type in GATES)
    recurrent_cores = [n for n in network.cores if network.specs[n].layer_type.split(":")[1] in GATES]
    assert len(recurrent_cores) == directions
    assert 1e-5 < relative_error(network.predict(x.astype(np.float32)), expected) < 0.2


def test_from_torch_equals_torch():
    "from_torch on an LSTM classifier and an Embedding + GRU model (int64 tokens) equals the modules themselves."
    torch = pytest.importorskip("torch")
    from torch import nn
    torch.manual_seed(0)

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(5, 6, num_layers=2, batch_first=True, bidirectional=True)
            self.head = nn.Linear(12, 3)
        def forward(self, x): return self.head(self.lstm(x)[0][:, -1])

    class EmbeddingGRU(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding, self.gru, self.head = nn.Embedding(20, 5), nn.GRU(5, 6, batch_first=True), nn.Linear(6, 3)
        def forward(self, tokens): return self.head(self.gru(self.embedding(tokens))[1][-1])

    for module, x in ((Classifier().eval(), torch.randn(4, 7, 5)), (EmbeddingGRU().eval(), torch.randint(0, 20, (4, 7)))):
        with torch.no_grad(): expected = module(x).numpy()
        network = AnalogNetwork.from_torch(module, x, InferenceConfig.ideal().replace(embedding="analog"), exporter="torchscript")
        assert relative_error(network.predict(x.numpy().astype(np.float32)), expected) <= 1e-4
        assert len(network.cores) >= 2


@pytest.mark.filterwarnings("ignore::crosssim_nb.adc_health.ADCHealthWarning")
def test_calibrated_adc_limits_for_recurrent_and_embedding_cores():
    "calibrate_adc profiles every per-time-step core (and the analog embedding): calibrated 8-bit ADCs beat MAX ranges."
    from crosssim_nb.calibration import calibrate_adc
    model, _, _ = committed("embedding_gru_torchscript.onnx")
    tokens = np.random.default_rng(0).integers(0, 20, (64, 7))
    expected = reference(model, {"x0": tokens})[0]
    x = tokens.astype(np.float32)
    hardware = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, embedding="analog", recurrent_cores="separate")
    calibration = calibrate_adc(AnalogNetwork.from_onnx(model, hardware.replace(adc_bits=0), calibration_data=x), x, adc_bits=8)
    assert set(calibration.adc_limits) == {"/embedding/Gather", "/gru/GRU/input", "/gru/GRU/recurrent", "/head/Gemm"}   # (torch: linear_before_reset=1)
    calibrated = AnalogNetwork.from_onnx(model, hardware.replace(adc_range_option="CALIBRATED"), adc_limits=calibration)
    full_range = AnalogNetwork.from_onnx(model, hardware.replace(adc_range_option="MAX"), calibration_data=x)
    assert relative_error(calibrated.predict(x), expected) < relative_error(full_range.predict(x), expected) / 2


def test_run_inference_on_token_model():
    "The front door takes an ONNX model with integer token inputs: onnxruntime gets integers, the ideal network equals it, no raw-pixel warning."
    from crosssim_nb.inference import run_inference
    tokens = np.random.default_rng(4).integers(0, 20, (30, 7))
    labels = np.random.default_rng(5).integers(0, 3, 30)
    result = run_inference(str(FOLDER / "embedding_gru_dynamo.onnx"), (tokens, labels), InferenceConfig.ideal().replace(embedding="analog"),
                           ntest=None, progress=False, return_outputs=True)
    expected = reference(onnx.load(str(FOLDER / "embedding_gru_dynamo.onnx")), {"x0": tokens})[0]
    assert relative_error(result.float_outputs, expected) < 1e-6 and relative_error(result.outputs[0], expected) <= 1e-4
    assert not any("raw" in w for w in result.warnings), result.warnings


@pytest.mark.parametrize("cores", ["stacked", "separate"])
def test_read_noise_independent_over_time_steps(cores):
    "A linear RNN passing x_t through (W = I, R = 0): each step's read noise is a fresh draw, uncorrelated with the next step's."
    steps, size, count = 6, 4, 400
    initializers = [numpy_helper.from_array(np.eye(size, dtype=np.float32)[None], "W"), numpy_helper.from_array(np.zeros((1, size, size), np.float32), "R")]
    nodes = [helper.make_node("Transpose", ["x"], ["X"], perm=[1, 0, 2]),
             helper.make_node("RNN", ["X", "W", "R"], ["Y"], hidden_size=size, activations=["Affine"], activation_alpha=[1.0],
                              activation_beta=[0.0], name="cell"),
             helper.make_node("Transpose", ["Y"], ["y"], perm=[2, 0, 1, 3])]
    model = helper.make_model(helper.make_graph(nodes, "linear_rnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", steps, size])],
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers),
                              opset_imports=[helper.make_opsetid("", 14)])
    x = np.random.default_rng(6).uniform(-1, 1, (count, steps, size)).astype(np.float32)
    config = InferenceConfig(noise_model="generic", alpha_noise=0.05, dac_bits=0, adc_bits=0, recurrent_cores=cores)
    noise = (AnalogNetwork.from_onnx(model, config).predict(x)[:, :, 0] - reference(model, {"x": x})[0][:, :, 0]).astype(np.float64)
    assert noise.std() > 0.01
    bound = 4 / np.sqrt(count * size)                                  # 4 standard errors of a correlation of independent draws
    for t in range(steps - 1):
        assert abs(np.corrcoef(noise[:, t].ravel(), noise[:, t + 1].ravel())[0, 1]) < bound
