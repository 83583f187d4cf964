"""ADC calibration: the optimiser against brute force, limits files, profiles, slices, widgets."""
import numpy as np
import pytest
import keras
from crosssim_nb import InferenceConfig
from crosssim_nb.network import AnalogNetwork
from crosssim_nb.calibration import (Reservoir, optimal_range, percentile_range, max_range_of, range_error, calibrate_adc,
                                     profile_adc_inputs, Calibration, ADCProfile, adc_viewer, plot_adc_histogram, adc_statistics)

def brute_force_high(values, bits, lower=None):
    "Independent reference: the best upper limit on a dense linear grid."
    top = float(np.abs(values).max()) if lower is None else float(values.max())
    grid = np.linspace(top / 200, top, 2000)
    errors = [range_error(values, ((-h, h) if lower is None else (lower, h)), bits) for h in grid]
    return grid[int(np.argmin(errors))], min(errors)

@pytest.mark.parametrize("distribution", ["normal", "laplace"])
@pytest.mark.parametrize("bits", [3, 5, 8])
def test_optimal_range_finds_the_known_optimum(distribution, bits):
    values = getattr(np.random.default_rng(bits), distribution)(size=100_000).astype(np.float32)
    low, high = optimal_range(values, bits)
    best_high, best_error = brute_force_high(values, bits)
    assert low == -high
    assert range_error(values, (low, high), bits) <= best_error * 1.01       # as good as brute force (1 %)
    assert abs(high - best_high) < 0.1 * best_high or range_error(values, (low, high), bits) <= best_error
    for other in (max_range_of(values), percentile_range(values, 99.99), percentile_range(values, 99.9), percentile_range(values, 99)):
        assert range_error(values, (low, high), bits) <= range_error(values, other, bits) + 1e-12

def test_known_gaussian_optimum():
    "Uniform quantiser on N(0,1): the MSE-optimal clipping grows with bits (about 2.5 sigma at 4 bits, 3.5 at 8)."
    values = np.random.default_rng(0).normal(size=200_000).astype(np.float32)
    highs = [optimal_range(values, bits)[1] for bits in (4, 6, 8)]
    assert 2.0 < highs[0] < 3.0 and highs[0] < highs[1] < highs[2] < 4.3

def test_relu_aware_range_keeps_the_lower_limit():
    values = np.random.default_rng(1).normal(loc=1.0, size=50_000).astype(np.float32)
    values = values[values > -0.3]
    low, high = optimal_range(values, 5, lower=float(values.min()))
    assert low == pytest.approx(float(values.min())) and high > 1.0
    low, high = optimal_range(np.abs(values), 5)                           # non-negative data: [0, hi]
    assert low == 0.0

def test_reservoir_is_a_uniform_sample():
    rng = np.random.default_rng(2)
    reservoir = Reservoir(capacity=2000, rng=np.random.default_rng(3))
    stream = rng.normal(size=200_000)
    for chunk in np.array_split(stream, 50): reservoir.add(chunk)
    assert reservoir.values.size == 2000 and reservoir.count == 200_000
    assert reservoir.maximum == pytest.approx(stream.max()) and reservoir.minimum == pytest.approx(stream.min())
    from scipy import stats
    assert stats.ks_2samp(reservoir.values, stream).pvalue > 1e-3

@pytest.fixture(scope="module")
def small_network():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((10, 10, 1)), keras.layers.Conv2D(6, 3, name="conv"), keras.layers.ReLU(name="relu"),
                              keras.layers.Flatten(), keras.layers.Dense(12, activation="relu", name="hidden"),
                              keras.layers.Dense(3, name="out")])
    images = np.random.default_rng(0).random((120, 10, 10, 1)).astype(np.float32)
    return model, images

def test_calibrated_limits_beat_max_and_round_trip(small_network, tmp_path):
    model, images = small_network
    config = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=5, adc_range_option="MAX", nrows_max=64)
    net = AnalogNetwork.from_keras(model, config, calibration_data=images[:60], input_nonnegative=True)
    calibration = calibrate_adc(net, images[:60], method="optimal")
    exact = model.predict(images[60:], verbose=0)
    calibrated = AnalogNetwork.from_keras(model, config.replace(adc_range_option="CALIBRATED"), input_nonnegative=True,
                                          input_ranges=calibration.input_ranges, adc_limits=calibration.adc_limits)
    assert np.abs(calibrated.predict(images[60:]) - exact).mean() < 0.5 * np.abs(net.predict(images[60:]) - exact).mean()
    path = calibration.save(tmp_path / "limits.yaml")
    loaded = Calibration.load(path)
    assert loaded.adc_limits == calibration.adc_limits and loaded.input_ranges == calibration.input_ranges
    loaded.check(net)
    with pytest.raises(ValueError) as info: loaded.check(net, config.replace(nslices=2, nrows_max=32, dac_bits=6))
    for setting in ("nslices: limits made for 1", "nrows_max: limits made for 64, config has 32", "dac_bits: limits made for 8, config has 6"):
        assert setting in str(info.value)
    other = keras.models.clone_model(model); other.set_weights([w * 1.01 for w in model.get_weights()])
    other_net = AnalogNetwork.from_keras(other, config, calibration_data=images[:60])
    with pytest.raises(ValueError, match="model weights differ"): loaded.check(other_net)
    with pytest.raises(ValueError, match="not a crosssim_nb limits file"):
        (tmp_path / "bad.json").write_text("{}"); Calibration.load(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="limits file not found"): Calibration.load(tmp_path / "missing.json")

def test_sliced_ranges_differ_by_powers_of_two(small_network):
    model, images = small_network
    config = InferenceConfig(weight_bits=8, nslices=3, dac_bits=6, input_bitslicing=True, input_slice_size=2, adc_per_ibit=True,
                             adc_bits=6, adc_range_option="MAX")
    net = AnalogNetwork.from_keras(model, config, calibration_data=images[:40], input_nonnegative=True)
    calibration = calibrate_adc(net, images[:40], method="optimal")
    for name, limits in calibration.adc_limits.items():
        highs = np.asarray(limits)[..., 1].ravel()
        exponents = np.log2(highs / highs[0])
        np.testing.assert_allclose(exponents, np.rint(exponents), atol=1e-9)
        assert np.asarray(limits).shape == (3, 3, 2)                       # 3 weight slices x 3 input slices (6 bits / 2)

def test_profile_save_load_and_relu_awareness(small_network, tmp_path):
    model, images = small_network
    net = AnalogNetwork.from_keras(model, InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=6, adc_range_option="MAX"),
                                   calibration_data=images[:30], input_nonnegative=True)
    plain = profile_adc_inputs(net, images[:30])
    aware = profile_adc_inputs(net, images[:30], relu_aware=True)
    assert sorted(aware.relu_layers) == ["conv", "hidden"] and plain.relu_layers == []
    assert aware.adc["conv"][(0, 0)].count < plain.adc["conv"][(0, 0)].count      # negative outputs dropped
    assert aware.adc["out"][(0, 0)].count == plain.adc["out"][(0, 0)].count        # no ReLU after 'out'
    assert set(plain.dac) == {"conv", "hidden", "out"}
    plain.save(tmp_path / "p.npz")
    again = ADCProfile.load(tmp_path / "p.npz")
    np.testing.assert_array_equal(again.values("hidden"), plain.values("hidden"))
    stats = adc_statistics(plain.values("hidden"), (-1, 1), 4)
    assert 0 <= stats["clipped_fraction"] <= 1 and stats["mean_squared_error"] > 0
    values = plain.values("hidden")
    for low, high in [(-1, 1), tuple(np.percentile(values, [10, 80]))]:   # the second clips about 30 %
        outside = sum(1 for v in values.tolist() if v < low or v > high)
        assert adc_statistics(values, (low, high), 4)["clipped_fraction"] == pytest.approx(outside / len(values), abs=1e-12)
    assert adc_statistics(values, tuple(np.percentile(values, [10, 80])), 4)["clipped_fraction"] == pytest.approx(0.3, abs=0.02)

def test_widgets_headless(small_network):
    model, images = small_network
    net = AnalogNetwork.from_keras(model, InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=4, adc_range_option="MAX"),
                                   calibration_data=images[:20], input_nonnegative=True)
    profile = profile_adc_inputs(net, images[:20])
    calibration = calibrate_adc(net, profile=profile)
    viewer = adc_viewer(profile, calibration)
    assert viewer.figure.axes[0].get_title().startswith("conv")
    viewer.layer.value = "hidden"
    axes = viewer.figure.axes[0]
    assert axes.get_title().startswith("hidden") and "4-bit ADC" in axes.get_title()
    low, high = calibration.adc_limits["hidden"][0]
    drawn = sorted({line.get_xdata()[0] for line in axes.get_lines() if line.get_color() == "tab:red"})
    assert drawn == pytest.approx(sorted({low, high}))
    assert len(axes.get_lines()) > 2 + 10                             # the 15 ADC levels of a 4-bit ADC are drawn
    figure = plot_adc_histogram(profile, "out", calibration)
    assert "clipped" in figure.axes[0].get_title()
    with pytest.raises(ValueError, match="no profile for 'nope'"): plot_adc_histogram(profile, "nope")


# ---------------------------------------------------------------- limits files record what the ADC inputs depend on
@pytest.fixture(scope="module")
def saved_limits(small_network, tmp_path_factory):
    "A calibration of the small network made on ideal arrays (no wires, linear cells, no device errors), saved as JSON."
    model, images = small_network
    config = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=6, adc_range_option="MAX")
    net = AnalogNetwork.from_keras(model, config, calibration_data=images[:60], input_nonnegative=True)
    path = calibrate_adc(net, images[:60]).save(tmp_path_factory.mktemp("limits") / "limits.json")
    return model, images, config.replace(adc_range_option="CALIBRATED"), path

CHANGES = [dict(rp_row=50.0), dict(rp_col=5.0), dict(rp_row_terminal=100.0), dict(rp_col_terminal=100.0),
           dict(nonlinear_iv="Cubic"), dict(vread=0.2), dict(icol_max=3.0), dict(icol_max_amps=1e-5), dict(clip_conductance=True),
           dict(interleaved_posneg=True), dict(error_model="generic", alpha_error=0.02, error_dependence="independent"),
           dict(noise_model="generic", alpha_noise=0.02, noise_distribution="uniform"), dict(drift_model="PCMLike", t_drift=1.0),
           dict(rp_row=1.0, current_from_input=False, input_bitslicing=True, selected_rows="bottom")]

@pytest.mark.parametrize("change", CHANGES, ids=["-".join(c) for c in CHANGES])
def test_limits_for_other_circuits_or_devices_are_refused_naming_each_setting(saved_limits, change):
    "Limits calibrated on ideal arrays do not load for wires, I-V laws, current limits or device effects: each setting named."
    from crosssim_nb.calibration import CalibrationFileError
    model, images, config, path = saved_limits
    with pytest.raises(CalibrationFileError) as info:
        AnalogNetwork.from_keras(model, config.replace(**change), adc_limits=path, input_nonnegative=True)
    default = InferenceConfig().to_dict()
    for key in change:
        assert f"{key}: limits made for {default[key]!r}, config has" in str(info.value), key
    AnalogNetwork.from_keras(model, config, adc_limits=path, input_nonnegative=True)     # the settings it was made for: fine

def test_version_1_files_load_with_the_defaults_assumed_and_said(saved_limits, tmp_path):
    "A version-1 file recorded no circuit or device settings: it loads for the defaults; for others the error says so."
    import json
    from crosssim_nb.calibration import CalibrationFileError, _RANGE_SETTINGS_V1
    model, images, config, path = saved_limits
    data = json.loads(path.read_text())
    assert data["version"] == 2 and "rp_row" in data["settings"] and "conv_row_order" in data["settings"]
    data["version"], data["settings"] = 1, {k: v for k, v in data["settings"].items() if k in _RANGE_SETTINGS_V1}
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    AnalogNetwork.from_keras(model, config, adc_limits=old, input_nonnegative=True)    # (no tiled convolution: row order moot)
    with pytest.raises(CalibrationFileError, match=r"rp_row: limits made for 0.0 \(not recorded by this older file: its default "
                                                   r"assumed\), config has 50.0"):
        AnalogNetwork.from_keras(model, config.replace(rp_row=50.0), adc_limits=old, input_nonnegative=True)

def test_limits_record_the_row_order_where_it_matters(tmp_path):
    "A tiled convolution's limits belong to its row order; version-1 files were made in the imported (kh, kw, cin) order."
    import json
    from crosssim_nb.calibration import CalibrationFileError, _RANGE_SETTINGS_V1
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((6, 6, 8)), keras.layers.Conv2D(4, 3, name="conv"), keras.layers.Flatten(),
                              keras.layers.Dense(3, name="out")])
    images = np.random.default_rng(4).random((30, 6, 6, 8)).astype(np.float32)
    config = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=6, adc_range_option="MAX", nrows_max=32)    # 72 rows: 3 arrays
    net = AnalogNetwork.from_keras(model, config, calibration_data=images, input_nonnegative=True)
    path = calibrate_adc(net, images).save(tmp_path / "limits.json")
    calibrated = config.replace(adc_range_option="CALIBRATED")
    AnalogNetwork.from_keras(model, calibrated, adc_limits=path, input_nonnegative=True)
    with pytest.raises(CalibrationFileError, match="conv_row_order: limits made for 'channel_first', config has 'channel_last'"):
        AnalogNetwork.from_keras(model, calibrated.replace(conv_row_order="channel_last"), adc_limits=path, input_nonnegative=True)
    data = json.loads(path.read_text())
    data["version"], data["settings"] = 1, {k: v for k, v in data["settings"].items() if k in _RANGE_SETTINGS_V1}
    (tmp_path / "old.json").write_text(json.dumps(data))
    with pytest.raises(CalibrationFileError, match="conv_row_order: limits made for 'channel_last' \\(not recorded"):
        AnalogNetwork.from_keras(model, calibrated, adc_limits=tmp_path / "old.json", input_nonnegative=True)

def test_a_failed_save_leaves_the_existing_limits_file_whole(saved_limits, tmp_path, monkeypatch):
    "A full disk while saving: the previous file is untouched and no temporary file is left (written atomically)."
    import errno, pathlib, shutil
    model, images, config, path = saved_limits
    target = tmp_path / "limits.json"
    shutil.copy(path, target)
    before = target.read_bytes()
    calibration = Calibration.load(target)
    calibration.adc_limits = {k: [[-1.0, 1.0]] for k in calibration.adc_limits}
    real = pathlib.Path.write_text
    def full_disk(self, text, *args, **kwargs):
        real(self, text[:len(text) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(pathlib.Path, "write_text", full_disk)
    with pytest.raises(OSError, match="No space left"): calibration.save(target)
    monkeypatch.undo()
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["limits.json"]
