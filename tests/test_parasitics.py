"""Array circuits through the core and the network.

Independent references: a dense `numpy.linalg.solve` of every array's circuit (`dense_solve`, the voltage-drop form built
cell by cell), the no-parasitics core, the device I-V formulas applied cell by cell, and the im2col path of the network.
"""
import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest

from crosssim_nb.config import InferenceConfig
from crosssim_nb.core import AnalogCore
from crosssim_nb.dac import slice_inputs
from crosssim_nb.parasitics import (Circuit, CubicLaw, RRAMMiloLaw, dense_solve, transfer_matrices, transfer_matrix_sparse,
                                    ladder_solve, InputSourceSolver, drop_matrix, ir_drop)

BASE = InferenceConfig.ideal(weight_bits=8, dac_bits=8)


def relative_error(got, expected):
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def expected_outputs(core, x):
    """The core's outputs computed independently: each physical array of each tile solved densely for each input (slice),
    combined as the periphery does (G+ − G−, input-slice weights, output scale). No ADC, BALANCED, one weight slice."""
    c = core.config
    circuit = Circuit.from_config(c)
    drives = np.asarray(core.dac(np.asarray(x, dtype=np.float32)), dtype=np.float64)
    if c.input_bitslicing: slices = np.asarray(slice_inputs(drives.astype(np.float32), c.dac_bits, core.signed, c.input_slice_size), dtype=np.float64)
    else: slices = drives[None]
    weights = core._input_weights
    law = None if c.nonlinear_iv == "none" else (CubicLaw if c.nonlinear_iv == "Cubic" else RRAMMiloLaw)(vread=c.vread, rmin=c.rmin)
    out = np.zeros((len(x), core.n_out))
    for start, stop in core.row_ranges:
        block = core.programmed[:, :, start:stop]
        for c0, c1 in core.col_ranges:
            Gp, Gn = block[0, 0][:, c0:c1], block[0, 1][:, c0:c1]
            for k, v_slice in enumerate(slices):
                for b, v in enumerate(v_slice[:, start:stop]):
                    if c.interleaved_posneg:
                        current = dense_solve(Gp, circuit, v, Gn, law=law)[0]
                    else:
                        current = dense_solve(Gp, circuit, v, law=law)[0] - dense_solve(Gn, circuit, v, law=law)[0]
                    out[b, c0:c1] += weights[k] * current
    return out * core._scale


TOPOLOGIES = [dict(), dict(interleaved_posneg=True),
              dict(current_from_input=False, input_bitslicing=True),
              dict(current_from_input=False, input_bitslicing=True, interleaved_posneg=True)]


@pytest.mark.parametrize("topology", TOPOLOGIES, ids=["A", "B", "C", "D"])
@pytest.mark.parametrize("terminals", [False, True], ids=["no-terminals", "terminals"])
def test_core_matches_dense_circuit(topology, terminals):
    rng = np.random.default_rng(0)
    W = rng.normal(size=(9, 14))
    x = rng.uniform(-1, 1, (2, 14))
    config = BASE.replace(rp_row=8.0, rp_col=12.0, nrows_max=8, ncols_max=5, **topology,
                          **(dict(rp_row_terminal=20.0, rp_col_terminal=30.0) if terminals else {}))
    core = AnalogCore(W, config)
    assert relative_error(core.apply(x), expected_outputs(core, x)) < 2e-5      # float32 reads of an exact float64 solve


@pytest.mark.parametrize("n, m", [(8, 6), (16, 12)])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("terminals", [(0, 0), (0.03, 0.05), (0.2, 0)])
def test_transfer_matrix_float64_exact(n, m, interleaved, terminals):
    rng = np.random.default_rng(n + 3 * interleaved)
    circuit = Circuit(r_row=0.01, r_col=0.02, t_row=terminals[0], t_col=terminals[1], interleaved=interleaved)
    Gp, Gn = rng.uniform(0, 1, (n, m)), rng.uniform(0, 1, (n, m))
    T = transfer_matrices(circuit, Gp, Gn if interleaved else None)
    np.testing.assert_allclose(T, transfer_matrix_sparse(circuit, Gp, Gn if interleaved else None), rtol=0, atol=1e-12)
    for v in rng.uniform(-1, 1, (3, n)):
        reference = dense_solve(Gp, circuit, v, Gn if interleaved else None)[0]
        assert relative_error(v @ T, reference) < 1e-9


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("rows_max, selected", [(0, "top"), (24, "top"), (24, "bottom")])
def test_ladder_float64_exact(interleaved, rows_max, selected):
    rng = np.random.default_rng(7)
    for r_row, r_col, t_row, t_col in ((0.01, 0.02, 0, 0), (0.01, 0.02, 0.03, 0.05), (0, 0.01, 0.05, 0), (0.02, 0, 0, 0.1)):
        circuit = Circuit(r_row, r_col, t_row, t_col, interleaved, False, rows_max, selected)
        Gp, Gn = rng.uniform(0, 1, (16, 12)), rng.uniform(0, 1, (16, 12))
        v = rng.integers(-1, 2, (3, 16)).astype(float)
        got = ladder_solve(circuit, Gp, v, Gn if interleaved else None)
        reference = np.stack([dense_solve(Gp, circuit, x, Gn if interleaved else None)[0] for x in v])
        assert relative_error(got, reference) < 1e-9


def test_vanishing_resistance_equals_ideal_core():
    rng = np.random.default_rng(1)
    W, x = rng.normal(size=(30, 50)), rng.uniform(-1, 1, (20, 50))
    for extra in (dict(), dict(interleaved_posneg=True), dict(adc_bits=8, adc_range_option="MAX", nrows_max=32)):
        ideal = AnalogCore(W, BASE.replace(**extra)).apply(x)
        zero = AnalogCore(W, BASE.replace(rp_row=0.0, rp_col=0.0, **extra)).apply(x)
        assert np.array_equal(zero, ideal)
        tiny = AnalogCore(W, BASE.replace(rp_row=1e-9, rp_col=1e-9, **extra)).apply(x)
        np.testing.assert_allclose(tiny, ideal, rtol=0, atol=1e-5 * np.abs(ideal).max())


def test_error_grows_with_resistance_and_size():
    rng = np.random.default_rng(2)
    W, x = rng.normal(size=(8, 128)), rng.uniform(0, 1, (16, 128))
    ideal = AnalogCore(W, BASE, input_range=(0, 1)).apply(x)
    def error(**changes): return np.abs(AnalogCore(W, BASE.replace(**changes), input_range=(0, 1)).apply(x) - ideal).mean()
    by_resistance = [error(rp_row=r, rp_col=r, nrows_max=64) for r in (0.2, 0.5, 1.0, 2.0)]
    assert np.all(np.diff(by_resistance) > 0), by_resistance
    by_size = [error(rp_row=1.0, rp_col=1.0, nrows_max=rows) for rows in (16, 32, 64, 128)]
    assert np.all(np.diff(by_size) > 0), by_size


def test_uniform_array_currents_fall_along_the_lines():
    T = transfer_matrices(Circuit(r_row=1e-3, r_col=1e-3, t_col=1e-3), np.full((48, 24), 0.7))
    columns = np.ones(48) @ T
    assert np.all(np.diff(columns) < 0)
    rows = T.sum(axis=1)                    # current each row's drive delivers: less the farther from the ADC
    assert np.all(np.diff(rows) > 0)


@pytest.mark.parametrize("law_name, extra", [("Cubic", dict(vread=1.0)),
                                             ("RRAMMilo", dict(vread=0.5, rmin=4450.0, rmax=20000.0, infinite_on_off_ratio=False))])
@pytest.mark.parametrize("interleaved", [False, True])
def test_nonlinear_without_wires_is_the_formula(law_name, extra, interleaved):
    rng = np.random.default_rng(3)
    W, x = rng.normal(size=(10, 14)), rng.uniform(-1, 1, (6, 14))
    core = AnalogCore(W, BASE.replace(nonlinear_iv=law_name, interleaved_posneg=interleaved, **extra))
    c = core.config
    law = (CubicLaw if law_name == "Cubic" else RRAMMiloLaw)(vread=c.vread, rmin=c.rmin)
    v = np.asarray(core.dac(x.astype(np.float32)), dtype=np.float64)
    Gp, Gn = core.programmed[0, 0], core.programmed[0, 1]
    expected = np.zeros((len(x), core.n_out))
    for b in range(len(x)):
        dv = np.broadcast_to(v[b][:, None], Gp.shape)
        negative = law(Gn, -dv)[0] if interleaved else -law(Gn, dv)[0]   # interleaved: the G- cells are driven with -v
        expected[b] = (law(Gp, dv)[0] + negative).sum(axis=0)
    assert relative_error(core.apply(x), expected * core._scale) < 2e-6


@pytest.mark.parametrize("topology", [dict(), dict(current_from_input=False, input_bitslicing=True, interleaved_posneg=True)], ids=["A", "D"])
def test_nonlinear_with_wires_matches_dense_newton(topology):
    rng = np.random.default_rng(4)
    W, x = rng.normal(size=(6, 10)), rng.uniform(-1, 1, (3, 10))
    core = AnalogCore(W, BASE.replace(nonlinear_iv="Cubic", vread=1.0, rp_row=10.0, rp_col=20.0, **topology))
    assert relative_error(core.apply(x), expected_outputs(core, x)) < 2e-5


def test_nonlinear_residual_below_tolerance():
    rng = np.random.default_rng(5)
    circuit = Circuit(r_row=0.02, r_col=0.03)
    G = rng.uniform(0.3, 1, (10, 7))
    law = RRAMMiloLaw(vread=0.5, rmin=4450.0)
    v = rng.uniform(-1, 1, (2, 10))
    _, dv = InputSourceSolver(circuit, G, None, law, tolerance=1e-10).solve(v)
    R = drop_matrix(circuit, 10, 7)
    for b in range(2):
        residual = dv[0, ..., b].ravel() + R @ law(G, dv[0, ..., b])[0].ravel() - np.repeat(v[b], 7)
        assert np.abs(residual).max() < 1e-9


def test_read_noise_first_order_through_the_core():
    rng = np.random.default_rng(6)
    W = rng.normal(size=(8, 64))
    x = np.repeat(rng.uniform(0, 1, (1, 64)), 3000, axis=0)
    config = BASE.replace(rp_row=0.1, rp_col=0.1, noise_model="generic", alpha_noise=0.05, proportional_noise=False)
    quiet = AnalogCore(W, config.replace(noise_model="none", alpha_noise=0.0), input_range=(0, 1)).apply(x[:1])[0]
    noisy = AnalogCore(W, config, input_range=(0, 1)).apply(x)
    np.testing.assert_allclose(noisy.mean(axis=0), quiet, atol=4 * noisy.std(axis=0).max() / np.sqrt(3000))
    # the std the first-order method predicts: σ·attenuation per cell, summed over the two arrays of each pair
    core = AnalogCore(W, config, input_range=(0, 1))
    v = np.asarray(core.dac(x[:1].astype(np.float32)), dtype=np.float64)[0]
    circuit = Circuit.from_config(config)
    variance = 0
    for part in (0, 1):
        G = core.programmed[0, part]
        T = transfer_matrices(circuit, G)
        attenuation = np.where(G > 1e-12, T / np.where(G > 1e-12, G, 1), 1)
        variance = variance + (v ** 2) @ (0.05 * attenuation) ** 2
    np.testing.assert_allclose(noisy.std(axis=0), np.sqrt(variance) * core._scale, rtol=0.06)


def test_ir_drop_report_consistent():
    rng = np.random.default_rng(8)
    core = AnalogCore(rng.normal(size=(9, 40)), BASE.replace(rp_row=5.0, rp_col=5.0, nrows_max=20))
    report = ir_drop(core, rng.uniform(-1, 1, 40), tile=1, array=1)
    G = core.programmed[0, 1, 20:40]
    np.testing.assert_allclose(report["column_currents"], report["drives"] @ transfer_matrices(Circuit.from_config(core.config), G), rtol=1e-9)
    with pytest.raises(ValueError, match="array=9 is not allowed"): ir_drop(core, np.zeros(40), tile=0, array=9)
    with pytest.raises(ValueError, match="no parasitic wires"): ir_drop(AnalogCore(np.ones((2, 3)), BASE), np.zeros(3))


def test_conv_network_with_parasitics():
    import keras
    import crosssim_nb.convolution as network_module
    from crosssim_nb.network import AnalogNetwork
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(5, 3, activation="relu"), keras.layers.Flatten(),
                              keras.layers.Dense(4)])
    x = np.random.default_rng(9).uniform(-1, 1, (5, 8, 8, 3)).astype(np.float32)
    config = InferenceConfig.ideal(rp_row=0.02, rp_col=0.02)
    net = AnalogNetwork.from_keras(model, config)
    fast = net.predict(x)
    previous = network_module.LIBRARY_CONVOLUTION
    try:
        network_module.LIBRARY_CONVOLUTION = False
        im2col = AnalogNetwork.from_keras(model, config).predict(x)
    finally: network_module.LIBRARY_CONVOLUTION = previous
    np.testing.assert_allclose(fast, im2col, rtol=0, atol=1e-5 * np.abs(im2col).max())
    ideal = AnalogNetwork.from_keras(model, InferenceConfig.ideal()).predict(x)
    assert 1e-4 < relative_error(fast, ideal) < 0.2          # the wires change the result, by a plausible amount
    from crosssim_nb.parasitics import ir_drop_viewer
    viewer = ir_drop_viewer(net)                              # the widget builds and draws its first choice
    assert len(viewer.children) == 2 and viewer.children[0].children[0].options == tuple(net.cores)


@pytest.mark.parametrize("digital_offset", [True, False])
def test_offset_core_matches_dense_circuit(digital_offset):
    "OFFSET arrays: one device per weight; the unit column (digital_offset=False) sits in each array as its last column."
    rng = np.random.default_rng(10)
    W, x = rng.normal(size=(7, 12)), rng.uniform(-1, 1, (3, 12))
    config = BASE.replace(style="OFFSET", digital_offset=digital_offset, rp_row=6.0, rp_col=9.0, rp_col_terminal=4.0, ncols_max=4)
    core = AnalogCore(W, config)
    circuit, c = Circuit.from_config(config), config
    v = np.asarray(core.dac(x.astype(np.float32)), dtype=np.float64)
    expected = np.zeros((len(x), core.n_out))
    for t, (c0, c1) in enumerate(core.col_ranges):
        G = core.programmed[0, 0][:, c0:c1]
        if not digital_offset: G = np.concatenate([G, core.reference[0][:, t:t + 1]], axis=1)
        for b in range(len(x)):
            current = dense_solve(G, circuit, v[b])[0]
            mid = c.gmin + c.grange / 2
            expected[b, c0:c1] = current[:c1 - c0] - (current[-1] if not digital_offset else mid * v[b].sum())
    assert relative_error(core.apply(x), expected * core._scale) < 2e-5


def test_pair_mode_and_slices_with_wires():
    rng = np.random.default_rng(11)
    W, x = rng.normal(size=(9, 14)), rng.uniform(-1, 1, (2, 14))
    core = AnalogCore(W, BASE.replace(rp_row=8.0, rp_col=12.0, nrows_max=8, subtract_current_in_xbar=False))
    assert core.mode == "pair"
    assert relative_error(core.apply(x), expected_outputs(core, x)) < 2e-5
    ideal = AnalogCore(W, BASE.replace(nslices=3)).apply(x)
    tiny = AnalogCore(W, BASE.replace(nslices=3, rp_row=1e-9, rp_col=1e-9)).apply(x)
    np.testing.assert_allclose(tiny, ideal, rtol=0, atol=1e-5 * np.abs(ideal).max())


def test_exact_read_noise_method_with_wires():
    "read_noise_method='exact' draws a noise matrix per vector: with wires it acts through the same first-order weights."
    rng = np.random.default_rng(12)
    W = rng.normal(size=(6, 32))
    x = np.repeat(rng.uniform(0, 1, (1, 32)), 2000, axis=0)
    config = BASE.replace(rp_row=0.1, rp_col=0.1, noise_model="generic", alpha_noise=0.05, proportional_noise=False)
    fast = AnalogCore(W, config, input_range=(0, 1)).apply(x)
    exact = AnalogCore(W, config.replace(read_noise_method="exact"), input_range=(0, 1)).apply(x)
    np.testing.assert_allclose(exact.std(axis=0), fast.std(axis=0), rtol=0.1)
    np.testing.assert_allclose(exact.mean(axis=0), fast.mean(axis=0), atol=5 * fast.std(axis=0).max() / np.sqrt(2000))


@pytest.mark.parametrize("interleaved", [False, True])
def test_separate_source_read_noise_per_read(interleaved):
    "Separate-source arrays solve every read anyway: each vector gets its own noise draw. Tiny wires: the no-wire noise."
    rng = np.random.default_rng(13)
    W = rng.normal(size=(5, 24))
    x = np.repeat(rng.uniform(-1, 1, (1, 24)), 1500, axis=0)
    config = BASE.replace(input_bitslicing=True, interleaved_posneg=interleaved,
                          noise_model="generic", alpha_noise=0.1, proportional_noise=True)
    # no wires: output-domain noise, exact in distribution (proportional noise: clipping at 0 is negligible, so both agree)
    reference = AnalogCore(W, config).apply(x)
    wired = AnalogCore(W, config.replace(current_from_input=False, rp_row=1e-6, rp_col=1e-6)).apply(x)
    np.testing.assert_allclose(wired.std(axis=0), reference.std(axis=0), rtol=0.12)
    np.testing.assert_allclose(wired.mean(axis=0), reference.mean(axis=0), atol=5 * reference.std(axis=0).max() / np.sqrt(1500))
    assert not np.array_equal(wired[0], wired[1])                   # a fresh draw per read


def test_nonlinear_read_noise_per_read():
    "Cubic cells are linear in G: with read noise the output std is exactly sqrt(sum σ²·(v − v³·vread²/4)²) per column."
    rng = np.random.default_rng(14)
    W = rng.normal(size=(5, 20))
    x = np.repeat(rng.uniform(-1, 1, (1, 20)), 2000, axis=0)
    config = BASE.replace(nonlinear_iv="Cubic", vread=1.5, noise_model="generic", alpha_noise=0.1, proportional_noise=True)
    core = AnalogCore(W, config)
    y = core.apply(x)
    v = np.asarray(core.dac(x[:1].astype(np.float32)), dtype=np.float64)[0]
    u = v - 0.25 * 1.5 ** 2 * v ** 3
    variance = (u ** 2) @ ((0.1 * core.programmed[0, 0]) ** 2 + (0.1 * core.programmed[0, 1]) ** 2)
    np.testing.assert_allclose(y.std(axis=0), np.sqrt(variance) * core._scale, rtol=0.08)
    # with (tiny) wires: the chord solve per noisy read gives the same distribution
    wired = AnalogCore(W, config.replace(rp_row=1e-6, rp_col=1e-6)).apply(x[:600])
    np.testing.assert_allclose(wired.std(axis=0), y.std(axis=0), rtol=0.15)
    np.testing.assert_allclose(wired.mean(axis=0), y.mean(axis=0), atol=5 * y.std(axis=0).max() / np.sqrt(600))


NOISY_CIRCUITS = {   # every per-read circuit path that draws read noise (issue 29 item 3)
    "cubic-no-wires": dict(nonlinear_iv="Cubic", vread=1.5),
    "milo-input-source": dict(nonlinear_iv="RRAMMilo", vread=0.4, rmin=4444.4, rmax=20000.0, infinite_on_off_ratio=False,
                              rp_row=20.0, rp_col=20.0),
    "separate-source": dict(current_from_input=False, input_bitslicing=True, rp_row=2.0, rp_col=2.0),
    "separate-source-interleaved-cubic": dict(current_from_input=False, input_bitslicing=True, interleaved_posneg=True,
                                              nonlinear_iv="Cubic", vread=1.0, rp_row=2.0, rp_col=2.0),
}


@pytest.mark.parametrize("name", list(NOISY_CIRCUITS))
def test_circuit_read_noise_does_not_depend_on_the_batch(name):
    """Read noise through non-linear cells or per-read circuit solves is keyed per vector (run, layer, tile, array, the
    vector's global index, read number): a batch of 12 gives what 12 single reads give; a new read number draws anew, and
    12 copies of one vector in one batch each get their own noise."""
    rng = np.random.default_rng(21)
    W = rng.normal(size=(6, 10))
    x = rng.uniform(-1, 1, (12, 10)).astype(np.float32)
    core = AnalogCore(W, BASE.replace(noise_model="generic", alpha_noise=0.05, **NOISY_CIRCUITS[name]), name="layer")
    drives = core.input_drives(x)
    whole = core.apply_drives(drives, first_row=0, read=3)
    singles = np.concatenate([core.apply_drives(drives[i:i + 1], first_row=i, read=3) for i in range(12)])
    uneven = np.concatenate([core.apply_drives(drives[a:b], first_row=a, read=3) for a, b in ((0, 5), (5, 7), (7, 12))])
    scale = np.abs(whole).max()
    np.testing.assert_allclose(singles, whole, rtol=0, atol=1e-6 * scale)      # chord/Newton stop per batch: ~1e-9 apart
    np.testing.assert_allclose(uneven, whole, rtol=0, atol=1e-6 * scale)
    assert np.abs(core.apply_drives(drives, first_row=0, read=4) - whole).max() > 1e-3 * scale   # a fresh read: fresh noise
    same = core.apply_drives(np.repeat(drives[:1], 12, axis=0), first_row=0, read=3)
    assert np.all(same.std(axis=0) > 1e-3 * scale)                                 # one vector, 12 images: 12 draws
    np.testing.assert_allclose(same[0], whole[0], rtol=0, atol=1e-6 * scale)       # image 0 keeps its own draw


def test_solve_failures_are_named_value_errors():
    "Singular wires and a non-linear solve that does not converge raise ParasiticSolveError naming array, wires and the fix."
    from crosssim_nb.parasitics import ParasiticSolveError
    G = np.random.default_rng(22).uniform(0.1, 1, (8, 12))
    with pytest.raises(ParasiticSolveError, match=r"conv1 array 3: the circuit solve failed.*rp_col/rmin=1e\+303.*lower rp_row"):
        transfer_matrices(Circuit(r_col=1e303, t_row=1e303), G, name="conv1 array 3")
    circuit = Circuit(r_row=0.5, r_col=0.5)
    with pytest.raises(ValueError, match=r"dense1 G\+: .*did not converge.*nonlinear_iv='Cubic'.*lower vread"):
        InputSourceSolver(circuit, np.full((6, 4), 1.0), None, CubicLaw(vread=2.0), max_iterations=3, name="dense1 G+").solve(np.ones((1, 6)))
    with pytest.raises(ParasiticSolveError, match=r"dense2: .*did not converge in 1 Newton steps"):
        ladder_solve(Circuit(r_row=0.5, r_col=0.5, current_from_input=False), np.full((6, 4), 1.0), np.full((1, 6), 0.5),
                     law=CubicLaw(vread=2.0), max_iterations=1, name="dense2")
    assert issubclass(ParasiticSolveError, ValueError) and issubclass(ParasiticSolveError, RuntimeError)


def test_solve_cost_is_estimated_and_refused_past_the_budget():
    "The circuit-solve work is estimated from the tiling before anything is solved; past the budget: a ValueError with the numbers."
    from crosssim_nb.parasitics import circuit_solve_cost, transfer_cost
    W = np.random.default_rng(23).normal(size=(1024, 1024)).astype(np.float32)
    config = BASE.replace(rp_row=1.0, rp_col=1.0)
    # 1024² pair of arrays: ~1.1e4 GFLOP (minutes), the default budget (500) refuses it at once, naming the field
    with pytest.raises(ValueError, match=r"need about 1.1e\+04 GFLOP.*parasitic_solve_budget_gflop=500.*nrows_max / ncols_max"):
        AnalogCore(W, config, name="big")
    core = AnalogCore(W[:40, :30], config.replace(nrows_max=16), name="small")
    expected = sum(2 * transfer_cost(stop - start, 40) for start, stop in core.row_ranges) / 1e9
    assert circuit_solve_cost(core) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="raise parasitic_solve_budget_gflop"):
        AnalogCore(W[:40, :30], config.replace(nrows_max=16, parasitic_solve_budget_gflop=expected / 2))
    AnalogCore(W[:40, :30], config.replace(nrows_max=16, parasitic_solve_budget_gflop=expected * 1.01))
    with pytest.raises(ValueError, match="parasitic_solve_budget_gflop=0"):
        config.replace(parasitic_solve_budget_gflop=0)


def test_large_solves_show_progress_small_ones_are_quiet(capfd, monkeypatch):
    "A solve above the progress threshold shows a tqdm bar counting GFLOP; a small one prints nothing."
    import crosssim_nb.parasitics as parasitics
    W = np.random.default_rng(24).normal(size=(20, 30))
    config = BASE.replace(rp_row=1.0, rp_col=1.0)
    capfd.readouterr()
    AnalogCore(W, config)
    assert capfd.readouterr().err == ""
    monkeypatch.setattr(parasitics, "_PROGRESS_GFLOP", 0.0)
    AnalogCore(W, config, name="shown")
    err = capfd.readouterr().err
    assert "wires of shown" in err and "GFLOP" in err, err
