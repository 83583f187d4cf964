"""Models written in PyTorch and exported to ONNX by both torch.onnx exporters, imported with `AnalogNetwork.from_onnx`.

The files, their sample inputs and onnxruntime's outputs are committed under tests/data/onnx/torch/ (made by
nbs/56_torch_models.ipynb), so these tests need no PyTorch: onnxruntime on the same file is the independent reference.
Only `test_from_torch_module` needs torch (skipped without it).
"""
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest

from crosssim_nb import InferenceConfig
from crosssim_nb.network import AnalogNetwork

onnx_import = pytest.importorskip("crosssim_nb.onnx_import", reason="the ONNX importer (nbs/41_onnx_import.ipynb) is not built")

FOLDER = Path(__file__).parent / "data" / "onnx" / "torch"
MANIFEST = json.loads((FOLDER / "manifest.json").read_text())
FILES = {row["file"]: row for row in MANIFEST["files"]}
RECURRENT_OPS = {"LSTM", "GRU", "RNN"}   # their models run several cores per node: tests/test_recurrent_onnx.py counts those
WEIGHTED = sorted(name for name, row in FILES.items() if row["weight_nodes"] and not RECURRENT_OPS & set(row["op_types"]))
WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum"}


def _sample(row):
    "The committed sample inputs (a list, one per model input) and onnxruntime's output."
    sample = np.load(FOLDER / row["reference"], allow_pickle=False)
    return [sample[f"input_{i}"] for i in range(len(row["input_shapes"]))], sample["output_0"]


def _inputs(x):
    return x[0] if len(x) == 1 else x


def _relative_error(got, expected):
    return float(np.abs(np.asarray(got, np.float64) - expected).max() / max(np.abs(expected).max(), 1e-30))


def weight_bearing_nodes(model: onnx.ModelProto) -> list:
    "Conv/ConvTranspose/Gemm nodes, and MatMul/Einsum with a constant (initializer or Constant) operand: the analog cores' nodes."
    constants = {i.name for i in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type in WEIGHT_OPS
            and (n.op_type not in ("MatMul", "Einsum") or any(i in constants for i in n.input))]


def test_committed_files_are_complete_and_small():
    "Every listed file is there with its checksum; nothing unlisted; both exporters and all architectures present; < 3 MB."
    listed = set(FILES) | {row["reference"] for row in FILES.values()} | {"manifest.json"}
    assert {p.name for p in FOLDER.iterdir()} == listed
    for name, row in FILES.items():
        assert hashlib.sha256((FOLDER / name).read_bytes()).hexdigest() == row["sha256"], name
    assert sum(p.stat().st_size for p in FOLDER.iterdir()) < 3_000_000
    architectures = {"resnet", "resnet_unoptimized", "mobilenet_block", "grouped_dilated", "unet", "conv1d_model", "conv3d_model"}
    for exporter in ("dynamo", "torchscript"):
        assert architectures <= {row["model"] for row in FILES.values() if row["exporter"] == exporter}
    assert {row["opset"] for row in FILES.values()} >= {11, 13, 17}
    assert any(n.op_type == "BatchNormalization" for n in onnx.load(str(FOLDER / "resnet_unoptimized_dynamo.onnx")).graph.node)


@pytest.mark.parametrize("name", sorted(FILES))
def test_ideal_network_equals_onnxruntime(name):
    "The ideal analog network reproduces onnxruntime on the committed sample, to 1e-4 of max|output|."
    row = FILES[name]
    x, expected = _sample(row)
    got = onnxruntime.InferenceSession(str(FOLDER / name), providers=["CPUExecutionProvider"]).run(
        None, {f"x{i}": v for i, v in enumerate(x)})[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6 * max(np.abs(expected).max(), 1))  # the reference holds
    network = AnalogNetwork.from_onnx(FOLDER / name, InferenceConfig.ideal())
    output = network.predict(_inputs(x))
    assert np.shape(output) == expected.shape
    assert _relative_error(output, expected) <= 1e-4, (name, row["covers"])


@pytest.mark.filterwarnings("ignore::crosssim_nb.adc_health.ADCHealthWarning")  # MAX ranges on random weights: expected
@pytest.mark.parametrize("name", WEIGHTED)
def test_8bit_network_runs_one_core_per_weight_node(name):
    "8-bit weights, DAC and ADC: one analog core per weight-bearing node, and the output differs from ideal but stays close."
    row = FILES[name]
    x, expected = _sample(row)
    model = onnx.load(str(FOLDER / name))
    rng = np.random.default_rng(0)
    calibration = [rng.integers(0, int(v.max()) + 1, size=(16,) + v.shape[1:]).astype(v.dtype) if np.issubdtype(v.dtype, np.integer)
                   else rng.standard_normal((16,) + v.shape[1:]).astype(np.float32) for v in x]   # (token indices stay indices)
    config = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX")
    network = AnalogNetwork.from_onnx(model, config, calibration_data=_inputs(calibration))
    assert len(network.cores) == len(weight_bearing_nodes(model)) == row["weight_nodes"], (name, list(network.cores))
    error = _relative_error(network.predict(_inputs(x)), expected)
    assert 1e-5 < error < 0.5, (name, error)


def test_from_torch_module():
    "`AnalogNetwork.from_torch` on a small module equals the module itself (ideal), and runs one core per Conv/Linear."
    torch = pytest.importorskip("torch")
    from torch import nn
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                           nn.Flatten(), nn.Linear(4 * 4 * 4, 5)).eval()
    with torch.no_grad():
        module[1].running_mean.normal_(); module[1].running_var.uniform_(0.5, 2)
        x = torch.randn(3, 3, 8, 8)
        expected = module(x).numpy()
    network = AnalogNetwork.from_torch(module, x, InferenceConfig.ideal())
    assert len(network.cores) == 2
    assert _relative_error(network.predict(x.numpy()), expected) <= 1e-4


ZOO_NAME = "fashion_resnet_torch"


def _zoo_model():
    from crosssim_nb import zoo
    if ZOO_NAME not in zoo.read_manifest()["models"]:
        pytest.skip(f"{ZOO_NAME} is not in the zoo (train it with nbs/55_zoo_training.ipynb)")
    return zoo, zoo.load(ZOO_NAME)


def test_zoo_torch_model_is_onnx_and_matches_its_record():
    "The PyTorch-born zoo model loads as an onnx.ModelProto that remembers its name, and its file matches the manifest."
    from collections import Counter
    zoo, (model, preprocess) = _zoo_model()
    entry = zoo.info(ZOO_NAME)
    assert isinstance(model, onnx.ModelProto) and zoo.origin(model) == ZOO_NAME
    assert entry["format"] == "onnx" and entry["input_layout"] == "channels_first" and zoo.model_format(ZOO_NAME) == "onnx"
    assert dict(Counter(node.op_type for node in model.graph.node)) == entry["onnx_op_types"]
    dims = [d.dim_value or None for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [None] + entry["input_shape"] == [None, 1, 28, 28]
    assert preprocess(np.zeros((2, 28, 28), np.uint8)).shape == (2, 1, 28, 28)
    assert zoo.list_models().loc[ZOO_NAME, "format"] == "onnx"
    assert entry["float_accuracy"] >= 0.90


def test_zoo_torch_model_ideal_network_equals_onnxruntime():
    "On 64 test images the ideal analog network equals onnxruntime on the zoo's ONNX file, and both classify well."
    from crosssim_nb.data import load_dataset
    zoo, (model, preprocess) = _zoo_model()
    try:
        x, y = load_dataset("fashion_mnist", ntest=64)
    except FileNotFoundError as error:
        pytest.skip(f"dataset not installed: {str(error).splitlines()[0]}")
    images = preprocess(x)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: images})[0]
    network = AnalogNetwork.from_onnx(model, InferenceConfig.ideal())
    assert network.input_layout == "channels_first"
    assert _relative_error(network.predict(images), expected) <= 1e-4
    assert np.mean(expected.argmax(1) == y) >= 0.8
