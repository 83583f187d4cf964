"""CrossSim files carry over exactly: units (wires in ohms), every setting read and written or refused by name, hand-written
CrossSim 3.2 files, CrossSim's tutorial file, inference_config.py read without executing it, malformed input."""
import json, re, shutil, warnings
from pathlib import Path
import numpy as np
import pytest
from crosssim_nb import AnalogCore, InferenceConfig
from crosssim_nb.files import FileFormatError
from crosssim_nb.crosssim_compat import (CONFIG_DIR, CrossSimRun, CrossSimUnitsWarning, CrossSimWarning, crosssim_field_table,
                                         crosssim_write_report, is_crosssim_file, read_crosssim_run, read_inference_config_py,
                                         translate_crosssim)

DATA = Path(__file__).parent / "data" / "crosssim"

# --- hand-written CrossSim 3.2 files (not produced by to_crosssim) and the configurations they state

HAND_WRITTEN = {
    "wires_1ohm_cubic.json": dict(weight_bits=8, nrows_max=64, ncols_max=32, infinite_on_off_ratio=False, rmin=2000.0, rmax=2e5, vread=0.2,
                                  rp_row=1.0, rp_col=1.5, rp_row_terminal=10.0, rp_col_terminal=20.0, current_from_input=False,
                                  selected_rows="bottom", interleaved_posneg=True, nonlinear_iv="Cubic", dac_bits=8, input_bitslicing=True,
                                  adc_bits=10, adc_range_option="MAX"),
    "offset_inverse_sonos_pipeline.json": dict(style="OFFSET", digital_offset=False, weight_bits=7, nrows_max=0, ncols_max=0,
                                               weight_percentile=99.5, rmin=35e3, rmax=6e12, vread=0.06, infinite_on_off_ratio=False,
                                               clip_conductance=True, error_model="generic", alpha_error=0.01, error_distribution="uniform",
                                               error_dependence="inverse_proportional", noise_model="SONOS", icol_max=25.0,
                                               adc_bits=8, adc_type="pipeline", gain_db=80.0, sigma_comparator=0.005, group_size=16,
                                               sigma_c1=0.01, sigma_c2=0.02, sigma_cpar=0.03),
    "bitsliced_ramp.json": dict(weight_bits=8, nslices=4, nrows_max=256, ncols_max=256, subtract_current_in_xbar=False, weight_percentile=50.0,
                                infinite_on_off_ratio=False, rmax=2e4, adc_bits=6, adc_type="ramp", adc_per_ibit=True, gain_db=0,
                                sigma_capacitor=0.02, sigma_comparator=0.01, symmetric_cdac=False, dac_bits=6, input_bitslicing=True,
                                input_slice_size=2),
}

@pytest.mark.parametrize("name", sorted(HAND_WRITTEN))
def test_hand_written_crosssim_files_read_and_write_exactly(name, tmp_path):
    expected_file = json.loads((DATA / name).read_text())
    config = InferenceConfig(**HAND_WRITTEN[name])
    assert InferenceConfig.from_crosssim(DATA / name).to_dict() == config.to_dict()        # reading
    assert config.to_crosssim() == expected_file                                            # writing
    config.to_crosssim(tmp_path / name)
    assert json.loads((tmp_path / name).read_text()) == expected_file
    report = translate_crosssim(DATA / name).report()
    assert set(report.status) <= {"mapped", "ignored"}

def test_a_crosssim_3_2_file_with_1_ohm_wires_runs_with_1_ohm_wires():
    config = InferenceConfig.from_crosssim(DATA / "wires_1ohm_cubic.json")
    assert (config.rp_row, config.rp_col, config.rp_row_terminal, config.rp_col_terminal) == (1.0, 1.5, 10.0, 20.0)
    W, x = np.random.default_rng(0).normal(size=(6, 20)), np.random.default_rng(1).uniform(-1, 1, (5, 20))
    plain = dict(HAND_WRITTEN["wires_1ohm_cubic.json"], nonlinear_iv="none", adc_bits=0)
    one_ohm = AnalogCore(W, config.replace(nonlinear_iv="none", adc_bits=0)).apply(x)
    np.testing.assert_allclose(one_ohm, AnalogCore(W, InferenceConfig(**plain)).apply(x), rtol=1e-6)
    kilo_ohm = AnalogCore(W, InferenceConfig(**{**plain, "rp_row": 1000.0, "rp_col": 1500.0})).apply(x)   # what 1000x would give
    assert np.abs(kilo_ohm - one_ohm).max() > 0.05 * np.abs(one_ohm).max()

# --- CrossSim's tutorial file (an older version) and the units option

def test_crosssim_tutorial_params_64_loads_with_the_units_warning():
    with pytest.warns(CrossSimUnitsWarning, match=r"(?s)read in ohms.*older CrossSim.*rp_units='rmin'"):
        run = read_crosssim_run(DATA / "params_64.json")
    assert run.config.rp_row == 5e-05 and run.config.nrows_max == 64
    report = run.report.set_index("path")
    conv = report.loc[[p for p in report.index if p.startswith("simulation.convolution.")]]
    assert len(conv) == 12 and (conv.status == "ignored").all()
    assert conv.drop("simulation.convolution.is_conv_core").detail.str.contains("is_conv_core is false").all()
    assert not report.detail.str.contains("parasitics are off").any()                     # they are on in this file
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                                    # the explicit option: no warning
        as_meant = InferenceConfig.from_crosssim(DATA / "params_64.json", rp_units="rmin")
    assert as_meant.rp_row == pytest.approx(5e-05 * 1000.0) and as_meant.rp_col == pytest.approx(0.05)
    with pytest.raises(ValueError, match="rp_units='kohm' is not allowed; allowed: 'ohm'"):
        InferenceConfig.from_crosssim(DATA / "params_64.json", rp_units="kohm")

def test_a_tiny_resistance_in_a_current_file_warns_and_a_plausible_one_does_not():
    params = json.loads((DATA / "wires_1ohm_cubic.json").read_text())
    params["xbar"]["array"]["parasitics"]["Rp_col"] = 2e-4
    with pytest.warns(CrossSimUnitsWarning, match="Rp_col is below 0.01 ohm per segment"): InferenceConfig.from_crosssim(params)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        InferenceConfig.from_crosssim(DATA / "wires_1ohm_cubic.json")

# --- inference_config.py, read without executing it

def test_inference_config_py_loads_without_executing(tmp_path):
    run = read_crosssim_run(DATA / "inference_config.py")
    assert isinstance(run, CrossSimRun) and run.config.nrows_max == 1152 and run.config.weight_bits == 8 and run.config.nruns == 1
    assert run.run_arguments == {"dataset": "mnist", "ntest": 1000, "nstart": 0, "topk": (1,), "return_outputs": False, "show_hw_config": False}
    report = run.report.set_index("path")
    assert report.loc["model_name", "status"] == "ignored" and "not in crosssim_nb's zoo" in report.loc["model_name", "detail"]
    assert any("CNN6_v2" in note for note in run.notes)
    assert InferenceConfig.from_crosssim(DATA / "inference_config.py").to_dict() == run.config.to_dict()
    # a copy with code in it: refused by line, and the code never runs
    sentinel = tmp_path / "ran"
    text = (DATA / "inference_config.py").read_text()
    for extra, message in ((f"\nif task == 'imagenet':\n    open({str(sentinel)!r}, 'w')\n", "a call is not allowed"),
                           ("\nimport os\n", "an import is not allowed"),
                           ("\nNrowsMax = os.cpu_count\n", "attribute access is not allowed"),
                           ("\nNcolsMax = undefined_name\n", "the name 'undefined_name' (not set before this line)")):
        (tmp_path / "inference_config.py").write_text(text + extra)
        marker = {"a call": "open(", "an import": "import os", "attribute access": "os.cpu_count"}.get(message.split(" is")[0], "undefined_name")
        line = next(i for i, source in enumerate((text + extra).splitlines(), 1) if marker in source)
        with pytest.raises(ValueError, match=re.escape(f"line {line}: {message}")): read_crosssim_run(tmp_path / "inference_config.py")
    assert not sentinel.exists()

def test_inference_config_py_branches_and_run_settings(tmp_path):
    text = (DATA / "inference_config.py").read_text()
    text = text.replace('task = "mnist"', 'task = "cifar10"').replace("Nruns = 1", "Nruns = 4").replace('adc_bits = 0', 'adc_bits = 8')
    text = text.replace('adc_range_option = "CALIBRATED"\n', 'adc_range_option = "MAX"\n').replace("NrowsMax = 1152", "NrowsMax = 2 * 72")
    text = text.replace("Rmin = 1e3", "Rmin = 35e3").replace("Rmax = 1e6", "Rmax = 6e12").replace("infinite_on_off_ratio = True", "infinite_on_off_ratio = False")
    (tmp_path / "inference_config.py").write_text(text + '\nmodel_name = "mnist_cnn"\nerror_model = "SONOS"\nalpha_error = 0.3\n')
    values = read_inference_config_py(tmp_path / "inference_config.py")
    assert values["count_interval"] == 10 and values["topk"] == 1 and values["NrowsMax"] == 144   # the cifar10 branch, arithmetic
    run = read_crosssim_run(tmp_path / "inference_config.py")
    assert run.run_arguments["dataset"] == "cifar10" and run.run_arguments["model"] == "mnist_cnn"
    assert (run.config.nruns, run.config.adc_bits, run.config.adc_range_option, run.config.nrows_max) == (4, 8, "MAX", 144)
    assert run.config.error_model == "SONOS" and run.config.alpha_error == 0.0             # CrossSim ignores alpha with a named model
    assert run.config.vread == 0.06                                                       # CrossSim's DNN interface for SONOS

# --- malformed input: clear errors naming the setting

def _default(**where):
    params = json.loads((CONFIG_DIR / "default.json").read_text())
    for path, value in where.items():
        *parents, key = path.split("__"); node = params
        for parent in parents: node = node.setdefault(parent, {})
        node[key] = value
    return params

@pytest.mark.parametrize("path", ["xbar__device__programming_error__enable", "simulation__useGPU", "core__balanced__interleaved_posneg",
                                  "xbar__device__infinite_on_off_ratio", "xbar__array__parasitics__enable", "xbar__adc__mvm__adc_per_ibit",
                                  "simulation__hide_convergence_msg", "xbar__adc__vmm__stochastic_rounding"])
def test_booleans_must_be_json_booleans(path):
    with pytest.raises(ValueError, match=f"{path.replace('__', '.')}='false' is not allowed; allowed: true or false"):
        InferenceConfig.from_crosssim(_default(**{path: "false"}))

@pytest.mark.parametrize("path, value", [("core__rows_max", 127.9), ("core__rows_max", True), ("xbar__device__cell_bits", 3.7),
                                         ("xbar__adc__mvm__bits", "8"), ("core__bit_sliced__num_slices", 2.5)])
def test_integers_must_be_integers(path, value):
    with pytest.raises(ValueError, match=f"{path.replace('__', '.')}={value!r} is not allowed; allowed: an integer"):
        InferenceConfig.from_crosssim(_default(**{path: value}))

def test_malformed_crosssim_input_gets_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="is empty"): InferenceConfig.from_crosssim({})
    with pytest.raises(ValueError, match="xbar.device.Rmin='abc' is not allowed; allowed: a finite number > 0"):
        InferenceConfig.from_crosssim(_default(xbar__device__Rmin="abc"))
    with pytest.raises(ValueError, match="Icell_max=0 is not allowed; allowed: a finite number > 0"):
        InferenceConfig.from_crosssim(dict(NrowsMax=64, Icol_max=1e-5, Icell_max=0))
    with pytest.raises(ValueError, match="NrowsMax=127.9 is not allowed"): InferenceConfig.from_crosssim(dict(NrowsMax=127.9))
    with pytest.raises(ValueError, match="useGPU='false' is not allowed"): InferenceConfig.from_crosssim(dict(useGPU="false"))
    (tmp_path / "dup.json").write_text('{"core": {"rows_max": 64, "rows_max": 128}}')
    with pytest.raises(FileFormatError, match="duplicate key 'rows_max'"): InferenceConfig.from_crosssim(tmp_path / "dup.json")
    deep = current = {}
    for _ in range(5000): current["a"] = {}; current = current["a"]
    with pytest.raises(ValueError, match="nests more than"): InferenceConfig.from_crosssim({"core": deep})
    with pytest.raises(ValueError, match="suffix '.txt' not allowed"): InferenceConfig.from_crosssim(tmp_path / "x.txt")

def test_report_lines_say_what_happened():
    report = translate_crosssim(_default(xbar__adc__mvm__bits=8)).report().set_index("path")
    assert report.loc["xbar.adc.mvm.bits", "status"] == "ignored" and "adc_bits=0" in report.loc["xbar.adc.mvm.bits", "detail"]
    wired = translate_crosssim(DATA / "wires_1ohm_cubic.json").report().set_index("path")
    assert not wired.detail.str.contains("parasitics are off").any()
    assert wired.loc["xbar.array.parasitics.Rp_row", "detail"].startswith("rp_row=1.0 (ohm")

def test_settings_without_effect_are_accepted_and_reported():
    params = _default(simulation__convolution__stride=2, simulation__convolution__Kx=5, xbar__device__read_noise__model="SONOS")
    report = translate_crosssim(params).report().set_index("path")
    assert report.loc["simulation.convolution.stride", "status"] == "ignored"
    assert report.loc["xbar.device.read_noise.model", "status"] == "ignored"             # enable is false
    conv = _default(simulation__convolution__is_conv_core=True, simulation__convolution__bias_row=True)
    assert InferenceConfig.from_crosssim(conv).digital_bias is False                      # the analog bias row

# --- writing: nothing dropped without a word

NON_DEFAULT = {  # field: a valid configuration where it differs from the default
    "weight_bits": dict(weight_bits=6), "weight_percentile": dict(weight_percentile=99.0), "nslices": dict(nslices=2),
    "nrows_max": dict(nrows_max=128), "ncols_max": dict(ncols_max=64), "style": dict(style="OFFSET"),
    "balanced_style": dict(balanced_style="TWO_SIDED"), "subtract_current_in_xbar": dict(subtract_current_in_xbar=False),
    "digital_offset": dict(style="OFFSET", digital_offset=False), "interleaved_posneg": dict(interleaved_posneg=True),
    "rmin": dict(rmin=2000.0), "rmax": dict(rmax=2e6), "vread": dict(vread=0.2), "infinite_on_off_ratio": dict(infinite_on_off_ratio=False),
    "clip_conductance": dict(clip_conductance=True), "error_model": dict(error_model="generic", alpha_error=0.01),
    "alpha_error": dict(error_model="RRAMMilo", rmin=5000.0, rmax=2e4, infinite_on_off_ratio=False, alpha_error=0.5),
    "error_dependence": dict(error_model="generic", alpha_error=0.01, error_dependence="inverse_proportional"),
    "proportional_error": dict(error_model="generic", alpha_error=0.01, proportional_error=False),
    "error_distribution": dict(error_model="generic", alpha_error=0.01, error_distribution="uniform"),
    "noise_model": dict(noise_model="generic", alpha_noise=0.01), "alpha_noise": dict(noise_model="generic", alpha_noise=0.02),
    "noise_dependence": dict(noise_model="generic", alpha_noise=0.01, noise_dependence="independent"),
    "proportional_noise": dict(noise_model="generic", alpha_noise=0.01, proportional_noise=False),
    "noise_distribution": dict(noise_model="generic", alpha_noise=0.01, noise_distribution="uniform"),
    "read_noise_method": dict(noise_model="generic", alpha_noise=0.01, read_noise_method="exact"),
    "noise_variance_precision": dict(noise_model="generic", alpha_noise=0.01, noise_variance_precision="float32"),
    "drift_model": dict(drift_model="SONOS", t_drift=1.0, rmin=35e3, rmax=6e12, vread=0.06, infinite_on_off_ratio=False),
    "t_drift": dict(drift_model="SONOS", t_drift=2.5, rmin=35e3, rmax=6e12, vread=0.06, infinite_on_off_ratio=False),
    "drift_compensation": dict(error_model="PCMLike", drift_model="PCMLike", t_drift=1.0, drift_compensation="per_column"),
    "icol_max": dict(icol_max=10.0), "icol_max_amps": dict(icol_max_amps=1e-3),
    "rp_row": dict(rp_row=1.0), "rp_col": dict(rp_col=1.0), "rp_row_terminal": dict(rp_row_terminal=5.0), "rp_col_terminal": dict(rp_col_terminal=5.0),
    "current_from_input": dict(rp_col=1.0, current_from_input=False, input_bitslicing=True),
    "selected_rows": dict(rp_col=1.0, current_from_input=False, input_bitslicing=True, selected_rows="bottom"),
    "nonlinear_iv": dict(nonlinear_iv="Cubic"), "fold_batchnorm": dict(fold_batchnorm=False),
    "recurrent_cores": dict(recurrent_cores="separate"), "embedding": dict(embedding="analog"),
    "attention_products": dict(attention_products="analog"), "digital_bias": dict(digital_bias=False),
    "bias_bits": dict(bias_bits=8), "adc_bits": dict(adc_bits=8, adc_range_option="MAX"), "adc_range_option": dict(adc_bits=8, adc_range_option="MAX"),
    "adc_per_ibit": dict(input_bitslicing=True, adc_per_ibit=True), "dac_bits": dict(dac_bits=6), "input_bitslicing": dict(input_bitslicing=True),
    "input_slice_size": dict(input_bitslicing=True, input_slice_size=2), "adc_type": dict(adc_bits=6, adc_type="ramp"),
    "stochastic_rounding": dict(adc_bits=8, adc_range_option="MAX", stochastic_rounding=True),
    "gain_db": dict(adc_bits=6, adc_type="ramp", gain_db=60.0), "sigma_capacitor": dict(adc_bits=6, adc_type="sar", sigma_capacitor=0.01),
    "sigma_comparator": dict(adc_bits=6, adc_type="cyclic", sigma_comparator=0.01), "symmetric_cdac": dict(adc_bits=6, adc_type="ramp", symmetric_cdac=False),
    "split_cdac": dict(adc_bits=6, adc_type="sar", split_cdac=False), "group_size": dict(adc_bits=6, adc_type="pipeline", group_size=4),
    "sigma_c1": dict(adc_bits=6, adc_type="pipeline", sigma_c1=0.01), "sigma_c2": dict(adc_bits=6, adc_type="pipeline", sigma_c2=0.01),
    "sigma_cpar": dict(adc_bits=6, adc_type="cyclic", sigma_cpar=0.01), "use_gpu": None, "seed": dict(seed=5), "nruns": dict(nruns=3),
    "device_table": None, "conv_row_order": dict(conv_row_order="channel_last"), "parasitic_solve_budget_gflop": dict(parasitic_solve_budget_gflop=900.0),
    "adc_calibration_time": dict(adc_calibration_time="evaluation"),
    "preset": None,   # a tag, checked in test_presets
}
REFUSED = {"drift_compensation", "alpha_error", "conv_row_order"}
NOT_IN_FILE = {"recurrent_cores", "embedding", "attention_products", "fold_batchnorm", "digital_bias", "bias_bits", "seed", "nruns", "read_noise_method", "noise_variance_precision", "parasitic_solve_budget_gflop", "adc_calibration_time"}

@pytest.mark.parametrize("field", sorted(k for k, v in NON_DEFAULT.items() if v is not None))
def test_to_crosssim_writes_refuses_or_names_every_field(field):
    try: config = InferenceConfig(**NON_DEFAULT[field])
    except TypeError: pytest.skip(f"{field} is not a field of this build")
    if field in REFUSED:
        with pytest.raises(ValueError, match=f"refused fields:\n  (.*\n  )*{field}="): config.to_crosssim()
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        params = config.to_crosssim()
    named = [str(w.message) for w in caught if issubclass(w.category, CrossSimWarning) and f"{field}=" in str(w.message)]
    if field in NOT_IN_FILE:
        assert named, f"{field} is neither written nor named"
    else:
        back = InferenceConfig.from_crosssim(params)
        if field == "icol_max_amps": assert back.icol_max == pytest.approx(config.icol_max_amps * config.rmin / config.vread)
        else: assert getattr(back, field) == getattr(config, field), field
    assert set(crosssim_write_report(config).status) <= {"written", "not written"}

def test_every_field_is_classified_for_writing():
    missing = set(InferenceConfig().to_dict()) - set(NON_DEFAULT)
    assert not missing, f"fields without a to_crosssim check: {sorted(missing)}"

def test_models_crosssim_does_not_have_are_refused_by_name(tmp_path):
    table = tmp_path / "table.csv"
    from crosssim_nb.device_models import write_device_table
    g = np.linspace(0, 1, 5)
    write_device_table(table, g, programming_sigma=0.01 * np.ones_like(g))
    cases = ((dict(error_model="table", device_table=str(table)), "CrossSim 3.2 has no table device model"),
             (dict(error_model="PCMLike"), "not a CrossSim 3.2 model"),
             (dict(noise_model="ReRamCMO", infinite_on_off_ratio=False, rmin=1.2e4, rmax=1e5), "not a CrossSim 3.2 model"))
    for changes, message in cases:
        try: config = InferenceConfig(**changes)
        except (TypeError, ValueError) as error: pytest.fail(f"{changes}: {error}")
        with pytest.raises(ValueError, match=message): config.to_crosssim(tmp_path / "never.json")
    assert not (tmp_path / "never.json").exists()

# --- detection and the field table

def test_is_crosssim_file_by_content(tmp_path):
    assert is_crosssim_file(DATA / "params_64.json") and is_crosssim_file(DATA / "inference_config.py")
    InferenceConfig(adc_bits=8, adc_range_option="MAX").to_file(tmp_path / "ours.json")
    InferenceConfig().to_file(tmp_path / "ours.yaml")
    assert not is_crosssim_file(tmp_path / "ours.json") and not is_crosssim_file(tmp_path / "ours.yaml")
    shutil.copy(DATA / "bitsliced_ramp.json", tmp_path / "renamed.yaml")                  # JSON is YAML: content decides
    assert is_crosssim_file(tmp_path / "renamed.yaml")

def test_field_table_covers_every_setting_of_the_shipped_files():
    table = crosssim_field_table().set_index("path")
    for name in ("default.json", "ISAAC.json", "PRIME.json", "SONOS-TCAS.json"):
        for path in translate_crosssim(CONFIG_DIR / name).leaves:
            key = path if ".vmm." not in path else path.split(".vmm.")[0] + ".vmm.*"
            assert key in table.index, path
    assert table.loc["xbar.device.nonlinear_IV.model", "maps_to"] == "nonlinear_iv"
    assert "current_from_input" in table.loc["xbar.array.parasitics.gate_input", "refused_when"]
