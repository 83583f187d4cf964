"""Attention in ONNX graphs: PyTorch-exported transformers (committed under tests/data/onnx/torch/ by
nbs/56_torch_models.ipynb), activation × activation products digital or on arrays written per input
(`attention_products`), the opset-23 `Attention` node, and refusals.

References: onnxruntime on the same file (ideal configuration, 1e-4 of max|output|), the digital network (analog
products with ideal hardware), and the network itself at another batch size (keyed draws: batch independence).
"""
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from crosssim_nb import InferenceConfig
from crosssim_nb.network import AnalogNetwork

onnx_import = pytest.importorskip("crosssim_nb.onnx_import")

FOLDER = Path(__file__).parent / "data" / "onnx" / "torch"
MANIFEST = json.loads((FOLDER / "manifest.json").read_text())
MODELS = ("vit_prenorm_gelu", "vit_postnorm_relu", "mlp_mixer", "text_transformer")
FILES = {row["file"]: row for row in MANIFEST["files"] if row["model"] in MODELS}
VIT = "vit_prenorm_gelu_dynamo.onnx"
EIGHT_BIT = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX")
pytestmark = pytest.mark.filterwarnings("ignore::crosssim_nb.adc_health.ADCHealthWarning")  # MAX ranges on random weights


def _sample(name):
    row = FILES[name]
    sample = np.load(FOLDER / row["reference"], allow_pickle=False)
    return sample["input_0"], sample["output_0"]


def _inputs(name, count, seed=0):
    "`count` inputs like the model's sample: token indices for the text model, standard normal images otherwise."
    x, _ = _sample(name)
    rng = np.random.default_rng(seed)
    if np.issubdtype(x.dtype, np.integer): return rng.integers(0, 20, size=(count,) + x.shape[1:]).astype(x.dtype)
    return rng.standard_normal((count,) + x.shape[1:]).astype(np.float32)


def _reference(name, x):
    return onnxruntime.InferenceSession(str(FOLDER / name), providers=["CPUExecutionProvider"]).run(None, {"x0": x})[0]


def _relative(got, expected):
    return float(np.abs(np.asarray(got, np.float64) - expected).max() / np.abs(expected).max())


def test_all_transformer_files_are_committed():
    "Every attention model is there for both exporters; one TorchScript export writes LayerNorm decomposed (opset < 17)."
    assert {(row["model"], row["exporter"]) for row in FILES.values()} == {(m, e) for m in MODELS for e in ("dynamo", "torchscript")}
    decomposed = [row for row in FILES.values() if row["opset"] < 17]
    assert decomposed and all({"ReduceMean", "Pow", "Sqrt", "Div"} <= set(row["op_types"]) for row in decomposed)
    assert all("LayerNormalization" not in row["op_types"] for row in decomposed)
    assert all({"Softmax", "MatMul"} <= set(row["op_types"]) for row in FILES.values() if row["model"] != "mlp_mixer")


@pytest.mark.parametrize("products", ["digital", "analog"])
@pytest.mark.parametrize("name", sorted(FILES))
def test_ideal_network_equals_onnxruntime(name, products):
    "Ideal hardware reproduces onnxruntime on fresh inputs (batch 5), attention products digital or on ideal arrays."
    x = _inputs(name, 5)
    expected = _reference(name, x)
    network = AnalogNetwork.from_onnx(FOLDER / name, InferenceConfig.ideal().replace(attention_products=products))
    assert _relative(network.predict(x), expected) <= 1e-4
    written = [n for n in network.graph.analog_nodes if getattr(n.compute, "dynamic_products", None)]
    assert len(written) == (0 if products == "digital" or FILES[name]["model"] == "mlp_mixer" else
                            2 * sum(n.op_type == "Softmax" for n in onnx.load(str(FOLDER / name)).graph.node))


@pytest.mark.parametrize("name", sorted(FILES))
def test_8bit_every_weight_node_runs_on_a_core(name):
    "8-bit weights, DAC and ADC: one core per weight-bearing node, each read on every image (observer), output near ideal."
    row = FILES[name]
    x, expected = _sample(name)
    network = AnalogNetwork.from_onnx(FOLDER / name, EIGHT_BIT, calibration_data=_inputs(name, 16, seed=1))
    assert len(network.cores) == row["weight_nodes"] > 0
    seen = {}
    network.run(x, 2, observer=lambda core, tensor: seen.setdefault(core, tensor.shape))
    assert set(seen) == set(network.cores)
    assert all(shape[0] == len(x) for shape in seen.values())          # every core reads the batch on axis 0
    table = network.hw_config().set_index("layer")
    assert (table.loc[list(network.cores), "weight_bits"] == 8).all() and (table.loc[list(network.cores), "mvms_per_image"] > 0).all()
    error = _relative(network.predict(x), expected)
    assert 1e-5 < error < 0.5, error


@pytest.mark.parametrize("name", ["vit_prenorm_gelu_dynamo.onnx", "vit_postnorm_relu_torchscript.onnx", "text_transformer_dynamo.onnx"])
def test_in_projection_is_one_core(name):
    "nn.MultiheadAttention's in-projection is one (3·width, width) core read once per token."
    network = AnalogNetwork.from_onnx(FOLDER / name, InferenceConfig.ideal())
    tokens = 17 if name.startswith("vit") else 7
    shapes = [spec.matrix.shape for spec in network.specs.values()]
    layers = 2 if name.startswith("vit_prenorm") else 1
    assert shapes.count((48, 16)) == layers
    table = network.hw_config().set_index("layer")
    in_projections = [n for n, spec in network.specs.items() if spec.matrix.shape == (48, 16)]
    assert (table.loc[in_projections, "mvms_per_image"] == tokens).all()


@pytest.mark.parametrize("name", [VIT, "vit_postnorm_relu_torchscript.onnx", "text_transformer_dynamo.onnx", "text_transformer_torchscript.onnx"])
def test_read_noise_is_batch_independent_through_pytorch_layouts(name):
    """PyTorch's attention reads its projections as (tokens, batch, width) and (tokens·batch, width): the importer moves the batch
    to axis 0 around each core, so read noise, keyed per image, gives the same result at any batch size (token inputs too)."""
    x = _inputs(name, 6)
    config = InferenceConfig.ideal().replace(noise_model="generic", alpha_noise=0.05)
    network = AnalogNetwork.from_onnx(FOLDER / name, config)
    whole, pieces = network.predict(x, batch_size=6), network.predict(x, batch_size=4)
    np.testing.assert_array_equal(whole, pieces)
    assert _relative(whole, _reference(name, x)) > 1e-3                     # the noise is there


def test_analog_products_with_programming_error():
    "Products on written arrays with programming error: the output moves, identically at any batch size; hw_config counts the writes."
    x = _inputs(VIT, 6)
    config = EIGHT_BIT.replace(error_model="generic", alpha_error=0.05, attention_products="analog")
    digital = AnalogNetwork.from_onnx(FOLDER / VIT, config.replace(attention_products="digital"), calibration_data=x).predict(x)
    network = AnalogNetwork.from_onnx(FOLDER / VIT, config, calibration_data=x)
    whole, pieces = network.predict(x, batch_size=6), network.predict(x, batch_size=4)
    np.testing.assert_array_equal(whole, pieces)
    assert _relative(whole, digital) > 1e-3
    table = network.hw_config()
    written = table[table.type.str.contains("written per input") & (table.layer != "total")]
    assert len(written) == 4 and (written.writes_per_image == 2).all()            # 2 layers × (scores, context), 2 heads each
    assert (written.mvms_per_image == 2 * 17).all()


def _tiny_attention(mask_first=False):
    "x (N, 4, 3): scores x·xᵀ, softmax, context p·x (nodes 'qk', 'pv')."
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]), helper.make_node("MatMul", ["x", "xt"], ["s"], name="qk"),
             helper.make_node("Softmax", ["s"], ["p"]), helper.make_node("MatMul", ["p", "x"], ["y"], name="pv")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_broadcast_product_is_refused_by_name():
    "A product whose operands broadcast over a leading axis (one matrix read by every head) is not written per input: refused by name."
    nodes = [helper.make_node("MatMul", ["x", "m"], ["y"], name="shared")]
    graph = helper.make_graph(nodes, "b", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 3]),
                                           helper.make_tensor_value_info("m", TensorProto.FLOAT, ["N", 1, 3, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    config = InferenceConfig.ideal().replace(attention_products="analog")
    with pytest.raises(onnx_import.UnsupportedModelError, match="'shared'.*broadcasts.*attention_products='analog'"):
        AnalogNetwork.from_onnx(model, config)
    rng = np.random.default_rng(1)
    x, m = rng.standard_normal((3, 2, 4, 3)).astype(np.float32), rng.standard_normal((3, 1, 3, 5)).astype(np.float32)
    kept = AnalogNetwork.from_onnx(model, config, layer_overrides={"shared": "digital"})
    assert _relative(kept.predict([x, m]), x @ m) <= 1e-6


def test_product_overrides_per_node():
    "layer_overrides choose the products node by node: 'digital', or {'attention_products': 'analog'} on a digital model."
    model = _tiny_attention()
    kinds = lambda network: {n.layer_name: n.kind for n in network.graph.nodes if n.layer_name in ("qk", "pv")}
    analog = InferenceConfig.ideal().replace(attention_products="analog")
    assert kinds(AnalogNetwork.from_onnx(model, analog, layer_overrides={"qk": "digital"})) == {"qk": "digital", "pv": "analog"}
    chosen = AnalogNetwork.from_onnx(model, InferenceConfig.ideal(), layer_overrides={"qk": {"attention_products": "analog"}})
    assert kinds(chosen) == {"qk": "analog", "pv": "digital"}
    x = np.random.default_rng(2).standard_normal((3, 4, 3)).astype(np.float32)
    expected = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert _relative(chosen.predict(x), expected) <= 1e-5


def _attention_node_model(**attributes):
    "Q, K, V inputs (N, 2, 5, 3) into one opset-23 Attention node named 'sdpa'."
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 2, 5, 3]) for n in ("q", "k", "v")]
    node = helper.make_node("Attention", ["q", "k", "v"] + attributes.pop("extra_inputs", []), ["y"] + attributes.pop("extra_outputs", []),
                            name="sdpa", **attributes)
    graph = helper.make_graph([node], "a", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


@pytest.mark.parametrize("products", ["digital", "analog"])
def test_attention_node_equals_onnxruntime(products):
    "The opset-23 Attention node (causal, scaled) equals onnxruntime, its products digital or on ideal written arrays."
    model = _attention_node_model(is_causal=1, scale=0.4)
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((4, 2, 5, 3)).astype(np.float32) for _ in range(3))
    expected = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, dict(q=q, k=k, v=v))[0]
    network = AnalogNetwork.from_onnx(model, InferenceConfig.ideal().replace(attention_products=products))
    assert _relative(network.predict([q, k, v]), expected) <= 1e-5


@pytest.mark.parametrize("attributes, says", [(dict(extra_inputs=["", "", ""], extra_outputs=["present_k"]), "present_key"),
                                              (dict(softmax_precision=11), "softmax_precision=11")])
def test_attention_node_options_refused_before_work(attributes, says):
    "Options the simulator cannot run are refused by the support check, naming the node; 'digital' runs it in onnxruntime."
    model = _attention_node_model(**attributes)
    with pytest.raises(onnx_import.UnsupportedModelError, match=f"'sdpa'.*{says}"):
        onnx_import.check_support(model, "the model")


def test_pytorch_opset23_export_with_attention_node():
    "PyTorch's dynamo exporter at opset 23 writes one Attention node per layer: it imports, equals PyTorch, and runs 4 cores per layer."
    torch = pytest.importorskip("torch")
    from torch import nn
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0).eval()
    x = torch.randn(3, 5, 16)
    with torch.no_grad(): expected = layer(x).numpy()
    proto = onnx_import.export_torch(layer, x, exporter="dynamo", opset=23)
    assert "Attention" in {n.op_type for n in proto.graph.node}
    for products in ("digital", "analog"):
        network = AnalogNetwork.from_onnx(proto, InferenceConfig.ideal().replace(attention_products=products))
        assert _relative(network.predict(x.numpy()), expected) <= 1e-4
    assert len(AnalogNetwork.from_onnx(proto, EIGHT_BIT, calibration_data=x.numpy()).cores) == 4


def test_batch_layout_of_probe_tensors():
    "`batch_layout` tells image-by-image and interleaved merged axes apart, and a batch on a later axis."
    rng = np.random.default_rng(4)
    images = rng.standard_normal((3, 5, 2)).astype(np.float32)          # 3 images, 5 tokens, width 2
    major = lambda n: images[:n].reshape(n * 5, 2)                      # (batch·tokens, width)
    interleaved = lambda n: images[:n].transpose(1, 0, 2).reshape(5 * n, 2)   # (tokens·batch, width)
    assert onnx_import.batch_layout(major(2), major(3), (None, 2)) == (0, 5, True)
    assert onnx_import.batch_layout(interleaved(2), interleaved(3), (None, 2)) == (0, 5, False)
    seq_first = lambda n: images[:n].transpose(1, 0, 2)
    assert onnx_import.batch_layout(seq_first(2), seq_first(3), (5, None, 2)) == (1, 1, True)
    assert onnx_import.batch_layout(images[:2], images, (None, 5, 2)) is None
    forward, backward = onnx_import.batch_first_functions((0, 5, False))
    np.testing.assert_array_equal(forward(interleaved(3)), images)
    np.testing.assert_array_equal(backward(images), interleaved(3))


def test_attention_node_with_cache_kept_digital_runs_in_onnxruntime():
    "An Attention node with a key/value cache is refused; kept 'digital' it runs in onnxruntime and equals it."
    shapes = dict(q=["N", 2, 5, 3], k=["N", 2, 5, 3], v=["N", 2, 5, 3], past_k=["N", 2, 4, 3], past_v=["N", 2, 4, 3])
    node = helper.make_node("Attention", ["q", "k", "v", "", "past_k", "past_v"], ["y", "present_k", "present_v"], name="sdpa")
    graph = helper.make_graph([node], "cache", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in shapes.items()],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    with pytest.raises(onnx_import.UnsupportedModelError, match="(?s)'sdpa'.*key/value cache.*layer_overrides"):
        AnalogNetwork.from_onnx(model, InferenceConfig.ideal())
    rng = np.random.default_rng(6)
    feeds = {n: rng.standard_normal([3] + s[1:]).astype(np.float32) for n, s in shapes.items()}
    expected = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    network = AnalogNetwork.from_onnx(model, InferenceConfig.ideal().replace(attention_products="analog"), layer_overrides={"sdpa": "digital"})
    assert _relative(network.predict(list(feeds.values())), expected) <= 1e-6


def test_calibrated_adc_ranges_on_pytorch_vit():
    "calibrate_adc profiles every core of the exported ViT (batch moved to axis 0 first): calibrated 8-bit ADCs beat MAX ranges."
    from crosssim_nb.calibration import calibrate_adc
    calibration_images, x = _inputs(VIT, 48, seed=1), _inputs(VIT, 16, seed=2)
    expected = _reference(VIT, x)
    config = EIGHT_BIT.replace(attention_products="analog")
    errors = {}
    for option in ("MAX", "CALIBRATED"):
        limits = None
        if option == "CALIBRATED":
            profiling = AnalogNetwork.from_onnx(FOLDER / VIT, config.replace(adc_bits=0), calibration_data=calibration_images)
            limits = calibrate_adc(profiling, calibration_images, adc_bits=8)
        network = AnalogNetwork.from_onnx(FOLDER / VIT, config.replace(adc_range_option=option), adc_limits=limits,
                                          calibration_data=calibration_images)
        errors[option] = _relative(network.predict(x), expected)
    assert errors["CALIBRATED"] < min(0.1, errors["MAX"] / 2), errors
