"""The GPU (CuPy, `use_gpu=True`) against independent references and against the CPU: every read path of the core,
the keyed read noise, the ADC circuits, wire resistance and whole networks against Keras.

Each test runs twice: on CuPy where a CUDA GPU is usable (else skipped), and on `fake_cupy`, a CPU stand-in that keeps
CuPy's host/device rules (no implicit conversions either way, no NumPy-only kernels on device arrays), so that the GPU
code paths are exercised on every machine. Only the CuPy run says anything about a GPU. On a GPU machine:
`bash scripts/gpu_check.sh` (Keras on JAX works where TensorFlow is not installed: `KERAS_BACKEND=jax`).
"""
import json, sys
from pathlib import Path
import numpy as np
import pytest
import keras
from crosssim_nb import AnalogCore, InferenceConfig
from crosssim_nb.backend import gpu_available, gpu_status
import fake_cupy
from test_network import relative_error, geometry_zoo_model, grouped_model

REAL_GPU = gpu_available()
DATA = Path(__file__).parent / "data" / "analogcore"


@pytest.fixture(autouse=True, params=["cupy", "fake-cupy"])
def cupy_module(request, monkeypatch):
    "The array module `use_gpu=True` gets: CuPy on a usable GPU, or the CPU stand-in."
    if request.param == "cupy":
        if not REAL_GPU: pytest.skip("no usable CUDA GPU")
        import cupy
        yield cupy
        return
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    gpu_status.cache_clear()
    yield fake_cupy
    gpu_status.cache_clear()
EIGHT_BIT = dict(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX")


def assert_same_outputs(gpu, cpu, step=None):
    "GPU and CPU outputs: equal but where the order of float32 sums moved a value (by one ADC step where `step` is given)."
    gpu, cpu = np.asarray(gpu, np.float64), np.asarray(cpu, np.float64)
    assert gpu.shape == cpu.shape and np.isfinite(gpu).all()
    scale = np.abs(cpu).max()
    if step is None:
        assert relative_error(gpu, cpu) < 1e-5
        return
    apart = np.abs(gpu - cpu) > 1e-5 * scale
    assert apart.mean() < 2e-3, f"{apart.mean():.2%} of the outputs differ"
    assert np.abs(gpu - cpu).max() <= 1.01 * step * scale + 1e-6 * scale


@pytest.mark.parametrize("case", sorted(p.name for p in DATA.glob("*.npz")))
def test_worked_examples_on_the_gpu(case, cupy_module):
    "The worked examples (tests/data/analogcore, the same as test_core's) read on the GPU."
    z = np.load(DATA / case, allow_pickle=False)
    settings = json.loads(str(z["our_config"]))
    input_range = settings.pop("input_range")
    core = AnalogCore(z["W"], InferenceConfig(**settings, use_gpu=True), input_range=input_range)
    assert core.xp is cupy_module
    assert relative_error(core @ z["X"], z["Y_design"]) <= 1e-5


READ_PATHS = {   # settings over EIGHT_BIT; each reads a different way through the core
    "ideal": dict(weight_bits=0, dac_bits=0, adc_bits=0),
    "8-bit": dict(),
    "row-and-column-tiles": dict(nrows_max=64, ncols_max=16),
    "weight-slices": dict(nslices=2),
    "input-bit-slicing": dict(input_bitslicing=True, nrows_max=64),
    "input-bit-slicing-adc-per-bit": dict(input_bitslicing=True, adc_per_ibit=True, nrows_max=64),
    "offset": dict(style="OFFSET"),
    "offset-unit-column": dict(style="OFFSET", digital_offset=False),
    "pair": dict(subtract_current_in_xbar=False),
    "two-sided": dict(balanced_style="TWO_SIDED"),
    "current-limit": dict(icol_max=0.5),
    "analog-bias": dict(digital_bias=False),
    "programming-error": dict(error_model="generic", alpha_error=0.05),
    "sonos": dict(error_model="SONOS", noise_model="SONOS", rmin=35e3, vread=0.06, noise_variance_precision="float32"),
    "drift": dict(error_model="PCMLike", drift_model="PCMLike", t_drift=30.0, drift_compensation="global"),
    "sar-adc": dict(adc_type="sar", sigma_capacitor=0.02, sigma_comparator=0.001),
    "ramp-adc": dict(adc_type="ramp", sigma_capacitor=0.02),
    "pipeline-adc": dict(adc_type="pipeline", sigma_cpar=0.01, sigma_comparator=0.001),
    "stochastic-rounding": dict(stochastic_rounding=True),
}


@pytest.mark.parametrize("settings", READ_PATHS.values(), ids=READ_PATHS.keys())
def test_core_read_paths_match_the_cpu(settings, monkeypatch):
    """Programming is drawn on the CPU in both runs, so the GPU reads the same devices: the outputs match the CPU's.
    The CPU reads through the same general path as the GPU (its exact and integer fast paths off): a fast path's exact
    integer sums round an ADC input that sits exactly on a tie the other way than a float32 sum may, which in a
    weight slice is worth the slice's weight in levels (tests/test_core_fast_paths.py checks those against the
    general path, tie by tie)."""
    import crosssim_nb.core
    monkeypatch.setattr(crosssim_nb.core, "_FAST_PATHS", False)
    rng = np.random.default_rng(18)
    W = rng.normal(size=(48, 300)).astype(np.float32)
    b = rng.normal(size=48).astype(np.float32)
    x = rng.uniform(-1, 1, size=(300, 40)).astype(np.float32)
    config = InferenceConfig(**{**EIGHT_BIT, "nrows_max": 128, **settings})
    cpu = AnalogCore(W, config, bias=b) @ x
    gpu = AnalogCore(W, config.replace(use_gpu=True), bias=b) @ x
    assert_same_outputs(gpu, cpu, None if config.adc_bits == 0 else 2.0 ** -(config.adc_bits - 2))
    if config.adc_bits == 0 and config.error_model == "none": assert relative_error(gpu, W @ x + b[:, None]) < 1e-3


@pytest.mark.parametrize("method", ["output_domain", "exact"])
@pytest.mark.parametrize("dependence", ["proportional", "independent"])
def test_read_noise_is_the_cpu_noise(method, dependence):
    "Keyed draws: the GPU adds the CPU's noise to float32 rounding (the CPU's variance in float32, as the GPU's)."
    rng = np.random.default_rng(3)
    W, x = rng.normal(size=(40, 500)).astype(np.float32), rng.uniform(-1, 1, size=(500, 64)).astype(np.float32)
    config = InferenceConfig(**{**EIGHT_BIT, "adc_bits": 0}, nrows_max=256, noise_model="generic", alpha_noise=0.05,
                             noise_dependence=dependence, read_noise_method=method, noise_variance_precision="float32")
    cpu_core, gpu_core = AnalogCore(W, config), AnalogCore(W, config.replace(use_gpu=True))
    clean = AnalogCore(W, config.replace(noise_model="none", alpha_noise=0.0)) @ x
    cpu, gpu = cpu_core @ x, gpu_core @ x
    assert relative_error(cpu - clean, gpu - clean) < 1e-3           # the same noise, not merely the same size
    assert relative_error(gpu_core @ x - clean, gpu - clean) > 0.1    # a second read draws fresh noise


def test_keyed_draws_on_the_gpu_are_the_cpu_draws(cupy_module):
    cupy = cupy_module
    from crosssim_nb.keyed_noise import keyed_draws, keyed_draws_array, add_keyed_noise
    key = np.array([7, 11], dtype=np.uint64)
    for distribution in ("normal", "uniform"):
        cpu = keyed_draws(key, 2, 1000, 300, 37, distribution)
        gpu = keyed_draws_array(cupy, key, 2, 1000, 300, 37, distribution).get()
        np.testing.assert_allclose(gpu, cpu, rtol=1e-5, atol=1e-6)
    rng = np.random.default_rng(0)
    currents, variance = rng.normal(size=(2, 300, 37)).astype(np.float32), rng.uniform(0, 0.1, (2, 300, 37)).astype(np.float32)
    levels = np.array([16.0, -127, 127, 1 / 16.0], dtype=np.float32)
    cpu = add_keyed_noise(currents.copy(), variance, key, 2, 1000, "normal", levels)
    gpu = add_keyed_noise(cupy.asarray(currents), cupy.asarray(variance), key, 2, 1000, "normal", levels).get()
    assert np.mean(gpu != cpu) < 1e-3 and np.abs(gpu - cpu).max() <= 1 / 16.0 + 1e-6


@pytest.mark.parametrize("settings", [dict(), dict(nonlinear_iv="RRAMMilo", rmin=5e3, rmax=2e4, infinite_on_off_ratio=False), dict(interleaved_posneg=True),
                                      dict(current_from_input=False, input_bitslicing=True),
                                      dict(rp_row_terminal=50.0, rp_col_terminal=50.0, noise_model="generic", alpha_noise=0.02)],
                         ids=["resistor", "nonlinear-iv", "interleaved", "separate-source", "terminals+noise"])
def test_wire_resistance_on_the_gpu_is_the_cpu_solve(settings):
    rng = np.random.default_rng(5)
    W, x = rng.normal(size=(32, 96)).astype(np.float32), rng.uniform(-1, 1, size=(96, 16)).astype(np.float32)
    config = InferenceConfig(**{**EIGHT_BIT, "adc_bits": 0, "nrows_max": 64, "rp_row": 1.0, "rp_col": 1.0,
                                "noise_variance_precision": "float32", **settings})
    cpu = AnalogCore(W, config) @ x
    gpu = AnalogCore(W, config.replace(use_gpu=True)) @ x
    assert relative_error(gpu, cpu) < 1e-4
    assert relative_error(cpu, AnalogCore(W, config.replace(rp_row=0.0, rp_col=0.0, rp_row_terminal=0.0, rp_col_terminal=0.0,
                                                                    current_from_input=True)) @ x) > 1e-3   # the wires matter


def zoo_case(name, images):
    "A zoo model and random images through its preprocessing (no dataset needed on the GPU machine)."
    from crosssim_nb import zoo
    model, preprocess = zoo.load(name)
    pixels = np.random.default_rng(9).integers(0, 256, size=(images,) + tuple(model.input_shape[1:-1]), dtype=np.uint8)
    return model, preprocess(pixels)


def test_ideal_network_on_the_gpu_equals_keras():
    from crosssim_nb.network import AnalogNetwork
    model, x = zoo_case("fashion_mobilenet", 64)
    net = AnalogNetwork.from_keras(model, InferenceConfig.ideal(use_gpu=True))
    got, want = net.predict(x), model.predict(x, verbose=0)
    assert relative_error(got, want) < 1e-4 and (got.argmax(1) == want.argmax(1)).all()


def calibrated_on_the_cpu(model, x, config):
    "`config` with CALIBRATED ADC ranges and the limits a CPU percentile calibration on `x` gives: shared by a CPU and a GPU network, every ADC converts signals."
    from crosssim_nb.calibration import calibrate_adc
    from crosssim_nb.network import AnalogNetwork
    limits = calibrate_adc(AnalogNetwork.from_keras(model, config, calibration_data=x), x, method="percentile").adc_limits
    return config.replace(adc_range_option="CALIBRATED"), limits


@pytest.mark.parametrize("noise", [False, True], ids=["8-bit", "8-bit+read-noise"])
@pytest.mark.parametrize("name", ["fashion_resnet", "fashion_mobilenet"])
def test_network_on_the_gpu_matches_the_cpu(name, noise):
    "8-bit ADCs calibrated on the CPU (so every layer, depthwise ones too, converts real signals), read on both."
    from crosssim_nb.network import AnalogNetwork
    model, x = zoo_case(name, 300)
    config, limits = calibrated_on_the_cpu(model, x[:100], InferenceConfig(**EIGHT_BIT, noise_variance_precision="float32",
                                           **(dict(noise_model="generic", alpha_noise=0.02) if noise else {})))
    cpu_net = AnalogNetwork.from_keras(model, config, calibration_data=x[:100], adc_limits=limits)
    gpu_net = AnalogNetwork.from_keras(model, config.replace(use_gpu=True), calibration_data=x[:100], adc_limits=limits)
    cpu, gpu = cpu_net.predict(x), gpu_net.predict(x)
    assert (cpu.argmax(1) == gpu.argmax(1)).mean() >= 0.98       # (an ADC level moved by a float32 sum's order changes little)
    assert np.median(np.abs(gpu - cpu)) <= 1e-3 * np.abs(cpu).max()
    health = gpu_net.adc_health()
    assert len(health) and health["layer"].tolist() == cpu_net.adc_health()["layer"].tolist()
    assert (health["status"] != "mostly zero").all(), health       # the ADCs read signals, not a column of zeros


def test_calibrated_adc_on_the_gpu_is_the_cpu_calibration():
    "Profiling the ADC inputs (`adc_inputs`) and calibrating on the GPU: the CPU's limits."
    from crosssim_nb.calibration import calibrate_adc
    from crosssim_nb.network import AnalogNetwork
    model, x = zoo_case("fashion_resnet", 160)
    limits = {}
    for use_gpu in (False, True):
        profiled = AnalogNetwork.from_keras(model, InferenceConfig(**EIGHT_BIT, use_gpu=use_gpu), calibration_data=x[:96])
        limits[use_gpu] = calibrate_adc(profiled, x[:96], method="percentile").adc_limits
    assert limits[True].keys() == limits[False].keys()
    for layer in limits[False]: np.testing.assert_allclose(np.asarray(limits[True][layer]), np.asarray(limits[False][layer]), rtol=1e-4, atol=1e-7)


def conv1d_model():
    "Causal, dilated and strided 1-D convolutions (the 2-D engines on a height-1 image)."
    keras.utils.set_random_seed(4)
    inp = keras.Input((40, 3))
    x = keras.layers.Conv1D(6, 5, padding="causal", dilation_rate=2, activation="relu")(inp)
    x = keras.layers.Conv1D(8, 3, strides=2, padding="same")(x)
    return keras.Model(inp, keras.layers.Dense(3)(keras.layers.Flatten()(x)))


@pytest.mark.parametrize("settings", [dict(), dict(noise_model="generic", alpha_noise=0.02), dict(nrows_max=40, nslices=2),
                                      dict(input_bitslicing=True, nrows_max=40, noise_model="generic", alpha_noise=0.02)],
                         ids=["8-bit", "read-noise", "row-tiles-and-slices", "bit-slicing+noise"])
@pytest.mark.parametrize("build", [geometry_zoo_model, grouped_model, conv1d_model], ids=lambda build: build.__name__)
def test_every_convolution_geometry_on_the_gpu_matches_the_cpu(build, settings):
    "Same/valid, strides, dilation, depthwise, separable, grouped, ConvNeXt layers and 1-D convolutions, read on the GPU."
    from crosssim_nb.network import AnalogNetwork
    model = build()
    shape = tuple(model.input_shape[1:])
    x = np.random.default_rng(2).normal(size=(24,) + shape).astype(np.float32)
    ideal = AnalogNetwork.from_keras(model, InferenceConfig.ideal(use_gpu=True))
    assert relative_error(ideal.predict(x), model.predict(x, verbose=0)) < 1e-4
    config = InferenceConfig(**{**EIGHT_BIT, "adc_bits": 12, "noise_variance_precision": "float32", **settings})   # (fine ADC steps: a level moved by a float32 sum is small)
    cpu = AnalogNetwork.from_keras(model, config, calibration_data=x).predict(x)
    gpu = AnalogNetwork.from_keras(model, config.replace(use_gpu=True), calibration_data=x).predict(x)
    assert np.median(np.abs(gpu - cpu)) <= 1e-3 * np.abs(cpu).max() and relative_error(gpu, cpu) < 0.02


def one_convolution_case():
    "One 3×3 convolution: its im2col rows hold 9× the bytes of its input."
    keras.utils.set_random_seed(5)
    inputs = keras.Input((24, 24, 8))
    model = keras.Model(inputs, keras.layers.Conv2D(16, 3, padding="same")(inputs))
    return model, np.random.default_rng(5).normal(size=(16, 24, 24, 8)).astype(np.float32)


@pytest.mark.parametrize("case", ["one-convolution", "fashion_resnet", "fashion_mobilenet"])
def test_a_network_copies_its_input_to_the_gpu_once_and_its_output_back_once(case, cupy_module, monkeypatch):
    """Im2col rows are built on the GPU, and every layer between the input and the output runs there (convolutions,
    depthwise, ReLU, Add, padding, pooling): the host-device traffic of a batch is its input and its output, once each."""
    if cupy_module is not fake_cupy: pytest.skip("counts the stand-in's copies between host and device")
    from crosssim_nb.network import AnalogNetwork
    model, x = one_convolution_case() if case == "one-convolution" else zoo_case(case, 32)
    config, limits = calibrated_on_the_cpu(model, x, InferenceConfig(**EIGHT_BIT))
    net = AnalogNetwork.from_keras(model, config.replace(use_gpu=True), calibration_data=x, adc_limits=limits)
    to_device, to_host = [], []
    host_to_device, device_to_host = fake_cupy.asarray, fake_cupy.ndarray.get
    def counted_to_device(a, *args, **kwargs):
        if not isinstance(a, fake_cupy.ndarray): to_device.append(np.asarray(a).nbytes)
        return host_to_device(a, *args, **kwargs)
    def counted_to_host(self, *args, **kwargs):
        to_host.append(self.nbytes)
        return device_to_host(self, *args, **kwargs)
    monkeypatch.setattr(fake_cupy, "asarray", counted_to_device)
    monkeypatch.setattr(fake_cupy.ndarray, "get", counted_to_host)
    got = net.predict(x, batch_size=len(x))
    monkeypatch.undo()
    small = 64 * 1024                # (per-call constants: keys, ADC-health counters)
    assert x.nbytes <= sum(to_device) <= x.nbytes + small, f"{sum(to_device)} bytes to the device for a {x.nbytes}-byte input"
    assert got.nbytes <= sum(to_host) <= got.nbytes + small, f"{sum(to_host)} bytes to the host for a {got.nbytes}-byte output"
    cpu_net = AnalogNetwork.from_keras(model, config, calibration_data=x, adc_limits=limits)
    cpu = cpu_net.predict(x, batch_size=len(x))
    assert relative_error(got, cpu) < 1e-4
    assert (net.adc_health()["status"] != "mostly zero").all()     # (every layer converts signals, so the comparison means something)


def host_and_device_model():
    "Layers that run on the host in a GPU network (a swish activation, 'same' max pooling, an unfolded normalisation) between GPU ones."
    keras.utils.set_random_seed(6)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="first")(inputs)
    y = keras.layers.Conv2D(8, 3, padding="same", activation="swish", name="swish")(x)
    y = keras.layers.MaxPooling2D(3, strides=2, padding="same")(y)
    y = keras.layers.LayerNormalization()(y)
    x = keras.layers.Add()([keras.layers.Conv2D(8, 1, strides=2, name="skip")(x), y])
    x = keras.layers.AveragePooling2D(2)(keras.layers.ReLU()(x))
    x = keras.layers.GlobalMaxPooling2D()(keras.layers.Conv2D(6, 3, padding="same", name="digital")(x))
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(x))


def test_layers_on_the_host_and_on_the_gpu_mix():
    "Activations move to the host for the Keras layers and the layers kept digital, and back to the GPU after them."
    from crosssim_nb.network import AnalogNetwork
    model = host_and_device_model()
    x = np.random.default_rng(6).normal(size=(20, 12, 12, 3)).astype(np.float32)
    ideal = AnalogNetwork.from_keras(model, InferenceConfig.ideal(use_gpu=True), layer_overrides={"digital": "digital"})
    assert relative_error(ideal.predict(x), model.predict(x, verbose=0)) < 1e-4
    config = InferenceConfig(**{**EIGHT_BIT, "adc_bits": 12})
    cpu, gpu = (AnalogNetwork.from_keras(model, config.replace(use_gpu=use_gpu), calibration_data=x, layer_overrides={"digital": "digital"})
                for use_gpu in (False, True))
    gpu, cpu = gpu.predict(x), cpu.predict(x)
    assert np.median(np.abs(gpu - cpu)) <= 1e-3 * np.abs(cpu).max() and relative_error(gpu, cpu) < 0.02   # (as the geometries')


def test_monte_carlo_inference_on_the_gpu_is_the_cpu_run():
    "`run_inference` end to end (DAC profiling, ADC calibration, two programmed runs with errors and noise) on the GPU."
    from crosssim_nb.inference import run_inference
    model, x = zoo_case("mnist_cnn", 200)
    y = np.random.default_rng(4).integers(0, 10, len(x))
    config = InferenceConfig(**{**EIGHT_BIT, "adc_range_option": "CALIBRATED"}, error_model="generic", alpha_error=0.02,
                             noise_model="generic", alpha_noise=0.02, noise_variance_precision="float32")
    runs = {use_gpu: run_inference("mnist_cnn", (x, y), config.replace(use_gpu=use_gpu), ntest=200, nruns=2, progress=False,
                                   return_outputs=True, calibration_data=x[:100], adc_calibration="optimal")
            for use_gpu in (False, True)}
    cpu, gpu = runs[False], runs[True]
    assert gpu.outputs.shape == cpu.outputs.shape == (2, 200, 10) and not gpu.identical_runs
    assert (gpu.outputs.argmax(-1) == cpu.outputs.argmax(-1)).mean() >= 0.98
    assert np.abs(gpu.accuracies - cpu.accuracies).max() <= 0.02
    assert gpu.hw_config.equals(cpu.hw_config)
