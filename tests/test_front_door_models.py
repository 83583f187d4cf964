"""Issue 25, item 4: a user's own model through the front door (Keras or ONNX). A missing channel axis is added and an
ONNX model gets channels-first inputs (said in the result); `preprocess=` / `--preprocess`; the raw-pixel warning for
any model that does not rescale its input; `layer_overrides={name: "digital"}` for any Keras layer, mapped or not;
ONNX files and ONNX zoo entries dispatched to `from_onnx`; `.pt`/`.pth` refused unopened. References: Keras `predict`
and onnxruntime on the same inputs; CLI exit codes and messages."""
import os, pickle, subprocess, sys
from pathlib import Path
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
from crosssim_nb import InferenceConfig, AnalogNetwork
from crosssim_nb.data import load_dataset
from crosssim_nb.inference import run_inference, InputPreprocessing
from crosssim_nb.keras_import import UnsupportedLayerError

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MPLBACKEND": "Agg"}
SCRIPT = Path(sys.executable).parent / "crosssim-nb"
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "crosssim_nb.cli"]
IDEAL = InferenceConfig.ideal()
EIGHT_BIT = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX")
CALIBRATED = EIGHT_BIT.replace(adc_range_option="CALIBRATED")

def cli(*args, cwd=None):
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, env=ENV, timeout=600, cwd=cwd)

def close_to(actual, reference, tolerance=1e-4):
    "Equal to `tolerance` of the reference's largest magnitude."
    actual, reference = np.asarray(actual), np.asarray(reference)
    assert actual.shape == reference.shape, (actual.shape, reference.shape)
    error = float(np.max(np.abs(actual - reference)))
    assert error <= tolerance * float(np.max(np.abs(reference))), error

def own_cnn(rescale:bool=False, seed:int=0):
    "A researcher's own small CNN on (28, 28, 1) images, optionally rescaling its input itself."
    keras.utils.set_random_seed(seed)
    inp = keras.Input((28, 28, 1), name="pixels")
    x = keras.layers.Rescaling(1 / 255, name="rescale")(inp) if rescale else inp
    x = keras.layers.Conv2D(6, 3, activation="relu", name="conv")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flat")(x)
    return keras.Model(inp, keras.layers.Dense(10, name="head")(x), name="own_cnn")

@pytest.fixture(scope="module")
def mnist_test():
    return load_dataset("mnist", ntest=40)

# --- the failure: an own .keras CNN and (N, 28, 28) images ------------------------------------------------

def test_cli_runs_an_own_keras_cnn_on_grey_images(tmp_path):
    own_cnn().save(tmp_path / "my_cnn.keras")
    out = cli("run", "--model", "my_cnn.keras", "--dataset", "mnist", "--ntest", "30", "--calibration-samples", "30",
              "--preprocess", "scale_255", "--adc-bits", "8", "--adc-range-option", "MAX", "--no-progress", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "must have shape" not in out.stderr
    assert "input: preprocess scale_255 (x / 255); a channel axis added: (N, 28, 28) -> (N, 28, 28, 1)" in out.stdout

def test_channel_axis_and_standardize_equal_keras_predict(mnist_test):
    model = own_cnn()
    standardize = InputPreprocessing("standardize", mean=0.1307, std=0.3081)
    result = run_inference(model, "mnist", IDEAL, ntest=40, preprocess=standardize, return_outputs=True, progress=False)
    reference = model.predict(((mnist_test.x / 255.0 - 0.1307) / 0.3081)[..., None].astype(np.float32), verbose=0)
    close_to(result.float_outputs, reference, 1e-6)
    close_to(result.outputs[0], reference)
    assert result.input_note == "preprocess standardize ((x / 255 - 0.1307) / 0.3081); a channel axis added: (N, 28, 28) -> (N, 28, 28, 1)"
    assert f"  input: {result.input_note}" in str(result) and result.summary()["input"] == result.input_note

def test_explicit_preprocess_applies_to_arrays_and_calibration_data(mnist_test):
    model = own_cnn()
    result = run_inference(model, (mnist_test.x, mnist_test.y), EIGHT_BIT, preprocess="scale_255", calibration_data=mnist_test.x,
                           return_outputs=True, progress=False)
    assert result.calibration == "profiled on 40 given calibration images"
    x = (mnist_test.x / np.float32(255))[..., None]
    reference = AnalogNetwork.from_keras(model, EIGHT_BIT, calibration_data=x).predict(x)
    close_to(result.outputs[0], reference, 1e-6)                       # same DAC ranges: the raw calibration images were scaled too
    assert not np.allclose(result.outputs[0], model.predict(x, verbose=0), atol=1e-4)   # and 8-bit hardware differs from float

def test_bad_preprocess_values_are_refused_before_any_work():
    with pytest.raises(ValueError, match="preprocess='scale' is not allowed; allowed: 'none', 'scale_255', 'standardize'"):
        run_inference("no_such_model", "mnist", IDEAL, preprocess="scale")
    with pytest.raises(ValueError, match="needs mean and std"):
        run_inference("no_such_model", "mnist", IDEAL, preprocess="standardize")
    with pytest.raises(TypeError, match="preprocess must be None"):
        run_inference("no_such_model", "mnist", IDEAL, preprocess=255)
    out = cli("run", "--model", "mnist_mlp", "--preprocess", "standardize", "--mean", "0.1")
    assert out.returncode == 2 and "--preprocess standardize needs --mean and --std" in out.stderr
    out = cli("run", "--model", "mnist_mlp", "--std", "0.3")
    assert out.returncode == 2 and "--mean/--std go with --preprocess standardize" in out.stderr

# --- raw 0-255 pixels into any model --------------------------------------------------------------------------------

RAW = "raw 0-255 images?"

def test_raw_pixels_warn_for_any_model_unless_it_rescales(mnist_test):
    plain = run_inference(own_cnn(), "mnist", IDEAL, ntest=20, progress=False)
    assert any(RAW in text and "no Rescaling or Normalization layer" in text for text in plain.warnings), plain.warnings
    scaled = run_inference(own_cnn(rescale=True), "mnist", IDEAL, ntest=20, progress=False)
    assert not any(RAW in text for text in scaled.warnings), scaled.warnings
    preprocessed = run_inference(own_cnn(), "mnist", IDEAL, ntest=20, preprocess="scale_255", progress=False)
    assert preprocessed.warnings == ()
    twice = run_inference(own_cnn(), (mnist_test.x[:20] / 255.0, mnist_test.y[:20]), IDEAL, preprocess="scale_255", progress=False)
    assert any("expects raw pixel values 0-255, but the images' maximum is 1: are they already preprocessed?" in text
               for text in twice.warnings), twice.warnings
    arrays = run_inference(own_cnn(), (mnist_test.x[:20], mnist_test.y[:20]), IDEAL, progress=False)   # arrays too
    assert any(RAW in text for text in arrays.warnings)

# --- layer_overrides 'digital' for any Keras layer ---------------------------------------------------------------------

def recurrent_model():
    "A model with layers the importer cannot map: a GroupNormalization and a UnitNormalization between analog Dense layers."
    keras.utils.set_random_seed(1)
    inp = keras.Input((6, 5), name="sequence")
    x = keras.layers.GroupNormalization(5, name="norm")(inp)
    x = keras.layers.Dense(8, name="dense")(x)
    x = keras.layers.UnitNormalization(name="unit")(x)
    x = keras.layers.Flatten(name="flat")(x)
    return keras.Model(inp, keras.layers.Dense(4, name="head")(x), name="recurrent")

DIGITAL = {"norm": "digital", "unit": "digital"}

def test_unsupported_layers_refused_with_the_override_spelled_out(tmp_path):
    model = recurrent_model()
    with pytest.raises(UnsupportedLayerError, match='layer_overrides=\\{"norm": "digital", "unit": "digital"\\}'):
        AnalogNetwork.from_keras(model, IDEAL)
    model.save(tmp_path / "recurrent.keras")
    with pytest.raises(UnsupportedLayerError, match='checked before loading(.|\\n)*layer_overrides=\\{"unit": "digital"\\}'):
        AnalogNetwork.from_keras(tmp_path / "recurrent.keras", IDEAL, layer_overrides={"norm": "digital"})
    with pytest.raises(ValueError, match="'nrom' is not an analog layer, nor any layer, of this model; did you mean 'norm'"):
        AnalogNetwork.from_keras(model, IDEAL, layer_overrides={**DIGITAL, "nrom": "digital"})

def test_digital_overrides_run_any_keras_layer_exactly(tmp_path):
    model = recurrent_model()
    x = np.random.default_rng(0).normal(size=(32, 6, 5)).astype(np.float32)
    reference = model.predict(x, verbose=0)
    ideal = AnalogNetwork.from_keras(model, IDEAL, layer_overrides=DIGITAL)
    close_to(ideal.predict(x), reference)
    assert sorted(ideal.cores) == ["dense", "head"]                  # the mapped layers are still on crossbars
    kinds = {n.name: (n.kind, n.layer_type) for n in ideal.graph.nodes}
    assert kinds["norm"] == ("digital", "GroupNormalization") and kinds["unit"] == ("digital", "UnitNormalization")
    model.save(tmp_path / "recurrent.keras")                         # through the front door, from the file
    labels = np.arange(32) % 4
    result = run_inference(str(tmp_path / "recurrent.keras"), (x, labels), EIGHT_BIT, layer_overrides=DIGITAL,
                           calibration_data=x, return_outputs=True, progress=False)
    close_to(result.float_outputs, reference, 1e-6)
    assert not np.allclose(result.outputs[0], reference, atol=1e-3)  # the Dense layers run on 8-bit hardware
    close_to(result.outputs[0], reference, 0.1)
    everything = run_inference(str(tmp_path / "recurrent.keras"), (x, labels), EIGHT_BIT, calibration_data=x, return_outputs=True,
                               layer_overrides={**DIGITAL, "dense": "digital", "head": "digital", "flat": "digital"}, progress=False)
    close_to(everything.outputs[0], reference)                       # every layer digital: Keras' numbers

# --- PyTorch pickles: refused, never opened ------------------------------------------------------------------------------

class _RunsCode:
    "Unpickling this writes a marker file: what loading a hostile .pt file would do."
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (Path.write_text, (Path(self.marker), "opened"))

@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_torch_pickles_are_refused_without_being_opened(tmp_path, suffix):
    marker, path = tmp_path / "marker.txt", tmp_path / f"model{suffix}"
    path.write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(ValueError) as caught:
        run_inference(str(path), "mnist", IDEAL, ntest=5, progress=False)
    message = str(caught.value)
    assert "never loaded" in message and "torch.onnx.export(module, " in message and "AnalogNetwork.from_torch" in message
    out = cli("run", "--model", str(path), "--dataset", "mnist")
    assert out.returncode == 2 and "is a PyTorch/pickle file" in out.stderr and "torch.onnx.export(" in out.stderr
    assert not marker.exists()

# --- ONNX models through run_inference, the CLI and the zoo ----------------------------------------------------------------

import onnx
from onnx import helper, numpy_helper, TensorProto

def onnx_cnn(channels:int=1, size:int=28, outputs:int=10, divide:bool=False, seed:int=0):
    "A small channels-first CNN written with onnx.helper: [Div by 255,] Conv, Relu, MaxPool, Flatten, Gemm."
    rng = np.random.default_rng(seed)
    conv_w = rng.normal(0, 0.3, size=(4, channels, 3, 3)).astype(np.float32)
    pooled = 4 * ((size - 2) // 2) ** 2
    gemm_w = rng.normal(0, 0.1, size=(outputs, pooled)).astype(np.float32)
    nodes, first = [], "image"
    if divide: nodes.append(helper.make_node("Div", ["image", "k255"], ["scaled"])); first = "scaled"
    nodes += [helper.make_node("Conv", [first, "conv_w", "conv_b"], ["conv"], name="conv", kernel_shape=[3, 3]),
              helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
              helper.make_node("MaxPool", ["relu"], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
              helper.make_node("Flatten", ["pool"], ["flat"], name="flat"),
              helper.make_node("Gemm", ["flat", "gemm_w", "gemm_b"], ["scores"], name="head", transB=1)]
    weights = [numpy_helper.from_array(conv_w, "conv_w"), numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "conv_b"),
               numpy_helper.from_array(gemm_w, "gemm_w"), numpy_helper.from_array(rng.normal(0, 0.1, outputs).astype(np.float32), "gemm_b"),
               numpy_helper.from_array(np.array(255, np.float32), "k255")]
    graph = helper.make_graph(nodes, "onnx_cnn", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", channels, size, size])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", outputs])], weights[:4] + weights[4:] * divide)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model

def onnxruntime_outputs(model, x):
    import onnxruntime
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": np.ascontiguousarray(x, dtype=np.float32)})[0]

def test_onnx_file_on_grey_images_equals_onnxruntime(tmp_path, mnist_test):
    model = onnx_cnn()
    onnx.save(model, tmp_path / "cnn.onnx")
    result = run_inference(str(tmp_path / "cnn.onnx"), "mnist", IDEAL, ntest=40, preprocess="scale_255", return_outputs=True, progress=False)
    reference = onnxruntime_outputs(model, (mnist_test.x / np.float32(255))[:, None])
    close_to(result.float_outputs, reference, 1e-6)
    close_to(result.outputs[0], reference)
    assert result.model_name == "cnn" and result.float_runtime == "onnxruntime"
    assert "a channel axis added: (N, 28, 28) -> (N, 1, 28, 28) (channels first, as ONNX models take their inputs)" in result.input_note
    assert "ms/image onnxruntime" in str(result)

def test_onnx_model_gets_channels_last_images_transposed_and_says_so():
    model = onnx_cnn(channels=3, size=8, outputs=4, seed=1)
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 256, size=(24, 8, 8, 3)).astype(np.uint8), rng.integers(0, 4, 24)
    result = run_inference(model, (x, y), IDEAL, preprocess="scale_255", return_outputs=True, progress=False)
    reference = onnxruntime_outputs(model, np.moveaxis(x / np.float32(255), -1, 1))
    close_to(result.outputs[0], reference)
    note = "transposed for the ONNX model: channels-last (N, 8, 8, 3) -> channels-first (N, 3, 8, 8)"
    assert note in result.input_note and note in str(result) and note in result.summary()["input"]
    eight_bit = run_inference(model, (x, y), CALIBRATED, preprocess="scale_255", calibration_data=x, adc_calibration="optimal",
                              return_outputs=True, progress=False)
    assert len(eight_bit.hw_config) == 3                              # one core per weight-bearing node (Conv, Gemm) + the totals row
    assert not np.allclose(eight_bit.outputs[0], reference, atol=1e-4)
    close_to(eight_bit.outputs[0], reference, 0.1)

def test_raw_pixels_into_onnx_models_warn_unless_the_graph_divides(mnist_test):
    data = (mnist_test.x[:20], mnist_test.y[:20])
    plain = run_inference(onnx_cnn(), data, IDEAL, progress=False)
    assert any(RAW in text and "no Div or Mul by a constant right after its input" in text for text in plain.warnings), plain.warnings
    divided = onnx_cnn(divide=True)
    quiet = run_inference(divided, data, IDEAL, return_outputs=True, progress=False)
    assert not any(RAW in text for text in quiet.warnings), quiet.warnings
    close_to(quiet.outputs[0], onnxruntime_outputs(divided, mnist_test.x[:20, None].astype(np.float32)))

def test_cli_runs_and_calibrates_an_onnx_file(tmp_path):
    onnx.save(onnx_cnn(), tmp_path / "cnn.onnx")
    out = cli("calibrate", "--model", "cnn.onnx", "--dataset", "mnist", "--preprocess", "scale_255", "--adc-bits", "6",
              "--calibration-samples", "40", "--output", "limits.json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "limits.json").is_file()
    out = cli("run", "--model", "cnn.onnx", "--dataset", "mnist", "--preprocess", "scale_255", "--ntest", "30", "--adc-bits", "6",
              "--adc-limits", "limits.json", "--no-progress", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "input: preprocess scale_255 (x / 255); a channel axis added: (N, 28, 28) -> (N, 1, 28, 28)" in out.stdout
    assert "ms/image onnxruntime" in out.stdout and "ADC ranges: from the limits file" in out.stdout
    (tmp_path / "cut.onnx").write_bytes((tmp_path / "cnn.onnx").read_bytes()[:100])       # a truncated file: one line, exit 2
    out = cli("run", "--model", "cut.onnx", "--dataset", "mnist", cwd=tmp_path)
    assert out.returncode == 2 and "cut.onnx" in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]

def test_zoo_onnx_entry_dispatches_to_from_onnx(monkeypatch, mnist_test):
    "A manifest entry with format 'onnx' (zoo.load gives an onnx.ModelProto): run_inference imports it with from_onnx."
    from crosssim_nb import zoo
    model, manifest = onnx_cnn(seed=3), zoo.read_manifest()
    entry = dict(dataset="mnist", format="onnx", file="tiny.onnx", input_shape=[1, 28, 28], input_range=[0.0, 1.0],
                 preprocessing="scale_255", float_accuracy=0.1, parameters=0, file_bytes=0, description="test")
    manifest["models"]["tiny_onnx"] = entry
    monkeypatch.setattr(zoo, "read_manifest", lambda path=None: manifest)
    monkeypatch.setattr(zoo, "load", lambda name: zoo.ZooModel(model, zoo.Preprocessing("scale_255", (28, 28, 1)), name, entry))
    result = run_inference("tiny_onnx", "mnist", IDEAL, ntest=40, return_outputs=True, progress=False)
    close_to(result.outputs[0], onnxruntime_outputs(model, (mnist_test.x / np.float32(255))[:, None]))
    assert result.float_runtime == "onnxruntime" and not result.warnings

def zoo_onnx_names() -> list:
    from crosssim_nb import zoo
    return [name for name, entry in zoo.read_manifest()["models"].items() if entry.get("format") == "onnx"]

@pytest.mark.parametrize("name", zoo_onnx_names() or [pytest.param("none", marks=pytest.mark.skip(reason="no ONNX zoo entry yet"))])
def test_zoo_onnx_models_run_through_the_front_door(name):
    "Its own preprocessing, transposed for the ONNX graph: the ideal network equals onnxruntime, which is as accurate as recorded."
    from crosssim_nb import zoo
    assert isinstance(zoo.load(name).model, onnx.ModelProto)
    entry = zoo.info(name)
    result = run_inference(name, entry["dataset"], IDEAL, ntest=200, return_outputs=True, progress=False)
    close_to(result.outputs[0], result.float_outputs)
    assert result.float_runtime == "onnxruntime" and not result.warnings, result.warnings
    assert abs(result.float_accuracy[0] - entry["float_accuracy"]) < 0.06

def test_cli_keeps_unmapped_layers_digital_with_the_digital_flag(tmp_path, mnist_test):
    """An LSTM reading MNIST row by row after a GroupNormalization: refused with the flag spelled out; with --digital it runs (the
    LSTM on cores), calibrates and equals Keras."""
    keras.utils.set_random_seed(2)
    inp = keras.Input((28, 28), name="rows")
    normalized = keras.layers.GroupNormalization(4, name="norm")(inp)
    model = keras.Model(inp, keras.layers.Dense(10, name="head")(keras.layers.LSTM(16, name="lstm")(normalized)), name="row_lstm")
    model.save(tmp_path / "row_lstm.keras")
    common = ["--model", "row_lstm.keras", "--dataset", "mnist", "--preprocess", "scale_255", "--calibration-samples", "40"]
    refused = cli("run", *common, cwd=tmp_path)
    assert refused.returncode == 2 and "(command line: --digital norm)" in refused.stderr, refused.stderr[-2000:]
    ideal = ["--weight-bits", "0", "--dac-bits", "0", "--adc-bits", "0", "--nrows-max", "0"]
    out = cli("run", *common, "--digital", "norm", "--ntest", "40", *ideal, "--save-outputs", "out.npy", "--no-progress", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    close_to(np.load(tmp_path / "out.npy")[0], model.predict(mnist_test.x / np.float32(255), verbose=0))
    out = cli("calibrate", *common, "--digital", "norm", "--adc-bits", "6", "--output", "limits.json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    out = cli("run", *common, "--digital", "norm", "--ntest", "20", "--adc-bits", "6", "--adc-limits", "limits.json", "--no-progress",
              cwd=tmp_path)
    assert out.returncode == 0 and "ADC ranges: from the limits file" in out.stdout, out.stderr[-3000:]
