"ONNX import: networks built by `AnalogNetwork.from_onnx` equal onnxruntime (ideal), run on cores (8-bit), refuse bad input."
import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import json
import numpy as np
import pytest
import onnx
from onnx import helper, TensorProto, numpy_helper
import onnxruntime as ort
from crosssim_nb.config import InferenceConfig
from crosssim_nb.network import AnalogNetwork
from crosssim_nb.onnx_import import UnsupportedModelError, SUPPORTED_OPS

TOLERANCE = 1e-4                       # of max |onnxruntime output|
EIGHT_BIT = dict(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX")


def tensor(name, array): return numpy_helper.from_array(np.asarray(array), name)

def make_model(nodes, inputs, outputs, initializers=(), opset=17, name="test"):
    "A model from nodes; inputs/outputs as (name, shape) pairs (float32), shape entries may be strings (open dims)."
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs], initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)

def reference(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]

def relative_error(got, expected):
    return float(np.max(np.abs(np.asarray(got, np.float64) - expected)) / max(np.max(np.abs(expected)), 1e-30))

def check_ideal(model, x, **keywords):
    "The ideal network equals onnxruntime to TOLERANCE; returns the network."
    net = AnalogNetwork.from_onnx(model, InferenceConfig.ideal(), **keywords)
    expected = reference(model, x)
    got = net.predict(x)
    assert got.shape == expected.shape
    error = relative_error(got, expected)
    assert error <= TOLERANCE, f"differs from onnxruntime by {error:.3g} of max|output|"
    return net


rng = np.random.default_rng(0)

def weights(*shape, scale=0.3): return (rng.normal(size=shape) * scale).astype(np.float32)


# ----- convolutions -----
CONV_CASES = [
    dict(), dict(pads=[1, 1, 1, 1]), dict(pads=[0, 1, 2, 1]), dict(strides=[2, 2], pads=[1, 1, 1, 1]),
    dict(strides=[2, 1], dilations=[1, 2]), dict(dilations=[2, 2], pads=[2, 2, 2, 2]), dict(auto_pad="SAME_UPPER", strides=[2, 2]),
    dict(auto_pad="SAME_LOWER", strides=[2, 2]), dict(auto_pad="VALID", strides=[2, 2]), dict(group=2, pads=[1, 1, 1, 1]),
    dict(group=4, pads=[1, 1, 1, 1]), dict(group=4, strides=[2, 2], pads=[1, 0, 1, 0]),
]

@pytest.mark.parametrize("attributes", CONV_CASES, ids=[json.dumps(c) for c in CONV_CASES])
@pytest.mark.parametrize("opset", [11, 13, 17, 21])
def test_conv2d(attributes, opset):
    groups = attributes.get("group", 1)
    out_channels = 8 if groups != 4 else 8               # group 4 with 4 inputs: depthwise, multiplier 2
    w = weights(out_channels, 4 // groups, 3, 3)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", **attributes)]
    model = make_model(nodes, [("x", ["N", 4, 9, 10])], [("y", None)], [tensor("w", w), tensor("b", weights(out_channels))], opset)
    net = check_ideal(model, rng.normal(size=(3, 4, 9, 10)).astype(np.float32))
    assert len(net.cores) == 1


@pytest.mark.parametrize("attributes", [dict(), dict(pads=[2, 1], strides=[2]), dict(dilations=[2], pads=[2, 1]), dict(group=3, pads=[1, 1])])
def test_conv1d(attributes):
    w = weights(6, 3 // attributes.get("group", 1), 3)
    model = make_model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", **attributes)], [("x", ["N", 3, 11])], [("y", None)],
                       [tensor("w", w)])
    check_ideal(model, rng.normal(size=(2, 3, 11)).astype(np.float32))


TRANSPOSED_CASES = [dict(), dict(strides=[2, 2]), dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
                    dict(strides=[2, 3], pads=[0, 1, 1, 0], dilations=[1, 2]), dict(strides=[2, 2], group=2),
                    dict(strides=[2, 2], output_shape=[10, 11]), dict(strides=[2, 2], auto_pad="SAME_UPPER"),
                    dict(strides=[2, 2], auto_pad="SAME_LOWER", group=4)]

@pytest.mark.parametrize("attributes", TRANSPOSED_CASES, ids=[json.dumps(c) for c in TRANSPOSED_CASES])
def test_conv_transpose(attributes):
    groups = attributes.get("group", 1)
    w = weights(4, 8 // groups if groups != 4 else 1, 3, 3)
    nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], name="deconv", **attributes)]
    b = weights(w.shape[1] * groups)
    model = make_model(nodes, [("x", ["N", 4, 5, 6])], [("y", None)], [tensor("w", w), tensor("b", b)], 17)
    check_ideal(model, rng.normal(size=(2, 4, 5, 6)).astype(np.float32))


def test_conv3d():
    w = weights(5, 2, 2, 3, 2)
    model = make_model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv3d", pads=[1, 0, 1, 0, 1, 1], strides=[1, 2, 1])],
                       [("x", ["N", 2, 5, 6, 7])], [("y", None)], [tensor("w", w)])
    check_ideal(model, rng.normal(size=(2, 2, 5, 6, 7)).astype(np.float32))


# ----- matrix products -----
GEMM_CASES = [dict(), dict(transB=1), dict(transA=1), dict(alpha=0.5, beta=2.0), dict(transA=1, transB=1, alpha=1.5)]

@pytest.mark.parametrize("attributes", GEMM_CASES, ids=[json.dumps(c) for c in GEMM_CASES])
@pytest.mark.parametrize("bias_shape", [None, (7,), (1, 7), (1,)])
def test_gemm(attributes, bias_shape):
    b_shape = (7, 6) if attributes.get("transB") else (6, 7)
    inputs = ["a", "w"] + (["c"] if bias_shape else [])
    initializers = [tensor("w", weights(*b_shape))] + ([tensor("c", weights(*bias_shape))] if bias_shape else [])
    nodes = [helper.make_node("Gemm", inputs, ["y"], name="fc", **attributes)]
    if attributes.get("transA"): nodes.insert(0, helper.make_node("Transpose", ["x"], ["a"], name="t", perm=[1, 0]))   # A is (6, batch)
    else: nodes.insert(0, helper.make_node("Identity", ["x"], ["a"], name="i"))
    model = make_model(nodes, [("x", [5, 6])], [("y", None)], initializers)
    net = check_ideal(model, rng.normal(size=(5, 6)).astype(np.float32))
    assert len(net.cores) == 1


@pytest.mark.parametrize("case", ["right2d", "right1d", "left", "batched_data"])
def test_matmul(case):
    if case == "right2d": shape, nodes, init = ["N", 3, 6], [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], weights(6, 5)
    if case == "right1d": shape, nodes, init = ["N", 6], [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], weights(6)
    if case == "left": shape, nodes, init = ["N", 6, 3], [helper.make_node("MatMul", ["w", "x"], ["y"], name="mm")], weights(5, 6)
    if case == "batched_data": shape, nodes, init = ["N", 2, 3, 6], [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], weights(6, 4)
    model = make_model(nodes, [("x", shape)], [("y", None)], [tensor("w", init)])
    net = check_ideal(model, rng.normal(size=[4] + shape[1:]).astype(np.float32))
    assert len(net.cores) == 1


@pytest.mark.parametrize("equation, constant_first", [("bij,jk->bik", False), ("bd,hd->bh", False), ("ij,bcj->bci", True),
                                                      ("bcj,jki->bcik", False), ("bij,jkl->bikl", False)])
def test_einsum_analog(equation, constant_first):
    data_indices = equation.split("->")[0].split(",")[1 if constant_first else 0]
    weight_indices = equation.split("->")[0].split(",")[0 if constant_first else 1]
    sizes = dict(b=3, i=4, j=5, k=6, c=2, d=7, h=3, l=2)
    w = weights(*(sizes[i] for i in weight_indices))
    inputs = ["w", "x"] if constant_first else ["x", "w"]
    model = make_model([helper.make_node("Einsum", inputs, ["y"], name="es", equation=equation)],
                       [("x", ["N"] + [sizes[i] for i in data_indices[1:]])], [("y", None)], [tensor("w", w)], opset=13)
    net = check_ideal(model, rng.normal(size=[sizes[i] for i in data_indices]).astype(np.float32))
    assert len(net.cores) == 1


# ----- digital nodes between cores (they read channels-last data through views) -----
I64 = lambda *v: np.array(v, np.int64)
AFTER_CONV = [  # (op, extra constant inputs, attributes, first opset)
    ("Relu", [], {}, 11), ("LeakyRelu", [], {"alpha": 0.1}, 11), ("Sigmoid", [], {}, 11), ("HardSwish", [], {}, 14),
    ("Clip", [np.float32(0), np.float32(0.5)], {}, 11), ("PRelu", [np.full((8, 1, 1), 0.2, np.float32)], {}, 11),
    ("Add", [weights(8, 1, 1)], {}, 11), ("Mul", [weights(1, 6, 1)], {}, 11), ("Div", [np.float32(3)], {}, 11),
    ("MaxPool", [], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, 11),
    ("AveragePool", [], {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}, 11),
    ("GlobalAveragePool", [], {}, 11), ("GlobalMaxPool", [], {}, 11),
    ("Pad", [I64(0, 0, 1, 0, 0, 0, 0, 2)], {"mode": "reflect"}, 11),
    ("Resize", [np.array([], np.float32), np.array([1, 1, 2, 2], np.float32)], {"mode": "nearest"}, 11),
    ("Resize", [np.array([], np.float32), np.array([1, 1, 2, 2], np.float32)], {"mode": "linear"}, 11),
    ("Flatten", [], {}, 11), ("Transpose", [], {"perm": [0, 3, 1, 2]}, 11), ("Softmax", [], {"axis": 1}, 13),
    ("ReduceMean", [], {"axes": [2, 3], "keepdims": 1}, 11, 17), ("ReduceMean", [I64(2, 3)], {"keepdims": 1}, 18), ("Slice", [I64(1, -1), I64(100, 0), I64(1, 3), I64(2, -2)], {}, 11),
    ("Concat", [weights(1, 8, 6, 7)], {"axis": 1}, 11), ("Split", [], {"axis": 1, "split": [3, 5]}, 11, 12), ("Split", [I64(3, 5)], {"axis": 1}, 13),
    ("BatchNormalization", [np.ones(8, np.float32) * 1.5, np.ones(8, np.float32) * 0.1, np.zeros(8, np.float32), np.ones(8, np.float32)], {}, 11),
    ("InstanceNormalization", [np.ones(8, np.float32), np.zeros(8, np.float32)], {}, 11),
    ("Gather", [I64(0, 5, 2)], {"axis": 1}, 11), ("DepthToSpace", [], {"blocksize": 2}, 11),
]

@pytest.mark.parametrize("opset", [11, 13, 17, 21])
@pytest.mark.parametrize("case", AFTER_CONV, ids=[c[0] + ("-" + c[2].get("mode", "") if "mode" in c[2] else "") for c in AFTER_CONV])
def test_digital_after_conv(case, opset):
    "conv -> op -> conv (or output): the op reads the core's channels-last output as a channels-first view."
    op, extra, attributes, first, *last = case
    if not first <= opset <= (last or [21])[0]: pytest.skip(f"{op} in this form exists in opsets {first}-{(last or [21])[0]}")
    if op == "Concat" and extra: extra = []; inputs_two = True
    else: inputs_two = False
    names = [f"k{i}" for i in range(len(extra))]
    node_inputs = ["c"] + (["c"] if inputs_two else []) + names
    outputs = ["d", "d2"] if op == "Split" else ["d"]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node(op, node_inputs, outputs, name="op", **attributes)]
    if op == "Split": nodes.append(helper.make_node("Concat", ["d2", "d"], ["y"], name="join", axis=1))
    else: nodes.append(helper.make_node("Identity", ["d"], ["y"], name="out"))
    initializers = [tensor("w", weights(8, 3, 3, 3))] + [tensor(n, v) for n, v in zip(names, extra)]
    model = make_model(nodes, [("x", ["N", 3, 6, 7])], [("y", None)], initializers, opset)
    net = check_ideal(model, rng.normal(size=(3, 3, 6, 7)).astype(np.float32))
    assert len(net.cores) == 1


def resnet_block(opset=13, fold=True):
    "A small ResNet-style model: conv-BN-relu, maxpool, a residual block with a strided projection, global pool, linear."
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "g1", "b1", "m1", "v1"], ["n1"], name="bn1"),
             helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], ["p1"], name="pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["p1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("BatchNormalization", ["c2", "g2", "b2", "m2", "v2"], ["n2"], name="bn2"),
             helper.make_node("Relu", ["n2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3", "bias3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["p1", "wp"], ["sc"], name="project", strides=[2, 2]),
             helper.make_node("Add", ["c3", "sc"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["r3"], name="relu3"),
             helper.make_node("GlobalAveragePool", ["r3"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1)]
    inits = [tensor("w1", weights(8, 3, 3, 3)), tensor("w2", weights(16, 8, 3, 3)), tensor("w3", weights(16, 16, 3, 3)),
             tensor("bias3", weights(16)), tensor("wp", weights(16, 8, 1, 1)), tensor("wf", weights(10, 16)), tensor("bf", weights(10))]
    for i, c in ((1, 8), (2, 16)):
        inits += [tensor(f"g{i}", 1 + weights(c)), tensor(f"b{i}", weights(c)), tensor(f"m{i}", weights(c)),
                  tensor(f"v{i}", np.abs(weights(c)) + 0.5)]
    return make_model(nodes, [("x", ["N", 3, 16, 16])], [("y", ["N", 10])], inits, opset)


@pytest.mark.parametrize("opset", [11, 13, 17, 21])
@pytest.mark.parametrize("fold", [True, False])
def test_resnet_block_ideal(opset, fold):
    model = resnet_block(opset)
    x = rng.normal(size=(9, 3, 16, 16)).astype(np.float32)
    net = AnalogNetwork.from_onnx(model, InferenceConfig.ideal().replace(fold_batchnorm=fold))
    assert relative_error(net.predict(x), reference(model, x)) <= TOLERANCE
    folded = [s.folded_batchnorm for s in net.specs.values() if s.folded_batchnorm]
    assert folded == ([["bn1"], ["bn2"]] if fold else [])
    assert net.input_layout == "channels_first"
    assert ("relu1" in net.fused_relus and "relu2" in net.fused_relus) == fold      # a BatchNormalization left digital stands between


def test_eight_bit_runs_on_cores(monkeypatch):
    "With 8-bit weights, DAC and ADC every weight-bearing node is its own core, and the output differs from ideal (but stays close)."
    monkeypatch.setitem(globals(), "rng", np.random.default_rng(44))   # its own weights and inputs, whatever ran before it
    model = resnet_block()
    x = rng.normal(size=(16, 3, 16, 16)).astype(np.float32)
    net = AnalogNetwork.from_onnx(model, InferenceConfig.ideal().replace(**EIGHT_BIT), calibration_data=x)
    weight_nodes = [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert sorted(net.cores) == sorted(weight_nodes)
    expected = reference(model, x)
    error = relative_error(net.predict(x), expected)
    # full-scale (MAX) 8-bit ADCs on a random network cost 0.3-0.6 of the output; 8-bit weights and inputs alone ~0.02
    without_adc = AnalogNetwork.from_onnx(model, InferenceConfig.ideal().replace(**{**EIGHT_BIT, "adc_bits": 0}), calibration_data=x)
    assert 1e-4 < relative_error(without_adc.predict(x), expected) < 0.05 < error < 0.8
    assert net.hw_config().iloc[:-1].input.tolist() == ["signed"] + ["unsigned"] * 4      # after Relu, pooling, Flatten


def test_eight_bit_calibrated_adc():
    "CALIBRATED ADC limits from calibrate_adc on an ONNX network (the downstream tools work on it)."
    from crosssim_nb.calibration import calibrate_adc
    model = resnet_block()
    x = rng.normal(size=(24, 3, 16, 16)).astype(np.float32)
    profiling = AnalogNetwork.from_onnx(model, InferenceConfig.ideal().replace(weight_bits=8, dac_bits=8), calibration_data=x)
    calibration = calibrate_adc(profiling, x, adc_bits=8)
    net = AnalogNetwork.from_onnx(model, InferenceConfig.ideal().replace(weight_bits=8, dac_bits=8, adc_bits=8,
                                                                         adc_range_option="CALIBRATED"), adc_limits=calibration)
    error = relative_error(net.predict(x), reference(model, x))
    assert 1e-4 < error < 0.2


def test_batch_dependent_shape_arithmetic():
    "x.view(x.size(0), -1) as exporters write it: Shape -> Gather -> Unsqueeze -> Concat -> Reshape (kept, as it follows the batch)."
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Shape", ["c"], ["s"], name="shape"), helper.make_node("Gather", ["s", "zero"], ["n"], name="gather", axis=0),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"], name="unsqueeze"),
             helper.make_node("Concat", ["n1", "minus1"], ["target"], name="concat", axis=0),
             helper.make_node("Reshape", ["c", "target"], ["f"], name="reshape"),
             helper.make_node("Shape", ["w"], ["ws"], name="weight_shape"),        # static: folded
             helper.make_node("Slice", ["ws", "zero1", "one1"], ["m"], name="slice"),
             helper.make_node("Concat", ["minus1", "m", "nine"], ["target2"], name="concat2", axis=0),
             helper.make_node("Reshape", ["f", "target2"], ["g"], name="reshape2"),
             helper.make_node("MatMul", ["g", "wm"], ["y"], name="mm")]
    inits = [tensor("w", weights(4, 2, 3, 3)), tensor("zero", np.array(0, np.int64)), tensor("axes", I64(0)), tensor("minus1", I64(-1)),
             tensor("zero1", I64(0)), tensor("one1", I64(1)), tensor("nine", I64(9)), tensor("wm", weights(9, 5))]
    model = make_model(nodes, [("x", ["N", 2, 5, 5])], [("y", None)], inits, 13)
    net = check_ideal(model, rng.normal(size=(5, 2, 5, 5)).astype(np.float32))
    kinds = {n.layer_name for n in net.graph.nodes}
    assert "shape" in kinds and "weight_shape" not in kinds and "slice" not in kinds      # batch-dependent kept, static folded


# ----- bad input: each refused before any work, naming the file and the node -----
def small_model(opset=13, extra_nodes=(), name_conv="conv"):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name=name_conv), helper.make_node("Relu", ["c"], ["y"], name="relu")]
    return make_model(nodes + list(extra_nodes), [("x", ["N", 2, 5, 5])], [("y", None)], [tensor("w", weights(3, 2, 3, 3))], opset)

def test_unsupported_nodes_are_all_named(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), helper.make_node("Hardmax", ["c"], ["h"], name="hm"),
             helper.make_node("TopK", ["h", "k"], ["y", "idx"], name="top"),
             helper.make_node("Custom", ["y"], ["z"], name="mine", domain="my.domain")]
    model = make_model(nodes, [("x", ["N", 2, 5, 5])], [("z", None)], [tensor("w", weights(3, 2, 3, 3)), tensor("k", I64(2))])
    model.opset_import.append(helper.make_opsetid("my.domain", 1))
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    with pytest.raises(UnsupportedModelError) as error:
        AnalogNetwork.from_onnx(path, InferenceConfig.ideal())
    text = str(error.value)
    for expected in (str(path), "'hm'", "'Hardmax'", "'top'", "'TopK'", "'mine'", "'my.domain'", "layer_overrides", "digital"):
        assert expected in text


def test_override_keeps_any_node_digital():
    "layer_overrides={'node': 'digital'} runs an unsupported node in onnxruntime (exactly); a supported analog node on a float engine."
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Hardmax", ["c"], ["h"], name="hm", axis=1),
             helper.make_node("Conv", ["h", "w2"], ["y"], name="conv2")]
    model = make_model(nodes, [("x", ["N", 2, 5, 5])], [("y", None)], [tensor("w", weights(3, 2, 3, 3)), tensor("w2", weights(4, 3, 1, 1))])
    x = rng.normal(size=(4, 2, 5, 5)).astype(np.float32)
    net = check_ideal(model, x, layer_overrides={"hm": "digital", "conv2": "digital"})
    assert list(net.cores) == ["conv"]                                 # conv2 kept digital: no core
    net8 = AnalogNetwork.from_onnx(model, InferenceConfig.ideal().replace(**EIGHT_BIT), calibration_data=x,
                                   layer_overrides={"hm": "digital"})
    assert sorted(net8.cores) == ["conv", "conv2"]


def test_pytorch_pickles_are_never_loaded(tmp_path):
    for suffix in (".pt", ".pth"):
        path = tmp_path / f"model{suffix}"
        path.write_bytes(b"\x80\x04not really a pickle")
        with pytest.raises(UnsupportedModelError, match="never loaded") as error:
            AnalogNetwork.from_onnx(path, InferenceConfig.ideal())
        assert str(path) in str(error.value) and "torch.onnx.export" in str(error.value) and "from_torch" in str(error.value)


def test_truncated_and_foreign_files(tmp_path):
    good = small_model().SerializeToString()
    truncated = tmp_path / "cut.onnx"; truncated.write_bytes(good[:len(good) // 2])
    text = tmp_path / "notes.onnx"; text.write_text("this is not a model")
    empty = tmp_path / "empty.onnx"; empty.write_bytes(b"")
    for path in (truncated, text, empty):
        with pytest.raises(UnsupportedModelError, match="not .*ONNX model") as error:
            AnalogNetwork.from_onnx(path, InferenceConfig.ideal())
        assert str(path) in str(error.value)
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        AnalogNetwork.from_onnx(tmp_path / "missing.onnx", InferenceConfig.ideal())


@pytest.mark.parametrize("opset", [7, 10, 24, 30])
def test_unknown_opsets(tmp_path, opset):
    path = tmp_path / "m.onnx"
    onnx.save(small_model(opset), path)
    with pytest.raises(UnsupportedModelError, match=f"opset {opset}") as error:
        AnalogNetwork.from_onnx(path, InferenceConfig.ideal())
    assert str(path) in str(error.value) and "11–23" in str(error.value)


def test_unresolved_dimensions(tmp_path):
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [("x", ["N", 3, "height", "width"])], [("y", None)])
    path = tmp_path / "open.onnx"
    onnx.save(model, path)
    with pytest.raises(UnsupportedModelError, match="'height' \\(axis 2\\)") as error:
        AnalogNetwork.from_onnx(path, InferenceConfig.ideal())
    assert str(path) in str(error.value) and "'x'" in str(error.value)
    x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)        # the example (calibration) input resolves them
    net = AnalogNetwork.from_onnx(path, InferenceConfig.ideal(), calibration_data=x)
    assert net.graph.node("x").output_shape == (None, 3, 4, 5)
    net = AnalogNetwork.from_onnx(path, InferenceConfig.ideal(), input_shapes={"x": (1, 3, 6, 6)})
    np.testing.assert_array_equal(net.predict(x[:, :, :3, :3].repeat(2, 2).repeat(2, 3)), np.maximum(x[:, :, :3, :3].repeat(2, 2).repeat(2, 3), 0))


def test_missing_and_short_external_data(tmp_path):
    from onnx.external_data_helper import convert_model_to_external_data
    model = small_model()
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    path = tmp_path / "external.onnx"
    onnx.save(model, path)
    net = AnalogNetwork.from_onnx(path, InferenceConfig.ideal())              # complete: loads
    assert list(net.cores) == ["conv"]
    (tmp_path / "weights.bin").write_bytes((tmp_path / "weights.bin").read_bytes()[:10])
    with pytest.raises(UnsupportedModelError, match="shorter") as error:
        AnalogNetwork.from_onnx(path, InferenceConfig.ideal())
    assert "'w'" in str(error.value) and str(path) in str(error.value)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(FileNotFoundError, match="weights.bin") as error:
        AnalogNetwork.from_onnx(path, InferenceConfig.ideal())
    assert "'w'" in str(error.value) and str(path) in str(error.value)


def test_training_mode_batchnorm(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y", "rm", "rv"], name="bn", training_mode=1)]
    inits = [tensor("w", weights(3, 2, 3, 3))] + [tensor(n, np.ones(3, np.float32)) for n in "gbmv"]
    path = tmp_path / "train.onnx"
    onnx.save(make_model(nodes, [("x", ["N", 2, 5, 5])], [("y", None)], inits, 15), path)
    with pytest.raises(UnsupportedModelError, match="training mode") as error:
        AnalogNetwork.from_onnx(path, InferenceConfig.ideal())
    assert "'bn'" in str(error.value) and str(path) in str(error.value)


def test_duplicate_node_names(tmp_path):
    model = small_model(extra_nodes=[helper.make_node("Relu", ["y"], ["z"], name="conv")])
    path = tmp_path / "dup.onnx"
    onnx.save(model, path)
    with pytest.raises(UnsupportedModelError, match="same name") as error:
        AnalogNetwork.from_onnx(path, InferenceConfig.ideal())
    assert "'conv'" in str(error.value) and str(path) in str(error.value)


def test_checks_come_before_any_work(monkeypatch, tmp_path):
    "An unsupported node is refused before onnxruntime runs anything."
    import crosssim_nb.onnx_import as onnx_import
    def fail(*args, **kwargs): raise AssertionError("the model was probed before the support check")
    monkeypatch.setattr(onnx_import, "probe", fail)
    model = small_model(extra_nodes=[helper.make_node("Hardmax", ["y"], ["z"], name="hm")])
    with pytest.raises(UnsupportedModelError, match="'hm'"):
        AnalogNetwork.from_onnx(model, InferenceConfig.ideal())


def test_bad_arguments():
    with pytest.raises(TypeError, match="InferenceConfig"): AnalogNetwork.from_onnx(small_model(), {"weight_bits": 8})
    with pytest.raises(TypeError, match="onnx.ModelProto"): AnalogNetwork.from_onnx(42, InferenceConfig.ideal())
    with pytest.raises(TypeError, match="layer_overrides"): AnalogNetwork.from_onnx(small_model(), InferenceConfig.ideal(), layer_overrides=["conv"])
    with pytest.raises(ValueError, match="nosuch"):
        AnalogNetwork.from_onnx(small_model(), InferenceConfig.ideal(), layer_overrides={"nosuch": "digital"})
    with pytest.raises(ValueError, match="calibration_data"):
        AnalogNetwork.from_onnx(small_model(), InferenceConfig.ideal().replace(**EIGHT_BIT))


def test_supported_ops_listed():
    for op in ("Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", "Relu", "Resize", "Shape", "Range", "BatchNormalization"):
        assert op in SUPPORTED_OPS


def test_fixed_batch_reshape_is_freed():
    "A file exported with batch 1 baked into a Reshape target ([1, -1]) still runs any batch size."
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), helper.make_node("Reshape", ["c", "target"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "wf"], ["y"], name="fc")]
    model = make_model(nodes, [("x", [1, 2, 5, 5])], [("y", [1, 4])], [tensor("w", weights(3, 2, 3, 3)), tensor("target", I64(1, -1)),
                                                                         tensor("wf", weights(27, 4))])
    x = rng.normal(size=(6, 2, 5, 5)).astype(np.float32)
    net = AnalogNetwork.from_onnx(model, InferenceConfig.ideal())
    expected = np.concatenate([reference(model, x[i:i + 1]) for i in range(6)])
    assert relative_error(net.predict(x), expected) <= TOLERANCE
    assert numpy_helper.to_array(model.graph.initializer[1]).tolist() == [1, -1]        # the caller's model is not changed


def test_batch_fixed_elsewhere_is_refused():
    nodes = [helper.make_node("ReduceMean", ["x"], ["y"], name="mean_over_batch", axes=[0])]
    model = make_model(nodes, [("x", ["N", 2, 3])], [("y", None)])
    with pytest.raises(UnsupportedModelError, match="do not follow the batch size"):
        AnalogNetwork.from_onnx(model, InferenceConfig.ideal())


@pytest.mark.parametrize("opset", [13, 17])
def test_bias_add_and_batchnorm_fold_into_the_core(opset):
    "MatMul -> Add(bias) -> BatchNormalization (how exporters write Linear + BatchNorm1d): one core, bias and BN inside it."
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="linear"), helper.make_node("Add", ["m", "bias"], ["a"], name="bias_add"),
             helper.make_node("BatchNormalization", ["a", "g", "b", "mean", "var"], ["n"], name="bn"),
             helper.make_node("Conv", ["x4", "wc"], ["c"], name="conv"), helper.make_node("Add", ["c", "cbias"], ["ca"], name="conv_bias"),
             helper.make_node("Relu", ["ca"], ["r"], name="relu"), helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("Concat", ["n", "f"], ["y"], name="join", axis=1),
             helper.make_node("Reshape", ["x", "shape4"], ["x4"], name="to_image")]
    nodes = nodes[-1:] + nodes[:-1]
    inits = [tensor("w", weights(12, 5)), tensor("bias", weights(5)), tensor("g", 1 + weights(5)), tensor("b", weights(5)),
             tensor("mean", weights(5)), tensor("var", np.abs(weights(5)) + 0.5), tensor("shape4", I64(0, 3, 2, 2)),
             tensor("wc", weights(4, 3, 1, 1)), tensor("cbias", weights(4, 1, 1))]
    model = make_model(nodes, [("x", ["N", 12])], [("y", None)], inits, opset)
    net = check_ideal(model, rng.normal(size=(6, 12)).astype(np.float32))
    types = [n.layer_type for n in net.graph.nodes]
    assert "onnx:Add" not in types and "onnx:BatchNormalization" not in types
    assert net.specs["linear"].folded_batchnorm == ["bn"] and net.specs["conv"].bias is not None


def test_in_place_operations_spare_tensors_still_read():
    "Add/Mul/Relu write into an input only when nothing reads it later: here `c` is read again after the Add."
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), helper.make_node("Conv", ["x", "w2"], ["c2"], name="conv2"),
             helper.make_node("Add", ["c", "c2"], ["a"], name="add"), helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Mul", ["c", "r"], ["m"], name="mul"), helper.make_node("Sub", ["m", "c2"], ["y"], name="sub")]
    model = make_model(nodes, [("x", ["N", 2, 5, 5])], [("y", None)], [tensor("w", weights(3, 2, 3, 3)), tensor("w2", weights(3, 2, 3, 3))])
    check_ideal(model, rng.normal(size=(4, 2, 5, 5)).astype(np.float32))
