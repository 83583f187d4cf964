"""CrossSim configurations and presets: every field of every shipped file accounted for, round trips, OFFSET weight bit
slicing (equal to unsliced OFFSET, exact with GRANULAR ranges), CrossSim's edge values, and the CLI flag."""
import json, math, os, subprocess, sys
import numpy as np
import pytest
from crosssim_nb import AnalogCore, InferenceConfig
from crosssim_nb.config import DeviceModel
from crosssim_nb.crosssim_compat import CONFIG_DIR, PRESETS, translate_crosssim, preset_adc_limits

SHIPPED = sorted(p.name for p in CONFIG_DIR.glob("*.json"))

def test_presets_ship_inside_the_package_with_their_licence():
    assert SHIPPED == sorted(PRESETS.values())
    assert "BSD" in (CONFIG_DIR / "LICENSE.md").read_text()

@pytest.mark.parametrize("name", SHIPPED)
def test_every_field_of_a_shipped_file_is_mapped_or_refused(name):
    params = json.loads((CONFIG_DIR / name).read_text())
    translation = translate_crosssim(params)
    report = translation.report().set_index("path")
    leaves = translation.leaves
    assert set(report.index) == set(leaves) and len(leaves) > 60
    assert set(report.status) <= {"mapped", "ignored", "refused"}
    assert (report.detail.str.len() > 0).all()
    refused = set(report.index[report.status == "refused"])
    if name == "SONOS-TCAS.json" and "SONOS" not in DeviceModel.allowed():
        assert refused == {"xbar.device.programming_error.model", "xbar.device.drift_error.model"}
        with pytest.raises(ValueError, match="SONOS device model"): InferenceConfig.from_crosssim(params)
    else:
        assert refused == set()
        config = InferenceConfig.from_crosssim(params)
        # spot checks against the sheet's preset table (device_models §6)
        expected = {"ISAAC.json": dict(nrows_max=128, weight_bits=16, nslices=8, style="OFFSET", adc_bits=9, dac_bits=16, adc_range_option="GRANULAR"),
                    "ISAAC-SarADC.json": dict(adc_type="sar", group_size=128, split_cdac=True, gain_db=100.0, sigma_capacitor=0.0),
                    "PRIME.json": dict(nrows_max=256, weight_bits=8, nslices=2, style="BALANCED", subtract_current_in_xbar=False,
                                       adc_type="ramp", adc_bits=6, input_slice_size=3, adc_per_ibit=True, rmax=2e4),
                    "default.json": dict(nrows_max=1024, weight_bits=0, adc_bits=0, dac_bits=0, rmin=1e3, rmax=1e4),
                    "SONOS-TCAS.json": dict(rmin=35e3, rmax=6e12, error_model="SONOS", drift_model="SONOS", adc_type="ramp")}[name]
        for field, value in expected.items(): assert getattr(config, field) == value, field

def test_unsupported_fields_are_refused_together():
    params = json.loads((CONFIG_DIR / "default.json").read_text())
    params["core"]["complex_input"] = True
    params["xbar"]["device"]["read_noise"] = {"enable": True, "model": "NormalExponentialDevice", "magnitude": 0.1}
    params["xbar"]["adc"]["mvm"]["model"] = "FlashADC"
    params["new_section"] = {"knob": 1}
    with pytest.raises(ValueError) as info: InferenceConfig.from_crosssim(params)
    for path in ("core.complex_input", "xbar.device.read_noise.model", "xbar.adc.mvm.model", "new_section.knob"): assert path in str(info.value)

ROUND_TRIP = [
    InferenceConfig(),
    InferenceConfig.ideal(),
    InferenceConfig(weight_bits=16, nslices=8, style="OFFSET", digital_offset=False, adc_bits=9, adc_range_option="GRANULAR", dac_bits=16,
                    input_bitslicing=True, adc_per_ibit=True, adc_type="sar", group_size=128, sigma_capacitor=0.01, split_cdac=False),
    InferenceConfig(weight_bits=8, nslices=8, adc_bits=6, adc_type="ramp", symmetric_cdac=False, gain_db=0, infinite_on_off_ratio=False,
                    rmax=2e4, icol_max=40, noise_model="generic", alpha_noise=0.01, noise_distribution="uniform", proportional_noise=False),
    InferenceConfig(weight_bits=6, style="OFFSET", adc_bits=5, adc_type="pipeline", sigma_c1=0.01, sigma_c2=0.02, sigma_cpar=0.02,
                    sigma_comparator=0.01, group_size=4, weight_percentile=99.5, error_model="generic", alpha_error=0.03, vread=0.2,
                    clip_conductance=True, nrows_max=0, ncols_max=64),
    InferenceConfig(weight_bits=4, balanced_style="TWO_SIDED", adc_bits=12, adc_type="cyclic", adc_range_option="MAX", use_gpu=False,
                    icol_max_amps=2e-3),
    InferenceConfig(adc_bits=8, stochastic_rounding=True, adc_range_option="MAX", dac_bits=1),
]

@pytest.mark.parametrize("index", range(len(ROUND_TRIP)))
def test_to_crosssim_then_from_crosssim_is_the_identity(index, tmp_path):
    config = ROUND_TRIP[index]
    config.to_crosssim(tmp_path / "params.json")
    back = InferenceConfig.from_crosssim(tmp_path / "params.json")
    for name, value in config.to_dict().items():
        if name in ("icol_max", "icol_max_amps") and config.icol_max_amps:   # written in normalised current, as CrossSim's parameters hold it
            assert back.icol_max == pytest.approx(config.icol_max_amps * config.rmin / config.vread); continue
        assert back.to_dict()[name] == value, name
    assert translate_crosssim(tmp_path / "params.json").report().status.isin(["mapped", "ignored"]).all()

def test_inference_config_dict_uses_crosssim_inference_names():
    legacy = dict(task="cifar10", ntest=500, NrowsMax=576, NcolsMax=128, weight_bits=7, Nslices=2, style="BALANCED", balanced_style="ONE_SIDED",
                  Rmin=2e3, Rmax=2e6, infinite_on_off_ratio=False, error_model="generic", alpha_error=0.01, proportional_error=False,
                  noise_model="generic", alpha_noise=0.005, proportional_noise=True, t_drift=0, drift_model="none", Icol_max=3.6e-5,
                  Icell_max=1.8e-6, adc_bits=7, dac_bits=8, input_bitslicing=True, input_slice_size=2, ADC_per_ibit=True,
                  adc_range_option="max", adc_type="sar", Nruns=3, useGPU=False, digital_bias=False, bias_bits="adc", fold_batchnorm=False)
    config = InferenceConfig.from_crosssim(legacy)
    assert (config.nrows_max, config.ncols_max, config.nslices, config.rmax, config.adc_type, config.nruns) == (576, 128, 2, 2e6, "sar", 3)
    assert config.icol_max == pytest.approx(20.0) and config.adc_per_ibit and not config.digital_bias and config.bias_bits == "adc"
    with pytest.raises(ValueError, match="the PCM device model is not available"): InferenceConfig.from_crosssim({**legacy, "error_model": "PCM"})

def test_presets_and_their_refusals():
    isaac = InferenceConfig.preset("ISAAC")
    assert isaac.to_dict() == {**InferenceConfig.from_crosssim(CONFIG_DIR / "ISAAC.json").to_dict(), "preset": "ISAAC"}   # the file, tagged
    assert InferenceConfig.preset("PRIME", seed=7).seed == 7
    assert preset_adc_limits("SONOS-TCAS") == [-2.9185207451767736, 4.271561324751555]
    if "SONOS" not in DeviceModel.allowed():
        with pytest.raises(ValueError, match="(?s)preset 'SONOS-TCAS' cannot be built yet: .*SONOS device model"): InferenceConfig.preset("SONOS-TCAS")
    with pytest.raises(ValueError, match="allowed: 'ISAAC', 'ISAAC-SarADC', 'PRIME', 'SONOS-TCAS'"): InferenceConfig.preset("TPU")
    assert InferenceConfig.preset("isaac").to_dict() == isaac.to_dict() and InferenceConfig.preset("Prime").nslices == 2   # any case
    with pytest.raises(ValueError, match="preset 'ISAAC': adc_bits='x' must be an integer") as info: InferenceConfig.preset("ISAAC", adc_bits="x")
    assert "cannot be built" not in str(info.value)
    with pytest.raises(ValueError, match="preset 'PRIME': unknown InferenceConfig field 'NrowsMax'"): InferenceConfig.preset("PRIME", NrowsMax=64)
    from crosssim_nb.config import describe_config
    assert describe_config(InferenceConfig.preset("ISAAC-SarADC")).index.str.startswith("preset ISAAC-SarADC").sum() == 3

# --- OFFSET weight bit slicing

@pytest.mark.parametrize("digital_offset", [True, False])
@pytest.mark.parametrize("weight_bits, nslices", [(8, 2), (8, 3), (16, 8), (6, 6)])
def test_offset_slicing_with_ideal_adcs_equals_unsliced_offset(digital_offset, weight_bits, nslices):
    rng = np.random.default_rng(weight_bits + nslices)
    W, x = rng.normal(size=(20, 150)), rng.uniform(-1, 1, (40, 150))
    base = InferenceConfig(weight_bits=weight_bits, style="OFFSET", digital_offset=digital_offset, dac_bits=8, adc_bits=0, nrows_max=64,
                           ncols_max=8, infinite_on_off_ratio=False, rmin=2e3, rmax=2e6)
    unsliced = AnalogCore(W, base).apply(x)
    sliced = AnalogCore(W, base.replace(nslices=nslices)).apply(x)
    np.testing.assert_allclose(sliced, unsliced, rtol=1e-5, atol=1e-5 * np.abs(unsliced).max())
    core = AnalogCore(W, base.replace(nslices=nslices))
    w_max = np.abs(W).max()
    kw = 2 ** (weight_bits - 1) - 1
    np.testing.assert_allclose(core.programmed_weights(), np.rint(W / w_max * kw) / kw * w_max, atol=1e-9)
    assert core.hw_summary()["n_arrays"] == nslices * 3 * 3                # slices x row tiles x column tiles

@pytest.mark.parametrize("digital_offset", [True, False])
@pytest.mark.parametrize("weight_bits, nslices", [(8, 4), (16, 8)])
def test_granular_offset_slices_are_exact_on_worst_case_data(digital_offset, weight_bits, nslices):
    "1-bit input slices, ADC per input bit, adc_bits >= slice bits + 1 + ceil(log2 N), no device errors: the integer result exactly."
    rows, dac_bits = 100, 6
    slice_width = weight_bits // nslices
    adc_bits = slice_width + 1 + math.ceil(math.log2(rows))
    rng = np.random.default_rng(0)
    W = np.vstack([np.ones(rows), -np.ones(rows), rng.choice([-1.0, 1.0], rows), rng.uniform(-1, 1, rows)])
    x = np.vstack([np.ones(rows), -np.ones(rows), np.sign(W[2]), rng.uniform(-1, 1, rows)])
    config = InferenceConfig(weight_bits=weight_bits, nslices=nslices, style="OFFSET", digital_offset=digital_offset, dac_bits=dac_bits,
                             input_bitslicing=True, adc_per_ibit=True, adc_bits=adc_bits, adc_range_option="GRANULAR", nrows_max=0)
    out = AnalogCore(W, config).apply(x)
    kw, kx = 2 ** (weight_bits - 1) - 1, 2 ** (dac_bits - 1) - 1
    integer = np.rint(W * kw) @ np.rint(x * kx).T                        # w_max = x_max = 1
    np.testing.assert_allclose(out, (integer / (kw * kx)).T, rtol=1e-6, atol=1e-6)
    smaller = AnalogCore(W, config.replace(adc_bits=adc_bits - 2)).apply(x)   # too few bits: the worst case clips
    assert np.abs(smaller - out).max() > 0.01

def test_crosssim_edge_values():
    for changes, message in ((dict(weight_bits=1), "every weight would be zero"),
                             (dict(adc_bits=1), r"1 level \(zero\) only"),
                             (dict(adc_bits=1, adc_type="sar"), "split capacitive DAC needs >= 2 bits"),
                             (dict(weight_bits=8, nslices=9), "allowed: 1..8")):
        with pytest.raises(ValueError, match=message): InferenceConfig(**changes)
    W, x = np.random.default_rng(1).normal(size=(5, 30)), np.random.default_rng(2).uniform(-1, 1, (10, 30))
    one_bit_slices = AnalogCore(W, InferenceConfig(weight_bits=8, nslices=8, dac_bits=0)).apply(x)       # nslices == weight_bits
    np.testing.assert_allclose(one_bit_slices, AnalogCore(W, InferenceConfig(weight_bits=8, dac_bits=0)).apply(x), rtol=1e-5, atol=1e-5)

def test_icol_max_amps_is_icol_max_in_amperes():
    W, x = np.random.default_rng(3).uniform(0, 1, (6, 50)), np.ones((4, 50))
    base = InferenceConfig(weight_bits=0, dac_bits=0, rmin=2e3, vread=0.2)
    normalised = AnalogCore(W, base.replace(icol_max=10.0)).apply(x)
    physical = AnalogCore(W, base.replace(icol_max_amps=10.0 * 0.2 / 2e3)).apply(x)
    np.testing.assert_allclose(physical, normalised, rtol=1e-6)
    assert np.abs(normalised - AnalogCore(W, base).apply(x)).max() > 1                   # the limit bites

# --- the command line

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MPLBACKEND": "Agg"}

def test_cli_runs_a_preset_and_refuses_one_it_cannot_build(tmp_path):
    command = [sys.executable, "-m", "crosssim_nb.cli", "run", "--preset", "ISAAC", "--model", "mnist_mlp", "--ntest", "40",
               "--no-progress", "--json", str(tmp_path / "r.json")]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "r.json").read_text())
    assert summary["config"]["nslices"] == 8 and summary["config"]["style"] == "OFFSET" and summary["mean"][0] > 0.8
    if "SONOS" not in DeviceModel.allowed():
        refused = subprocess.run(command[:4] + ["--preset", "SONOS-TCAS", "--ntest", "5"], capture_output=True, text=True, env=ENV, timeout=600)
        assert refused.returncode == 2 and "SONOS device model" in refused.stderr and "Traceback" not in refused.stderr
