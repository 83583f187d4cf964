"""CrossSim's calibrated limits files: `Calibration.from_crosssim(adc.npy, dac.npy, network)`.

The layout is CrossSim's: one (min, max) row per analog layer in network order, `(layers, 2)` (or `(layers, slices, 2)`
with weight bit slicing); ADC limits in normalised current, DAC limits in the layer's input units. The round-trip tests
write the files by hand with `np.save` from a calibration this project computed, so they do not rest on `to_crosssim`.
`data/crosssim_limits/` holds two of CrossSim's own files and the CIFAR-10 ResNet14 they belong to (BSD-3, LICENSE.md)."""
from pathlib import Path

import keras
import numpy as np
import pytest

from crosssim_nb.calibration import Calibration, CalibrationFileError, calibrate_adc, crosssim_settings_of
from crosssim_nb.config import InferenceConfig
from crosssim_nb.network import AnalogNetwork

DATA = Path(__file__).parent / "data" / "crosssim_limits"
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")       # (ADC-health notes on random data)


@pytest.fixture(scope="module")
def small():
    "A conv (tiled: 72 rows on 32-row arrays) + dense model, its images, and this project's own calibration of it."
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((8, 8, 8)), keras.layers.Conv2D(6, 3, activation="relu", name="conv"),
                              keras.layers.Flatten(), keras.layers.Dense(5, name="out")], name="small_cnn")
    images = np.random.default_rng(3).random((60, 8, 8, 8)).astype(np.float32)
    config = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=6, adc_range_option="MAX", nrows_max=32)
    net = AnalogNetwork.from_keras(model, config, calibration_data=images[:40], input_nonnegative=True)
    assert len(net.cores["conv"].row_ranges) == 3 and net.cores["conv"].row_order is not None
    calibration = calibrate_adc(net, images[:40])
    return dict(model=model, images=images, net=net, calibration=calibration,
                config=config.replace(adc_range_option="CALIBRATED"))


def write_crosssim(folder, small, adc_name="adc_limits_small_balanced_32rows.npy", dac_name="dac_limits_small.npy"):
    "The calibration in CrossSim's layout, written by hand: rows in network order (conv, out)."
    names = ["conv", "out"]
    adc = np.array([small["calibration"].adc_limits[n][0] for n in names], dtype=np.float64)      # (2, 2)
    dac = np.array([small["calibration"].input_ranges[n] for n in names], dtype=np.float64)
    np.save(folder / adc_name, adc); np.save(folder / dac_name, dac)
    return folder / adc_name, folder / dac_name


@pytest.mark.parametrize("given", ["keras_model", "keras_file", "network"])
def test_own_limits_in_crosssim_layout_give_the_same_outputs(tmp_path, small, given):
    adc, dac = write_crosssim(tmp_path, small)
    reference = AnalogNetwork.from_keras(small["model"], small["config"], adc_limits=small["calibration"], input_nonnegative=True)
    source = dict(keras_model=small["model"], network=reference)[given] if given != "keras_file" else tmp_path / "small.keras"
    if given == "keras_file": small["model"].save(source)
    loaded = Calibration.from_crosssim(adc, dac, source, small["config"])
    assert loaded.method == "crosssim" and loaded.weights_hash == small["calibration"].weights_hash
    for name in ("conv", "out"):
        np.testing.assert_array_equal(loaded.adc_limits[name], small["calibration"].adc_limits[name][0])
        np.testing.assert_array_equal(loaded.input_ranges[name], small["calibration"].input_ranges[name])
    net = AnalogNetwork.from_keras(small["model"], small["config"], adc_limits=loaded, input_nonnegative=True)
    np.testing.assert_array_equal(net.predict(small["images"][40:]), reference.predict(small["images"][40:]))
    np.testing.assert_array_equal(net.cores["conv"].adc_limits.reshape(-1, 2)[0], small["calibration"].adc_limits["conv"][0])


def test_crosssim_limits_round_trip_through_both_layouts(tmp_path, small):
    "Written back in CrossSim's layout: the same arrays as written by hand; saved as a crosssim_nb file: loads and checks."
    adc, dac = write_crosssim(tmp_path, small)
    loaded = Calibration.from_crosssim(adc, dac, small["model"], small["config"])
    again = loaded.to_crosssim(tmp_path / "again_adc.npy", tmp_path / "again_dac.npy", small["net"])
    np.testing.assert_array_equal(np.load(again[0]), np.load(adc))
    np.testing.assert_array_equal(np.load(again[1]), np.load(dac))
    path = loaded.save(tmp_path / "limits.json")
    net = AnalogNetwork.from_keras(small["model"], small["config"], adc_limits=path, input_nonnegative=True)
    assert net.cores["out"].adc_limits is not None


def test_file_name_states_the_settings():
    assert crosssim_settings_of("adc_limits_ResNet14_balanced_144rows.npy") == dict(nrows_max=144, style="BALANCED")
    assert crosssim_settings_of("adc_limits_ResNet50v15_1152rows_4slices_offset.npy") == dict(nrows_max=1152, nslices=4, style="OFFSET")
    assert crosssim_settings_of("adc_limits_ResNet50v15_balanced_ibits.npy") == dict(style="BALANCED", adc_per_ibit=True)
    assert crosssim_settings_of("dac_limits_ResNet14.npy") == {}


def refused(tmp_path, small, adc=None, dac=None, config=None, made_for=None, error=CalibrationFileError):
    adc_path, dac_path = write_crosssim(tmp_path, small)
    if adc is not None:
        adc_path = tmp_path / (adc[0] if isinstance(adc, tuple) else "adc_limits_small_balanced_32rows.npy")
        np.save(adc_path, adc[1] if isinstance(adc, tuple) else adc, allow_pickle=True)
    if dac is not None:
        dac_path = tmp_path / "dac_limits_other.npy"
        np.save(dac_path, dac)
    with pytest.raises(error) as info:
        Calibration.from_crosssim(adc_path, dac_path, small["model"], config or small["config"], made_for=made_for)
    return str(info.value)


def test_wrong_number_of_layers_names_the_model_and_its_layers(tmp_path, small):
    message = refused(tmp_path, small, adc=np.array([[-1.0, 1.0]] * 3))
    assert "shape (3, 2): 3 layer(s), but model 'small_cnn' has 2 analog layer(s) (conv, out)" in message


@pytest.mark.parametrize("array, text", [
    (np.ones((2, 3)), "has shape (2, 3); allowed: (layers, 2) or (layers, slices, 2)"),
    (np.ones(4), "has shape (4,)"),
    (np.array([[-1.0, np.nan], [-1.0, 1.0]]), "non-finite number (first at (0, 1))"),
    (np.array([[-1.0, 1.0], [2.0, 1.0]]), "min < max in every pair; layer 1 has [2.0, 1.0]"),
    (np.array([["a", "b"], ["c", "d"]]), "must hold numbers, got dtype <U1"),
    (np.array([[-1.0, 1.0]] * 2 * 2).reshape(2, 2, 2), "2 ranges per layer, but the config has nslices=1"),
], ids=["three-columns", "flat", "nan", "min-above-max", "text", "slices-without-slicing"])
def test_bad_adc_arrays_are_named(tmp_path, small, array, text):
    assert text in refused(tmp_path, small, adc=array)


def test_pickled_objects_are_never_loaded(tmp_path, small):
    message = refused(tmp_path, small, adc=np.array([{"conv": (-1, 1)}, None], dtype=object))
    assert "holds Python objects (pickle), which are never loaded" in message and "adc_limits_small_balanced_32rows.npy" in message


def test_other_files_are_named(tmp_path, small):
    with pytest.raises(FileNotFoundError, match="no such file"):
        Calibration.from_crosssim(tmp_path / "adc_missing.npy", None, small["model"], small["config"])
    (tmp_path / "limits.json").write_text("{}")
    with pytest.raises(CalibrationFileError, match="suffix '.json' not allowed; CrossSim's limits are .npy files"):
        Calibration.from_crosssim(tmp_path / "limits.json", None, small["model"], small["config"])


def test_dac_shape_and_settings_are_checked_together(tmp_path, small):
    message = refused(tmp_path, small, dac=np.array([[0.0, 1.0]] * 5), config=small["config"].replace(nrows_max=64))
    assert "DAC limits have shape (5, 2); model 'small_cnn' needs (2, 2)" in message
    assert "calibrated for nrows_max=32; the config has nrows_max=64" in message
    message = refused(tmp_path, small, config=small["config"].replace(adc_range_option="MAX"))
    assert "adc_range_option='CALIBRATED' and adc_bits > 0; the config has adc_range_option='MAX'" in message
    assert "style='OFFSET'; the config has style='BALANCED'" in refused(tmp_path, small, made_for=dict(style="OFFSET"))


def test_sliced_limits_go_to_each_weight_slice(tmp_path, small):
    "(layers, slices, 2): each layer's rows are its weight slices' ranges."
    config = small["config"].replace(nslices=2)
    limits = np.array([[[-4.0, 4.0], [-2.0, 2.0]], [[-3.0, 3.0], [-1.5, 1.5]]])
    np.save(tmp_path / "adc_limits_small_balanced_32rows_2slices.npy", limits)
    loaded = Calibration.from_crosssim(tmp_path / "adc_limits_small_balanced_32rows_2slices.npy", None, small["model"], config)
    np.testing.assert_array_equal(loaded.adc_limits["conv"], limits[0])
    assert loaded.input_ranges == {}
    net = AnalogNetwork.from_keras(small["model"], config, adc_limits=loaded, input_ranges=small["calibration"].input_ranges,
                                   input_nonnegative=True)
    np.testing.assert_array_equal(net.cores["out"].adc_limits[:, 0], limits[1])


def test_crosssims_own_resnet14_limits_load_and_run():
    "CrossSim's 144-row ResNet14 files, with the model they belong to: 16 layers, the ranges installed per layer, finite outputs."
    adc, dac = DATA / "adc_limits_ResNet14_balanced_144rows.npy", DATA / "dac_limits_ResNet14.npy"
    config = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="CALIBRATED", nrows_max=144)
    loaded = Calibration.from_crosssim(adc, dac, DATA / "resnet14v1_cifar10.h5", config)
    assert len(loaded.adc_limits) == 16 and loaded.input_ranges["conv2d_1"] == [-0.61, 0.61]
    net = AnalogNetwork.from_keras(DATA / "resnet14v1_cifar10.h5", config, adc_limits=loaded)
    rows = np.load(adc, allow_pickle=False)
    for index, name in enumerate(net.cores):
        np.testing.assert_array_equal(net.cores[name].adc_limits.reshape(-1, 2)[0], rows[index])
    tiled = [name for name, core in net.cores.items() if len(core.row_ranges) > 1]     # 288 and 576 rows on 144-row arrays
    assert len(tiled) >= 5 and all(net.cores[name].row_order is not None for name in tiled)   # in CrossSim's row order
    x = (np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3)).astype(np.float32) - 125) / 255
    assert np.isfinite(net.predict(x)).all()
    with pytest.raises(CalibrationFileError, match="calibrated for nrows_max=144; the config has nrows_max=1152"):
        Calibration.from_crosssim(adc, dac, DATA / "resnet14v1_cifar10.h5", config.replace(nrows_max=1152))
