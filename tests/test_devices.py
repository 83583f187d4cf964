"""Device library: sampled statistics against the data-sheet formulas, time interpolation, valid ranges, t_drift
semantics, model mixing, the table model's CSV round trip and drift compensation.

References are the sheets' own formulas and printed test values, written out here independently of the library."""
import math, warnings
from pathlib import Path
import numpy as np
import pytest
from crosssim_nb import InferenceConfig
from crosssim_nb.core import AnalogCore
from crosssim_nb.device_models import program_conductances, read_noise_std
from crosssim_nb.device_models import sonos_coefficients, write_device_table

N = 100_000          # devices per level
DAY = 86400.0

def program_levels(config, levels, seed=0, n=N):
    "Program n devices at each level: (len(levels), n) conductances."
    target = np.repeat(np.asarray(levels, dtype=np.float64)[:, None], n, axis=1)
    return program_conductances(target, config, np.random.default_rng(seed))

def check_stats(samples, mean, std, what=""):
    "Sample mean and std per level agree with the expected values within sampling tolerance (5 standard errors)."
    n = samples.shape[1]
    mean, std = np.broadcast_to(mean, samples.shape[:1]), np.broadcast_to(std, samples.shape[:1])
    np.testing.assert_allclose(samples.mean(axis=1), mean, atol=5 * std.max() / math.sqrt(n) + 1e-12, err_msg=f"{what} mean")
    np.testing.assert_allclose(samples.std(axis=1), std, rtol=5 / math.sqrt(2 * n), atol=1e-12, err_msg=f"{what} std")

# ---------------------------------------------------------------- generic
@pytest.mark.parametrize("dependence, distribution", [("independent", "normal"), ("proportional", "uniform"),
                                                      ("inverse_proportional", "normal")])
def test_generic_programming_statistics(dependence, distribution):
    levels = np.array([0.25, 0.5, 1.0])
    alpha = 0.01
    config = InferenceConfig(error_model="generic", alpha_error=alpha, error_dependence=dependence, error_distribution=distribution)
    scale = alpha / (math.sqrt(12) if distribution == "uniform" else 1)
    expected = {"independent": scale * np.ones(3), "proportional": scale * levels, "inverse_proportional": scale / levels}[dependence]
    check_stats(program_levels(config, levels), levels, expected, dependence)

def test_generic_inverse_proportional_leaves_zero_devices():
    config = InferenceConfig(error_model="generic", alpha_error=0.1, error_dependence="inverse_proportional")
    assert np.all(program_levels(config, [0.0], n=1000) == 0)

def test_dependence_aliases():
    assert InferenceConfig(proportional_noise=False).noise_dependence == "independent"
    assert InferenceConfig(error_dependence="inverse_proportional").proportional_error is False
    with pytest.raises(ValueError, match="proportional_error=True contradicts error_dependence='independent'"):
        InferenceConfig(proportional_error=True, error_dependence="independent")
    cfg = InferenceConfig(proportional_error=False)
    assert InferenceConfig.from_dict(cfg.to_dict()) == cfg

# ---------------------------------------------------------------- SONOS (sheet §3.2, reference values §7)
SONOS_CFG = InferenceConfig(rmin=35e3, vread=0.06, error_model="SONOS", noise_model="SONOS")
IMAX = 1e9 * 0.06 / 35e3                                  # 1714.29 nA

def test_sonos_programming_statistics():
    currents = np.array([100.0, 500.0, 1000.0])
    sigma_nA = 19.88665 * (1 - np.exp(-currents / 176.3115))
    check_stats(program_levels(SONOS_CFG, currents / IMAX) * IMAX, currents, sigma_nA, "SONOS t=0")

# sheet §7: mean drift ΔI(I0) and spread σ(I) at the drifted current
SONOS_SHIFT = {1: {100: 1.73521, 500: -0.174337, 1000: -5.06612, 1500: -10.2496},
               2.5: {100: 3.02584, 500: -1.3901, 1000: -12.3225, 1500: -22.5306},
               6: {100: 4.61786, 500: -4.28809, 1000: -24.0386, 1500: -39.4333}}
SONOS_SPREAD = {1: (25.59102, 186.85544), 2.5: (29.885355, 196.23583), 6: (35.39604, 209.91595)}

@pytest.mark.parametrize("t_days", [1, 2.5, 6])
def test_sonos_drift_statistics(t_days):
    config = SONOS_CFG.replace(drift_model="SONOS", t_drift=t_days)
    currents = np.array(list(SONOS_SHIFT[t_days]))
    drifted = currents + np.array(list(SONOS_SHIFT[t_days].values()))
    amplitude, width = SONOS_SPREAD[t_days]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = program_levels(config, currents / IMAX) * IMAX
    assert any("extrapolation" in str(w.message) for w in caught) == (t_days > 5)
    check_stats(samples, drifted, amplitude * (1 - np.exp(-drifted / width)), f"SONOS t={t_days}")

def test_sonos_time_interpolation():
    for day in range(6):                                   # at the measured days: the printed rows
        _, amplitude, width = sonos_coefficients(float(day))
        assert (amplitude, width) == pytest.approx(([19.88665, 25.59102, 28.72753, 31.04318, 33.76214, 34.57909][day],
                                                    [176.3115, 186.85544, 193.56834, 198.90332, 204.77023, 207.34309][day]))
    poly, amplitude, _ = sonos_coefficients(0.5)           # between: linear from the zero polynomial at t = 0
    assert np.polynomial.polynomial.polyval(1000.0, poly) == pytest.approx(-2.53306, rel=1e-5)
    assert amplitude == pytest.approx(22.738835)
    poly, _, _ = sonos_coefficients(3.0)
    assert np.polynomial.polynomial.polyval(500.0, poly) == pytest.approx(-1.26276, rel=1e-5)

def test_sonos_read_noise_std():
    currents = np.array([10, 100, 500, 1000, 1700.0])
    sigma = read_noise_std(currents / IMAX, SONOS_CFG) * IMAX
    np.testing.assert_allclose(sigma, [0.570786, 4.67288, 11.3461, 12.4593, 12.5757], rtol=1e-5)
    assert np.allclose(read_noise_std(currents / IMAX, SONOS_CFG.replace(alpha_noise=2.0)), 2 * sigma / IMAX)

def test_sonos_read_noise_sampled_through_the_core():
    "Reading one row at full scale many times: the output spread is the devices' read noise (σ+² + σ-²)."
    W = np.array([[1.0, 0.0], [0.5, 0.0], [0.25, 0.0]])   # 3 outputs x 2 inputs; w_max = 1
    config = SONOS_CFG.replace(error_model="none", weight_bits=0, dac_bits=0, nrows_max=0)
    core = AnalogCore(W, config)
    x = np.zeros((N, 2), dtype=np.float32); x[:, 0] = 1
    y = core.apply(x)
    per_device = read_noise_std(np.array([1.0, 0.5, 0.25, 0.0]), SONOS_CFG)
    expected = np.sqrt(per_device[:3] ** 2 + per_device[3] ** 2) * core.w_max   # G- = 0 adds nothing (σ(0) = 0)
    check_stats(y.T.astype(np.float64), W[:, 0], expected, "SONOS read through the core")

# ---------------------------------------------------------------- CrossSim polynomial programming errors (§7 values)
@pytest.mark.parametrize("model, rmin, rmax, table", [
    ("PCMJoshi", 40e3, 4e6, {1: 0.360456, 10: 0.866191, 20: 1.08846, 25: 1.06552}),
    ("RRAMMilo", 4450, 20000, {62.5: 4.21313, 100: 3.87162, 150: 3.41627, 224: -0.009107 * 224 + 4.782321}),
    ("RRAMWan", 25.5e3, 1e9, {5: 1.96745, 10: 2.4136, 20: 2.3618, 30: 1.8192}),
])
def test_conductance_polynomial_statistics(model, rmin, rmax, table):
    config = InferenceConfig(error_model=model, rmin=rmin, rmax=rmax, infinite_on_off_ratio=False)
    gmax = 1e6 / rmin
    levels_uS = np.array(list(table))
    check_stats(program_levels(config, levels_uS / gmax) * gmax, levels_uS, np.array(list(table.values())), model)

# ---------------------------------------------------------------- aihwkit PCM-like and HERMES (sheet §3.1, §3.3)
def pcm_like_sheet(x, t_s):
    "(σ_prog/g_max, μ_ν, σ_ν, Q_s, log-time factor) from the aihwkit sheet's formulas."
    prog = (0.26348 + 1.9650 * x - 1.1731 * x ** 2) / 25
    mu = np.clip(-0.0155 * np.log(x) + 0.0244, 0.049, 0.1)
    sd = np.clip(-0.0125 * np.log(x) - 0.0059, 0.008, 0.045)
    qs = np.minimum(0.0088 / np.maximum(x ** 0.65, 1e-3), 0.2)
    t = t_s + 20.0
    return prog, mu, sd, qs, math.sqrt(math.log((t + 250e-9) / (2 * 250e-9)))

def folded_normal(mu, sd):
    "Mean and std of |N(mu, sd)|."
    from scipy.stats import foldnorm
    return foldnorm.mean(mu / sd, scale=sd), foldnorm.std(mu / sd, scale=sd)

def test_pcm_like_programming_statistics():
    levels = np.array([0.25, 0.5, 1.0])
    prog, *_ = pcm_like_sheet(levels, 0)
    np.testing.assert_allclose(prog * 25, [0.26348 + 1.9650 / 4 - 1.1731 / 16, 0.95271, 1.05538], rtol=1e-5)   # sheet's values
    check_stats(program_levels(InferenceConfig(error_model="PCMLike"), levels), levels, prog, "PCMLike programming")

@pytest.mark.parametrize("model", ["PCMLike", "Hermes"])
def test_pcm_drift_exponent_statistics(model):
    "Drift alone: -ln(g(t)/g)/ln((t+t0)/t0) is each device's exponent ν = |μ_ν + σ_ν ξ|."
    t_days, levels = 30.0, np.array([0.003, 0.05, 0.5, 1.0])
    config = InferenceConfig(drift_model=model, t_drift=t_days, **({"rmin": 1e6 / 20.7} if model == "Hermes" else {}))
    t0 = 20.0 if model == "PCMLike" else 300.0
    nu = -np.log(program_levels(config, levels) / levels[:, None]) / math.log((t_days * DAY + t0) / t0)
    if model == "PCMLike": _, mu, sd, _, _ = pcm_like_sheet(levels, 0)
    else:
        mu = np.where(levels < 0.0945, np.clip(-0.0387 * np.log(levels) - 0.0182, 0.0720, 0.13), -0.0436 * levels ** 2 - 0.0126 * levels + 0.0736)
        sd = np.where(levels < 0.3055, np.clip(-0.0117 * np.log(levels) - 0.0057, 0.0091, 0.04), -0.0118 * levels ** 2 + 0.0093 * levels + 0.0073)
    check_stats(nu, *folded_normal(mu, sd), f"{model} drift exponent")

def test_pcm_like_read_noise_grows_with_time():
    levels = np.array([0.005, 0.1, 0.5, 1.0])
    for t_days, factor in ((0, 4.1838), (1 / DAY, 4.1897), (1 / 24, 4.7648), (1, 5.0868), (365, 5.6370)):   # sheet's log-time factors
        config = InferenceConfig(noise_model="PCMLike", t_drift=t_days)
        _, _, _, qs, log_factor = pcm_like_sheet(levels, t_days * DAY)
        assert log_factor == pytest.approx(factor, abs=1e-4)
        np.testing.assert_allclose(read_noise_std(levels, config), levels * qs * log_factor, rtol=1e-12)
    # with drift, Q_s is evaluated at the programmed (t = 0) conductance, the std at the drifted one
    config = InferenceConfig(noise_model="PCMLike", drift_model="PCMLike", t_drift=10.0)
    drifted = levels * 0.7
    np.testing.assert_allclose(read_noise_std(drifted, config, levels), drifted * pcm_like_sheet(levels, 10 * DAY)[3] * pcm_like_sheet(levels, 10 * DAY)[4])

def test_pcm_drift_acts_on_top_of_programming_noise():
    "PCMLike: programming noise at t = 0 and drift on top: std = sqrt(var_prog) * E[factor] roughly; mean = g·E[(t/t0)^-ν]."
    level, t_days = 0.5, 1.0
    _, mu, sd, _, _ = pcm_like_sheet(np.array([level]), 0)
    prog = pcm_like_sheet(np.array([level]), 0)[0][0]
    samples = program_levels(InferenceConfig(error_model="PCMLike", drift_model="PCMLike", t_drift=t_days), [level])[0]
    ratio = math.log((t_days * DAY + 20) / 20)
    z = np.random.default_rng(9).standard_normal(400_000)
    factor = np.exp(-np.abs(mu[0] + sd[0] * z) * ratio)         # Monte-Carlo of the independent sheet formula
    expected_mean = level * factor.mean()
    expected_std = math.sqrt(prog ** 2 * (factor ** 2).mean() + level ** 2 * factor.var())
    assert samples.mean() == pytest.approx(expected_mean, abs=5 * expected_std / math.sqrt(N))
    assert samples.std() == pytest.approx(expected_std, rel=0.02)
    assert samples.std() > prog * factor.mean() * 1.05            # not drift alone: programming noise is there too

# ---------------------------------------------------------------- aihwkit ReRAM (sheet §3.4, §3.5)
def test_reram_wan2022_statistics_and_time_interpolation():
    config = InferenceConfig(error_model="ReRamWan2022", rmin=25e3)              # Gmax = 40 µS: x = G/40 µS
    check_stats(program_levels(config, [0.5, 1.0]) * 40, [20, 40], [2.0229, 1.103], "Wan2022 at 1 s")
    day = program_levels(config.replace(drift_model="ReRamWan2022", t_drift=1.0), [0.5, 1.0]) * 40
    check_stats(day, [20, 40], [3.909, 2.651], "Wan2022 at 1 day")
    between = program_levels(config.replace(drift_model="ReRamWan2022", t_drift=math.sqrt(DAY) / DAY), [0.5]) * 40
    check_stats(between, [20], [(2.0229 + 3.909) / 2], "Wan2022 between 1 s and 1 day (linear in ln t)")

def test_reram_cmo_statistics():
    config = InferenceConfig(error_model="ReRamCMO", infinite_on_off_ratio=False, rmin=1e6 / 88.199997, rmax=1e6 / 9.0)
    gmax = 88.199997
    check_stats(program_levels(config, [50 / gmax]) * gmax, [50], [0.0543], "CMO programming 0.2 %")
    check_stats(program_levels(config.replace(error_model="ReRamCMO2"), [50 / gmax]) * gmax, [50], [0.5757], "CMO programming 2 %")
    hour = config.replace(error_model="none", drift_model="ReRamCMO", noise_model="ReRamCMO", t_drift=1 / 24)
    check_stats(program_levels(hour, [50 / gmax]) * gmax, [50 - 0.72881], [0.75585], "CMO relaxation after 1 h")
    assert read_noise_std(np.array([50 / gmax]), hour)[0] * gmax == pytest.approx(0.2175, abs=1e-4)

# ---------------------------------------------------------------- valid ranges, roles, t_drift semantics
@pytest.mark.parametrize("changes, message", [
    (dict(error_model="SONOS"), "SONOS (error_model): max cell current vread/rmin = 100000.0 nA exceeds the measured 3200 nA"),
    (dict(noise_model="SONOS", rmin=35e3), None),                                      # 2857 nA: fine without drift
    (dict(drift_model="SONOS", rmin=35e3, t_drift=1.0), "drift needs a max cell current vread/rmin below 1800 nA"),
    (dict(error_model="PCMJoshi", rmin=39e3), "PCMJoshi (error_model): Gmax = 1/rmin = 25.64 µS exceeds the measured 25.0 µS"),
    (dict(error_model="RRAMMilo", rmin=4450), "Gmin = 1/rmax must be >= 49.99 µS"),
    (dict(error_model="RRAMMilo", rmin=4000, rmax=2e4, infinite_on_off_ratio=False), "exceeds the measured 225.01 µS"),
    (dict(error_model="RRAMWan", rmin=25e3), "exceeds the measured 39.26 µS"),
    (dict(error_model="Hermes", rmin=40e3), "exceeds the chip's 20.7 µS"),
    (dict(error_model="ReRamWan2022", rmin=20e3), "exceeds the fitted 40.0 µS"),
    (dict(drift_model="ReRamWan2022", rmin=25e3, t_drift=3.0), "outside the measured 1 s ... 2 days"),
    (dict(noise_model="ReRamCMO"), "the device was measured on 9.0...88.199997 µS"),
    (dict(noise_model="PCMJoshi", rmin=40e3), "noise_model='PCMJoshi': PCMJoshi has no read-noise model"),
    (dict(drift_model="RRAMWan"), "drift_model='RRAMWan' is not allowed"),
    (dict(error_model="generic", alpha_error=0.01, t_drift=1.0), "t_drift=1.0 has no effect without a drift model"),
    (dict(noise_model="SONOS", rmin=35e3, noise_distribution="uniform"), "noise_distribution='uniform' applies to the generic model only"),
    (dict(error_model="table"), "the 'table' model needs device_table="),
    (dict(device_table="x.csv"), "has no effect: no role uses the 'table' model"),
])
def test_valid_range_and_role_errors(changes, message):
    if message is None: InferenceConfig(**changes); return
    with pytest.raises(ValueError, match=None) as error: InferenceConfig(**changes)
    assert message in str(error.value), str(error.value)

def test_t_drift_semantics():
    levels = [500 / IMAX]
    base = SONOS_CFG.replace(noise_model="none")
    at_zero = program_levels(base.replace(drift_model="SONOS", t_drift=0.0), levels)
    assert np.array_equal(at_zero, program_levels(base, levels))                    # t = 0: the programming-error model
    # t > 0 with a CrossSim drift model: it replaces the programming error, so another error model is refused by name
    with pytest.raises(ValueError, match="error_model='generic' has no effect at t_drift=1: drift_model='SONOS' replaces"):
        base.replace(error_model="generic", alpha_error=0.5, error_dependence="independent", drift_model="SONOS", t_drift=1.0)
    drifted = program_levels(base.replace(drift_model="SONOS", t_drift=1.0), levels) * IMAX
    check_stats(drifted, 500 - 0.174337, 25.59102 * (1 - np.exp(-(500 - 0.174337) / 186.85544)), "drift replaces programming")
    # drift_model left at 'none': the programming-error model's own drift applies
    assert np.array_equal(program_levels(base.replace(t_drift=1.0), levels, seed=3),
                          program_levels(base.replace(drift_model="SONOS", t_drift=1.0), levels, seed=3))

def test_model_mixing():
    "PCMJoshi programming error, SONOS read noise, PCMLike drift on top, in one configuration."
    config = InferenceConfig(rmin=40e3, vread=0.1, error_model="PCMJoshi", noise_model="SONOS", drift_model="PCMLike", t_drift=0.0)
    gmax, imax = 25.0, 2500.0
    levels = np.array([0.4, 0.8])
    g_uS = levels * gmax
    joshi = np.maximum(-0.00178767 * g_uS ** 2 + 0.07585724 * g_uS + 0.28638599, 0) / gmax
    check_stats(program_levels(config, levels), levels, joshi, "mixed: PCMJoshi programming")
    np.testing.assert_allclose(read_noise_std(levels, config), 12.58037 * (1 - np.exp(-levels * imax / 215.36557)) / imax)
    later = program_levels(config.replace(t_drift=100.0), levels)
    assert np.all(later.mean(axis=1) < 0.95 * levels)                               # PCM drift lowers the conductance

# ---------------------------------------------------------------- table model
def test_table_round_trip_reproduces_generic_model(tmp_path):
    "A CSV made from the generic proportional model (σ = 3 %·G, read 1 %·G) reproduces that model's statistics."
    levels = np.linspace(0, 1, 11)
    path = write_device_table(tmp_path / "device.csv", levels, programming_sigma=0.03 * levels, read_sigma=0.01 * levels,
                              drift={1.0: (-0.02 * levels, 0.05 * levels), 3.0: (-0.04 * levels, 0.07 * levels)})
    table = InferenceConfig(error_model="table", noise_model="table", drift_model="table", device_table=str(path))
    generic = InferenceConfig(error_model="generic", alpha_error=0.03, noise_model="generic", alpha_noise=0.01)
    probe = np.array([0.3, 0.65, 1.0])                                             # on and between the table's levels
    check_stats(program_levels(table, probe), probe, 0.03 * probe, "table programming")
    for config in (table, generic):
        check_stats(program_levels(config, probe, seed=1), probe, 0.03 * probe, config.error_model.value)
    np.testing.assert_allclose(read_noise_std(probe, table), read_noise_std(probe, generic))
    # drift at and between listed times (linear in t, from zero shift and the programming σ at t = 0)
    check_stats(program_levels(table.replace(t_drift=1.0), probe), probe * 0.98, 0.05 * probe, "table drift at 1 day")
    check_stats(program_levels(table.replace(t_drift=2.0), probe), probe * 0.97, 0.06 * probe, "table drift at 2 days")
    check_stats(program_levels(table.replace(t_drift=0.5), probe), probe * 0.99, 0.04 * probe, "table drift at 0.5 day")
    with pytest.raises(ValueError, match="beyond the last measured time, 3.0 days"): table.replace(t_drift=4.0)
    in_uS = write_device_table(tmp_path / "uS.csv", levels * 25, programming_sigma=0.03 * levels * 25, in_uS=True)
    config = InferenceConfig(error_model="table", device_table=str(in_uS), rmin=40e3)   # Gmax = 25 µS
    check_stats(program_levels(config, probe), probe, 0.03 * probe, "table in µS")

def test_table_file_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("conductance,programming_sigma,noise\n0,0.1,0\n1,0.1,0\n")
    with pytest.raises(ValueError, match="unknown column 'noise'"): InferenceConfig(error_model="table", device_table=str(bad))
    bad.write_text("conductance,programming_sigma\n1,0.1\n0,0.1\n")
    with pytest.raises(ValueError, match="strictly ascending"): InferenceConfig(error_model="table", device_table=str(bad))
    bad.write_text("conductance,programming_sigma,drift_shift_t1\n0,0.1,0\n1,0.1,0\n")
    with pytest.raises(ValueError, match="needs both drift_shift_t and drift_sigma_t"): InferenceConfig(error_model="table", device_table=str(bad))
    with pytest.raises(ValueError, match="has no column 'read_sigma'"):
        InferenceConfig(noise_model="table", device_table=str(write_device_table(tmp_path / "p.csv", [0, 1], programming_sigma=[0, 0])))
    with pytest.raises(ValueError, match="file not found"): InferenceConfig(error_model="table", device_table=str(tmp_path / "none.csv"))

# ---------------------------------------------------------------- drift compensation
def tile_gains(core, n_in):
    "Mean |output| per row tile for one-hot inputs, relative to the ideal weights' (the array's mean gain)."
    eye = np.eye(n_in, dtype=np.float32)
    y = core.apply(eye)                                  # row k: the outputs input k makes, (n_in, n_out)
    return np.array([np.abs(y[a:b]).mean() / np.abs(core.matrix.T[a:b]).mean() for a, b in core.row_ranges])

@pytest.mark.parametrize("compensation", ["global", "per_column", "global_ideal"])
def test_compensation_restores_mean_gain(compensation):
    "PCM drift only (no programming or read noise), one year: compensation restores each array's mean gain within 1 %."
    W = np.random.default_rng(0).normal(size=(40, 300))
    config = InferenceConfig(weight_bits=0, dac_bits=0, nrows_max=100, drift_model="PCMLike", t_drift=365.0)
    drifted = tile_gains(AnalogCore(W, config), 300)
    assert np.all(drifted < 0.75)                         # drift loses > 25 % of the gain: the test can fail
    compensated = tile_gains(AnalogCore(W, config.replace(drift_compensation=compensation)), 300)
    np.testing.assert_allclose(compensated, 1.0, atol=0.01)

def test_compensation_with_read_noise_beats_none():
    "With programming error, drift and 1/f read noise (reference reads noisy too), compensation lowers the output error."
    rng = np.random.default_rng(1)
    W, x = rng.normal(size=(32, 256)), rng.uniform(-1, 1, size=(256, 200))
    config = InferenceConfig(weight_bits=8, dac_bits=8, nrows_max=128, error_model="PCMLike", noise_model="PCMLike",
                             drift_model="PCMLike", t_drift=30.0)
    exact = W @ x
    def error(cfg): return np.linalg.norm(AnalogCore(W, cfg) @ x - exact) / np.linalg.norm(exact)
    assert error(config.replace(drift_compensation="global")) < 0.7 * error(config)
    assert error(config.replace(drift_compensation="per_column")) < 0.7 * error(config)

def test_compensation_is_a_digital_gain_per_array_and_offset_mode_works():
    W = np.random.default_rng(2).normal(size=(16, 64))
    base = InferenceConfig(weight_bits=0, dac_bits=0, style="OFFSET", digital_offset=False, drift_model="PCMLike", t_drift=365.0,
                           nrows_max=32)
    gains = tile_gains(AnalogCore(W, base.replace(drift_compensation="global")), 64)
    assert np.all(np.abs(gains - 1) < 0.05) and np.all(tile_gains(AnalogCore(W, base), 64) < 0.8)

# ---------------------------------------------------------------- end to end
def test_compensation_keeps_accuracy_on_a_zoo_model():
    "mnist_mlp on PCM a year after programming: accuracy with global compensation >= without (and drift does hurt)."
    from crosssim_nb.inference import run_inference
    from crosssim_nb.device_models import device_config
    base = device_config("PCMLike", InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=0), t_drift=365.0)
    accuracy = {c: run_inference("mnist_mlp", "mnist", base.replace(drift_compensation=c), ntest=300, nruns=2, progress=False,
                                 calibration_samples=100).mean[0] for c in ("none", "global")}
    fresh = run_inference("mnist_mlp", "mnist", base.replace(t_drift=0.0), ntest=300, nruns=2, progress=False, calibration_samples=100).mean[0]
    assert accuracy["global"] >= accuracy["none"] and accuracy["global"] >= fresh - 0.02, (accuracy, fresh)

@pytest.mark.slow
def test_cli_runs_a_measured_device():
    import subprocess, sys, os
    command = [sys.executable, "-m", "crosssim_nb.cli", "run", "--model", "mnist_mlp", "--ntest", "50", "--no-progress",
               "--error-model", "SONOS", "--noise-model", "SONOS", "--t-drift", "1", "--rmin", "35000", "--vread", "0.06"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "error_model=SONOS" in result.stdout and "t_drift=1.0" in result.stdout
    bad = subprocess.run(command[:-4], capture_output=True, text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert bad.returncode != 0 and "exceeds the measured 3200 nA" in bad.stderr

# ---------------------------------------------------------------- integrity: settings a model ignores, times outside its data
from crosssim_nb.device_models import SONOS, SONOS_MAX_DAYS

@pytest.mark.parametrize("changes, message", [
    (dict(rmin=35e3, vread=0.06, error_model="generic", alpha_error=0.02, drift_model="SONOS", t_drift=1.0),
     "error_model='generic' has no effect at t_drift=1: drift_model='SONOS' replaces the programming error"),
    (dict(rmin=40e3, error_model="PCMJoshi", drift_model="ReRamWan2022", t_drift=1.0),
     "error_model='PCMJoshi' has no effect at t_drift=1: drift_model='ReRamWan2022' replaces"),
    (dict(rmin=35e3, vread=0.06, error_model="SONOS", alpha_error=2.0, drift_model="SONOS", t_drift=1.0),
     "alpha_error=2 has no effect at t_drift=1: SONOS's drift replaces the programming error it scales"),
    (dict(rmin=35e3, vread=0.06, error_model="SONOS", alpha_error=2.0, t_drift=0.5),     # the error model's own drift
     "alpha_error=2 has no effect at t_drift=0.5"),
])
def test_drift_that_replaces_programming_error_refuses_an_error_setting(changes, message):
    with pytest.raises(ValueError) as info: InferenceConfig(**changes)
    assert message in str(info.value), str(info.value)
    InferenceConfig(**{**changes, "t_drift": 0.0})                   # at t = 0 the programming error is what applies
    InferenceConfig(rmin=40e3, error_model="PCMJoshi", drift_model="PCMLike", t_drift=1.0)   # a drift on top keeps it

@pytest.mark.parametrize("changes, message", [
    (dict(rmin=40e3, error_model="PCMJoshi", error_dependence="independent"), "error_dependence='independent' (proportional_error=False) applies to the generic model only"),
    (dict(rmin=40e3, error_model="PCMJoshi", proportional_error=False), "error_dependence='independent'"),
    (dict(rmin=40e3, error_model="PCMJoshi", error_distribution="uniform"), "error_distribution='uniform' applies to the generic model only"),
    (dict(rmin=35e3, noise_model="SONOS", noise_dependence="inverse_proportional"), "noise_dependence='inverse_proportional'"),
    (dict(noise_model="PCMLike", proportional_noise=False), "noise_dependence='independent' (proportional_noise=False)"),
    (dict(drift_compensation="global"), "drift_compensation='global' has no effect: nothing drifts"),
    (dict(error_model="generic", alpha_error=0.02, drift_compensation="per_column"), "nothing drifts (drift_model='none', and error_model='generic'"),
])
def test_settings_a_named_model_ignores_are_refused(changes, message):
    with pytest.raises(ValueError) as info: InferenceConfig(**changes)
    assert message in str(info.value), str(info.value)

def test_drift_compensation_is_allowed_wherever_something_can_drift():
    InferenceConfig(drift_model="PCMLike", drift_compensation="global")                      # t = 0 in a sweep over time
    InferenceConfig(rmin=35e3, vread=0.06, error_model="SONOS", drift_compensation="per_column", t_drift=1.0)

CMO = dict(rmin=1e6 / 88.199997, rmax=1e6 / 9.0, infinite_on_off_ratio=False)

@pytest.mark.parametrize("model", ["ReRamCMO", "ReRamCMO2"])
def test_cmo_drift_before_its_reference_time_is_refused(model):
    for t_drift in (1e-12, 1e-300, 0.5 / DAY):
        with pytest.raises(ValueError) as info: InferenceConfig(**CMO, error_model=model, drift_model=model, t_drift=t_drift)
        assert f"{model} (drift_model): t_drift={t_drift:g} days" in str(info.value) and "reference time, 1 s" in str(info.value)
    with pytest.raises(ValueError, match="before the model's reference time"):                # its own drift, drift_model unset
        InferenceConfig(**CMO, error_model=model, t_drift=1e-12)
    config = InferenceConfig(**CMO, drift_model=model, t_drift=1 / DAY)                         # 1 s: the mean does not move
    g = np.full(N, 0.5)
    drifted = program_conductances(g, config, np.random.default_rng(0))
    check_stats(drifted[None], 0.5, 0.41183342 / 88.199997, "CMO at 1 s")

def test_sonos_drift_is_bounded_in_time():
    base = dict(rmin=35e3, vread=0.06, error_model="SONOS", drift_model="SONOS")
    with pytest.raises(ValueError, match="t_drift=1000000.0 is not allowed; allowed: 0..36525 days"): InferenceConfig(**base, t_drift=1e6)
    for t_drift in (1000.0, SONOS_MAX_DAYS * 1.01):
        with pytest.raises(ValueError) as info: InferenceConfig(**base, t_drift=t_drift)
        assert f"SONOS (drift_model): t_drift={t_drift:g} days is beyond 10 days" in str(info.value), str(info.value)
    config = InferenceConfig(**base, t_drift=SONOS_MAX_DAYS)
    with pytest.warns(UserWarning, match="linear extrapolation"): program_levels(config, [0.5], n=10)

def test_sonos_sigma_at_tiny_read_currents_does_not_cancel():
    "σ_I/Imax = A(1 - exp(-Imax·g/B))/Imax → A·g/B as Imax → 0 (1 - exp(-x) rounds to 0 below x ≈ 1e-17)."
    from types import SimpleNamespace
    tiny = SimpleNamespace(vread=1e-300, rmin=35e3, alpha_error=0.0, alpha_noise=0.0)   # below the config bound: the formula alone
    g = np.array([0.25, 1.0])
    np.testing.assert_allclose(SONOS().programming_std(g, tiny), 19.88665 * g / 176.3115, rtol=1e-12)
    np.testing.assert_allclose(SONOS().read_std(g, tiny), 12.58037 * g / 215.36557, rtol=1e-12)

def test_table_file_integrity(tmp_path):
    "Duplicate times, infinite times, conductances outside 0..1 and bad cells: each names the file, the column and the line."
    cases = [
        ("conductance,drift_shift_t1,drift_sigma_t1,drift_shift_t1.0,drift_sigma_t1.0\n0,0,0.1,0,0.1\n1,0,0.1,0,0.1\n",
         "columns 'drift_shift_t1' and 'drift_shift_t1.0' both give the time 1 days"),
        ("conductance,drift_shift_t1e400,drift_sigma_t1e400\n0,0,0.1\n1,0,0.1\n", "drift times must be finite and > 0 days, got inf"),
        ("conductance,programming_sigma\n-0.1,0.1\n1,0.1\n", "line 2, column 'conductance': -0.1 is not allowed; allowed: 0..1"),
        ("conductance,programming_sigma\n0,0.1\n1.5,0.1\n", "line 3, column 'conductance': 1.5 is not allowed; allowed: 0..1"),
        ("conductance,programming_sigma\n0,0.1\n1,abc\n", "line 3, column 'programming_sigma': 'abc' is not a number"),
        ("conductance,programming_sigma\n0,0.1\n1,\n", "line 3, column 'programming_sigma': '' is not a number"),
        ("conductance,programming_sigma\n0,0.1\n1,inf\n", "line 3, column 'programming_sigma': 'inf' is not a finite number"),
        ("conductance,programming_sigma\n0,0.1\n1,-0.1\n", "line 3, column 'programming_sigma': -0.1 is not allowed; allowed: >= 0"),
        ("conductance,programming_sigma,programming_sigma\n0,0.1,0.1\n1,0.1,0.1\n", "column 'programming_sigma' appears twice"),
        ("conductance,programming_sigma\n0,0.1\n1,0.1,0.3\n", "line 3 has 3 cells, the header 2"),
        ("conductance_uS,programming_sigma\n-1,0.1\n10,0.1\n", "line 2, column 'conductance_uS': -1 is not allowed; allowed: >= 0 µS"),
    ]
    for index, (text, message) in enumerate(cases):
        path = tmp_path / f"table{index}.csv"
        path.write_text(text)
        with pytest.raises(ValueError) as info: InferenceConfig(error_model="table", device_table=str(path))
        assert message in str(info.value) and str(path) in str(info.value), str(info.value)

def test_device_table_write_is_atomic(tmp_path, monkeypatch):
    path = write_device_table(tmp_path / "mine.csv", [0.0, 1.0], programming_sigma=[0.0, 0.02])
    before = path.read_text()
    import pandas as pd
    def full_disk(self, target, *args, **kwargs):
        Path(target).write_text("conductance,progr")              # a partial write, then the disk is full
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(pd.DataFrame, "to_csv", full_disk)
    with pytest.raises(OSError, match="No space left"): write_device_table(path, [0.0, 1.0], programming_sigma=[0.0, 0.05])
    monkeypatch.undo()
    assert path.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["mine.csv"]
