"""The notebook viewers (device, array mapping, ADC calibration, circuit ADCs): one figure per update, shown once; the
device time slider stops at round times; distinct ADC choices draw distinct curves; tables without NaN rows."""
import os, sys
from pathlib import Path
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("MPLBACKEND", "Agg")
import matplotlib.pyplot as plt   # noqa: E402
from crosssim_nb.config import InferenceConfig   # noqa: E402


@pytest.fixture(autouse=True)
def no_open_figures():
    plt.close("all")
    yield
    plt.close("all")


def _shown_once(viewer_output):
    "The viewer's Output widget holds exactly one display (its figure) and pyplot keeps no figure open to draw again."
    assert len(viewer_output.outputs) == 1, [list(o.get("data", {})) for o in viewer_output.outputs]
    data = viewer_output.outputs[0]["data"]          # (outside a kernel IPython formats a Figure as text only)
    assert "image/png" in data or data.get("text/plain", "").startswith("<Figure size"), list(data)
    assert plt.get_fignums() == [], "an open pyplot figure: the inline backend draws it a second time below the cell"


# --- DeviceViewer --------------------------------------------------------------------------------------------------
def test_device_viewer_slider_reaches_round_times():
    from crosssim_nb.device_viewer import DeviceViewer, NAMED_TIMES
    viewer = DeviceViewer("PCMLike", t_days=1.0)
    days = [value for _, value in viewer.time.options]
    for label, value in (("1 s", 1 / 86400), ("1 h", 1 / 24), ("1 d", 1.0), ("10 d", 10.0), ("30 d", 30.0), ("1 y", 365.0), ("10 y", 3650.0)):
        assert value in days and dict(viewer.time.options)[label] == value
    viewer.time.value = 30.0
    assert viewer.config().t_drift == 30.0                      # exactly a month (a log slider gave 31.6 d)
    assert viewer.figure.axes[2].get_title() == "programmed at t = 30 d"
    assert NAMED_TIMES["30 d"] == 30.0
    own = DeviceViewer("PCMLike", t_days=3.5)                    # a time of one's own is offered too
    assert own.time.value == 3.5 and own.time.label == "3.5 d"
    with pytest.raises(ValueError, match="device='nope' is not allowed"): DeviceViewer("nope")


def test_device_viewer_draws_one_figure_per_update():
    from crosssim_nb.device_viewer import DeviceViewer
    viewer = DeviceViewer("PCMLike", t_days=1.0)
    _shown_once(viewer.output)
    for change in (lambda: setattr(viewer.time, "value", 365.0), lambda: setattr(viewer.device, "value", "PCMJoshi"),
                   lambda: setattr(viewer.levels, "value", "0.5")):
        before = viewer.figure
        change()
        assert viewer.figure is not before and viewer.message.value == ""
        _shown_once(viewer.output)
    viewer.levels.value = "0.5, x"                              # bad levels: a message, the last figure stays
    assert "x" in viewer.message.value and len(viewer.output.outputs) == 1


# --- ArrayViewer ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_network():
    import keras
    from crosssim_nb.network import AnalogNetwork
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((12, 12, 1)), keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
                              keras.layers.MaxPooling2D(), keras.layers.Flatten(), keras.layers.Dense(16, activation="relu", name="hidden"),
                              keras.layers.Dense(4, name="out")])
    images = np.random.default_rng(0).random((120, 12, 12, 1)).astype(np.float32)
    config = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=5, adc_range_option="MAX", nrows_max=64, ncols_max=8)
    return model, images, AnalogNetwork.from_keras(model, config, calibration_data=images[:100], input_nonnegative=True)


def test_array_viewer_totals_have_no_nan_and_one_figure_per_layer(small_network):
    from crosssim_nb.array_viewer import ArrayViewer, totals_table
    _, _, net = small_network
    table = net.hw_config()
    assert table.tail(1).isna().any().any()                      # the hardware table's total row has per-layer-only columns
    viewer = ArrayViewer(net)
    assert not viewer.totals_table.isna().any().any()
    assert "NaN" not in viewer.totals.value and "None" not in viewer.totals.value
    assert len(viewer.totals_table) == 1 and viewer.totals_table.loc[0, "arrays"] == table.arrays.iloc[-1]
    assert list(totals_table(table).columns) == [c for c in table.columns if table[c].iloc[-1] == table[c].iloc[-1]]
    _shown_once(viewer.output)
    viewer.layer.value = "hidden"
    assert viewer.figure.axes[0].get_title().startswith("hidden")
    _shown_once(viewer.output)


# --- ADC calibration viewer ----------------------------------------------------------------------------------------
def test_adc_viewer_draws_one_figure_per_update(small_network):
    from crosssim_nb.calibration import adc_viewer, profile_adc_inputs, calibrate_adc
    _, images, net = small_network
    profile = profile_adc_inputs(net, images[:100], relu_aware=True)
    viewer = adc_viewer(profile, calibrate_adc(net, profile=profile))
    _shown_once(viewer.output)
    viewer.layer.value = "out"
    assert viewer.figure.axes[0].get_title().startswith("out")
    _shown_once(viewer.output)


# --- circuit ADC viewer --------------------------------------------------------------------------------------------
def _sar_core(**settings):
    from crosssim_nb.core import AnalogCore
    W = np.random.default_rng(0).normal(size=(24, 16))           # 24 outputs (columns), 16 inputs
    config = InferenceConfig(weight_bits=8, adc_bits=6, adc_type="sar", adc_range_option="MAX", group_size=8, **settings)
    return AnalogCore(W, config, name="layer")


def test_circuit_adc_viewer_offers_distinct_adcs():
    from crosssim_nb.adc_circuits import circuit_adc_viewer, core_transfers, distinct_adc_columns
    core = _sar_core(sigma_comparator=0.05, sigma_capacitor=0.02)
    columns = distinct_adc_columns(core, 3)
    assert columns == [0, 8, 16]                                 # columns 0..7 share one SAR, 8..15 the next
    transfers, _ = core_transfers(core, columns=columns)
    sweep = np.linspace(-1, 1, 2001)
    curves = [t(sweep) for t in transfers]
    for a in range(3):
        for b in range(a + 1, 3): assert not np.array_equal(curves[a], curves[b]), (a, b)
    same, _ = core_transfers(core, columns=[0, 1, 2])            # the old choice: one SAR three times
    assert all(np.array_equal(same[0](sweep), t(sweep)) for t in same)
    box = circuit_adc_viewer({"layer": core})
    _shown_once(box.children[-1])
    assert [line.get_label() for line in box.figure.axes[0].lines if line.get_label().startswith("ADC")] == ["ADC 0", "ADC 1", "ADC 2"]
    assert "columns 0–7, 8–15, 16–23" in box.figure._suptitle.get_text()


def test_circuit_adc_viewer_says_when_every_adc_is_the_same():
    from crosssim_nb.adc_circuits import circuit_adc_viewer
    box = circuit_adc_viewer({"layer": _sar_core()})             # no component errors: every SAR is the same circuit
    _shown_once(box.children[-1])
    assert [line.get_label() for line in box.figure.axes[0].lines if line.get_label().startswith("ADC")] == ["ADC 0"]
    assert "no component errors" in box.figure._suptitle.get_text()


# --- in a kernel, as in JupyterLab: the cell shows the widget once and no second figure --------------------------------
def test_viewers_in_a_kernel_show_each_figure_once(tmp_path):
    import nbformat
    import execute_notebooks as runner
    cells = ["from crosssim_nb.device_viewer import DeviceViewer\nimport matplotlib.pyplot as plt",
             "viewer = DeviceViewer('PCMLike', t_days=30.0)\nviewer",
             "viewer.time.value = 1.0\nviewer.device.value = 'SONOS'",
             "print(len(plt.get_fignums()), len(viewer.output.outputs))"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    path = tmp_path / "viewer.ipynb"
    nbformat.write(nb, str(path))
    executed = runner.execute(path, timeout=600)
    shown = executed.cells[1].outputs
    assert len(shown) == 1 and "application/vnd.jupyter.widget-view+json" in shown[0]["data"], shown
    assert "image/png" not in shown[0]["data"]
    assert executed.cells[2].outputs == []                       # an update adds nothing below the cell
    assert "".join(o.get("text", "") for o in executed.cells[3].outputs).split() == ["0", "1"]
    state = executed.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    held = [len(m["state"]["outputs"]) for m in state.values() if m["model_name"] == "OutputModel"]
    assert held == [1], held
