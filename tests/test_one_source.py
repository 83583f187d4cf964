"""Each fact decided in one place (issue 30): the configuration's predicates and its one column-current limit, the preset
tag that survives changes, and the named random streams (bit-identical to the derivations they replaced; calibration
profiles follow `config.seed`)."""
import dataclasses, zlib
import numpy as np
import pytest
from crosssim_nb import AnalogCore, InferenceConfig
from crosssim_nb.config import describe_config
from crosssim_nb.seeds import seed_stream

SONOS_RANGE = dict(rmin=35e3, vread=0.06)          # inside the SONOS model's measured current range
REFUSED = dict(interleaved_posneg=True, read_noise_method="exact")

# --- hole (a): "is read noise on?" -------------------------------------------------------------------------------------
@pytest.mark.parametrize("noise", [dict(noise_model="generic", alpha_noise=0.01), dict(noise_model="SONOS", **SONOS_RANGE),
                                   dict(noise_model="SONOS", alpha_noise=0.5, **SONOS_RANGE)], ids=["generic", "SONOS-as-measured", "SONOS-scaled"])
def test_interleaved_exact_noise_with_a_current_limit_is_refused_for_every_noisy_model(noise):
    "The core reads I+ and I- apart under exact read noise, so an interleaved line's limit (on I+ - I-) cannot be applied: refused."
    assert InferenceConfig(**noise).has_read_noise
    with pytest.raises(ValueError, match="interleaved_posneg=True with read_noise_method='exact' and icol_max > 0 is not built"):
        InferenceConfig(**REFUSED, icol_max=2.0, **noise)
    InferenceConfig(**REFUSED, **noise)                                      # without the limit: built
    InferenceConfig(interleaved_posneg=True, icol_max=2.0, **noise)          # output-domain noise: built

def test_the_core_agrees_with_the_config_on_read_noise():
    "Where the config says reads are noisy, the core draws noise on every read (two reads differ), and not otherwise."
    W = np.random.default_rng(0).normal(size=(6, 10)).astype(np.float32)
    x = np.random.default_rng(1).uniform(-1, 1, size=(4, 10)).astype(np.float32)
    for config in (InferenceConfig(noise_model="generic"), InferenceConfig(noise_model="SONOS", **SONOS_RANGE),
                   InferenceConfig(noise_model="generic", alpha_noise=0.02)):
        core = AnalogCore(W, config)
        assert (not np.array_equal(core.apply(x), core.apply(x))) == config.has_read_noise, config

# --- hole (b): icol_max in amperes -------------------------------------------------------------------------------------
NOISY = dict(noise_model="generic", alpha_noise=0.01)

def test_a_refused_combination_written_in_amperes_is_refused():
    with pytest.raises(ValueError, match="is not built"): InferenceConfig(**REFUSED, **NOISY, icol_max_amps=1e-4)
    with pytest.raises(ValueError, match="is not built"): InferenceConfig(**REFUSED, **NOISY).replace(icol_max_amps=1e-4)

def test_a_refused_combination_from_a_crosssim_file_in_amperes_is_refused():
    "CrossSim Inference's Icol_max is in amperes (normalised by Icell_max): the same refusal as in normalised current."
    crosssim = {"interleaved_posneg": True, "Icol_max": 3.6e-6, "noise_model": "generic", "alpha_noise": 0.01}
    assert InferenceConfig.from_crosssim(crosssim).icol_max == pytest.approx(2.0)        # 3.6 µA / 1.8 µA
    with pytest.raises(ValueError, match="is not built"): InferenceConfig.from_crosssim(crosssim, read_noise_method="exact")
    without_limit = {k: v for k, v in crosssim.items() if k != "Icol_max"}
    with pytest.raises(ValueError, match="is not built"):
        InferenceConfig.from_crosssim(without_limit, read_noise_method="exact", icol_max_amps=1e-4)

def test_icol_max_amps_is_converted_once_and_kept_as_written():
    config = InferenceConfig(icol_max_amps=2e-4, vread=0.2, rmin=2e3)              # Imax = 0.2 V / 2 kΩ = 1e-4 A
    assert (config.icol_max, config.icol_max_amps) == (2.0, 2e-4)
    assert AnalogCore(np.eye(3, dtype=np.float32), config).config == config      # the core needs no conversion of its own
    assert config.replace(vread=0.1).icol_max == pytest.approx(4.0)              # amperes stay the setting
    assert config.replace(icol_max=5.0).icol_max_amps == 0.0                     # a normalised limit replaces them
    assert InferenceConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="disagree"): InferenceConfig(icol_max_amps=2e-4, icol_max=1.0)

def test_predicates_match_their_definitions():
    for changes in (dict(), dict(rp_row=1.0), dict(rp_col_terminal=3.0), dict(nonlinear_iv="Cubic"), dict(rp_col=1.0, nonlinear_iv="Cubic")):
        config = InferenceConfig(**changes)
        wires = any(getattr(config, f) > 0 for f in ("rp_row", "rp_col", "rp_row_terminal", "rp_col_terminal"))
        assert config.has_wire_resistance == wires and config.has_array_circuit == (wires or config.nonlinear_iv != "none")
    assert InferenceConfig(error_model="SONOS", **SONOS_RANGE).has_programming_error                 # alpha 0 = as measured
    assert not InferenceConfig(error_model="generic").has_programming_error
    assert [InferenceConfig.ideal(**c).needs_input_ranges for c in (dict(), dict(dac_bits=4), dict(adc_bits=4, adc_range_option="MAX"))] \
        == [False, True, True]

# --- the preset is a field ---------------------------------------------------------------------------------------------
def test_the_preset_tag_survives_changes_and_files(tmp_path):
    isaac = InferenceConfig.preset("ISAAC")
    assert isaac.preset == "ISAAC"
    for changed in (isaac.replace(adc_bits=8), dataclasses.replace(isaac, seed=4), InferenceConfig.from_file(isaac.to_file(tmp_path / "a.yaml"))):
        assert changed.preset == "ISAAC"
        assert any(name.startswith("preset ISAAC: note") for name in describe_config(changed).index)
    assert not any(name.startswith("preset") and "note" in name for name in describe_config(InferenceConfig()).index)

# --- one seed room -----------------------------------------------------------------------------------------------------
def test_the_core_draws_from_the_named_streams():
    "A core's programming is the 'programming' stream of (seed, run, name): the derivation the golden files were made with."
    config = InferenceConfig(weight_bits=0, error_model="generic", alpha_error=0.05, proportional_error=False, seed=11)
    W = np.random.default_rng(2).normal(size=(5, 7)).astype(np.float32)
    core = AnalogCore(W, config, name="dense").program(run=3)
    old = np.random.SeedSequence([11, 3, zlib.crc32(b"dense")]).spawn(2)[0]       # the derivation before the seeds module
    assert seed_stream(config, "programming", 3, "dense").generate_state(4).tolist() == old.generate_state(4).tolist()
    again = AnalogCore(W, config, name="dense").program(run=3)
    np.testing.assert_array_equal(core.programmed, again.programmed)
    other = AnalogCore(W, config.replace(seed=12), name="dense").program(run=3)
    assert not np.array_equal(core.programmed, other.programmed)

@pytest.fixture(scope="module")
def small_net():
    keras = pytest.importorskip("keras")
    from crosssim_nb.network import AnalogNetwork
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu", name="hidden"), keras.layers.Dense(4, name="out")])
    model.set_weights([np.random.default_rng(i).normal(size=w.shape).astype(np.float32) for i, w in enumerate(model.get_weights())])
    x = np.random.default_rng(5).uniform(0, 1, size=(40, 12)).astype(np.float32)
    def build(seed):
        return AnalogNetwork.from_keras(model, InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=6, adc_range_option="MAX", seed=seed),
                                        input_ranges={"hidden": 1.0, "out": 8.0})
    return build, x

def test_calibration_profiles_follow_the_config_seed(small_net):
    "The profile keeps a seeded random sample of each layer's ADC inputs: the same seed keeps the same values, another seed others."
    from crosssim_nb.calibration import profile_adc_inputs
    build, x = small_net
    def kept(config_seed, **given): return profile_adc_inputs(build(config_seed), x, capacity=50, **given).values("hidden")
    first, same, other = kept(0), kept(0), kept(1)
    assert first.size == 50                                                   # 40 x 16 inputs, 50 kept: a random choice
    np.testing.assert_array_equal(first, same)
    assert not np.array_equal(np.sort(first), np.sort(other))
    np.testing.assert_array_equal(kept(1, seed=0), first)                     # an explicit seed still wins

# --- one calibration path: the network calibrated in place (`set_adc_limits`) ------------------------------------------
def _small_cnn():
    import keras
    keras.utils.set_random_seed(3)
    inputs = keras.Input((10, 10, 2))
    x = keras.layers.Conv2D(6, 3, activation="relu")(inputs)
    x = keras.layers.DepthwiseConv2D(3, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(4)(x), name="small_cnn")

CALIBRATED_8BIT = dict(adc_bits=8, dac_bits=8, adc_range_option="CALIBRATED", noise_model="generic", alpha_noise=0.02,
                       error_model="generic", alpha_error=0.03, nruns=2)

@pytest.mark.parametrize("changes", [dict(), dict(t_drift=5.0, drift_model="SONOS", error_model="none", alpha_error=0.0, **SONOS_RANGE)], ids=["same-devices", "deployment-drift"])
def test_run_inference_calibrates_one_network_and_equals_the_two_build_path(changes, monkeypatch):
    """`run_inference(adc_calibration=...)` builds the network once and gives it the calibrated limits; its outputs equal,
    bit for bit, the old path's: a profiling network, a calibration, then a second network built from the calibration's
    DAC ranges and ADC limits (same seeds). Under drift calibrated at deployment, the cores are rebuilt on drifted devices."""
    from crosssim_nb.network import AnalogNetwork
    from crosssim_nb.inference import run_inference, calibration_config
    from crosssim_nb.calibration import calibrate_adc
    model, rng = _small_cnn(), np.random.default_rng(4)
    x, y = rng.normal(size=(24, 10, 10, 2)).astype(np.float32), rng.integers(0, 4, 24)
    calibration = rng.normal(size=(40, 10, 10, 2)).astype(np.float32)
    config = InferenceConfig(**(CALIBRATED_8BIT | changes))
    profiling_config, _ = calibration_config(config)
    profiling = AnalogNetwork.from_keras(model, profiling_config, calibration_data=calibration, input_nonnegative=False)
    limits = calibrate_adc(profiling, calibration, method="optimal")
    second = AnalogNetwork.from_keras(model, config, input_ranges=limits.input_ranges, adc_limits=limits.adc_limits,
                                      input_nonnegative=False)
    def evaluated(net, run):                                      # as run_inference evaluates: batches of 8, one pass each
        net.program(run)
        return np.concatenate([net.run(x[a:a + 8], batch_size=8)[0] for a in range(0, len(x), 8)])
    old = np.stack([evaluated(second, run) for run in range(2)])
    builds, from_graph = [], AnalogNetwork.from_graph.__func__
    monkeypatch.setattr(AnalogNetwork, "from_graph", classmethod(lambda cls, *a, **k: builds.append(1) or from_graph(cls, *a, **k)))
    result = run_inference(model, (x, y), config, ntest=None, batch_size=8, calibration_data=calibration, adc_calibration="optimal",
                           input_nonnegative=False, return_outputs=True, progress=False)
    assert len(builds) == 1                                       # one import, one DAC-range profile
    assert result.config.adc_range_option == "CALIBRATED"
    np.testing.assert_array_equal(result.outputs, old)
    assert not np.array_equal(result.outputs[0], result.outputs[1])   # the runs differ: the comparison is not of constants

def test_set_adc_limits_refuses_missing_limits_and_other_hardware():
    "Limits for every CALIBRATED core, named when missing; a core refuses a config that changes more than its ADC range option."
    from crosssim_nb.network import AnalogNetwork
    sample = np.random.default_rng(5).normal(size=(8, 10, 10, 2)).astype(np.float32)
    net = AnalogNetwork.from_keras(_small_cnn(), InferenceConfig(adc_bits=6, adc_range_option="MAX"), calibration_data=sample)
    with pytest.raises(ValueError, match="have no adc_limits"): net.set_adc_limits({})
    core = next(iter(net.cores.values()))
    with pytest.raises(ValueError, match="may change only adc_range_option"): core.set_adc_limits([-1, 1], core.config.replace(adc_bits=4))
