"""Every study notebook in sweeps/ runs end to end under papermill with a tiny ntest, and writes its results JSON."""
import json
from pathlib import Path
import pytest
import papermill as pm

SWEEPS = Path(__file__).parent.parent / "sweeps"
TINY = dict(model="mnist_mlp", ntest=40, nruns=2, calibration_samples=60)
POINTS = {
    "accuracy_vs_adc_bits": dict(adc_bits_values=[4, 6]),
    "accuracy_vs_programming_error": dict(alpha_values=[0.0, 0.3]),
    "accuracy_vs_read_noise": dict(alpha_noise_values=[0.0, 0.3]),
    "accuracy_vs_array_rows": dict(nrows_values=[0, 256]),
    "accuracy_vs_bit_slicing": dict(nslices_values=[1, 2], input_bitslicing_values=[False, True]),
    "accuracy_vs_drift_time": dict(t_drift_values=[1.0, 365.0], compensation_values=["none", "global"]),
    "accuracy_vs_parasitics": dict(rp_col_values=[0.0, 2.0], nrows_values=[256]),
    "vit_attention_study": dict(adc_bits_values=[6], alpha_noise_values=[0.05], attention_products_values=["digital", "analog"]),
}
# Settings other than the swept values, per study (the vision transformer study runs its own model, never its stored table).
SETTINGS = {"vit_attention_study": dict(model="fashion_vit", ntest=20, calibration_samples=40, results_table=None)}
# The swept columns of the result rows, point by point in the order each notebook builds its variants from POINTS
# (bit slicing: input mode outer, slice count inner); every point repeats nruns times.
EXPECTED_POINTS = {
    "accuracy_vs_adc_bits": [{"adc_bits": 4}, {"adc_bits": 6}],
    "accuracy_vs_programming_error": [{"alpha_error": 0.0}, {"alpha_error": 0.3}],
    "accuracy_vs_read_noise": [{"alpha_noise": 0.0}, {"alpha_noise": 0.3}],
    "accuracy_vs_array_rows": [{"nrows_max": 0}, {"nrows_max": 256}],
    "accuracy_vs_bit_slicing": [{"nslices": n, "input_bitslicing": b, "adc_per_ibit": b} for b in (False, True) for n in (1, 2)],
    "accuracy_vs_drift_time": [{"t_drift": t, "drift_compensation": c} for t in (1.0, 365.0) for c in ("none", "global")],
    "accuracy_vs_parasitics": [{"nrows_max": 256, "rp_col": 0.0}, {"nrows_max": 256, "rp_col": 2.0}],
    # two lines through (8-bit ADC, no noise) per attention mode: the ADC line, then the read-noise line at 8 bits
    "vit_attention_study": [{"attention_products": mode, "adc_bits": bits, "alpha_noise": alpha}
                            for mode in ("digital", "analog") for bits, alpha in ((6, 0.0), (8, 0.05))],
}

def test_every_study_notebook_is_tested():
    assert sorted(p.stem for p in SWEEPS.glob("*.ipynb")) == sorted(POINTS)
    assert sorted(EXPECTED_POINTS) == sorted(POINTS)

@pytest.mark.parametrize("study", sorted(POINTS))
def test_study_runs_under_papermill(study, tmp_path):
    result_path = tmp_path / "result.json"
    settings = {**TINY, **SETTINGS.get(study, {})}
    pm.execute_notebook(str(SWEEPS / f"{study}.ipynb"), str(tmp_path / "executed.ipynb"), kernel_name="python3",
                        parameters={**settings, **POINTS[study], "result_path": str(result_path)}, progress_bar=False, cwd=str(tmp_path))
    result = json.loads(result_path.read_text())
    n_points = len(EXPECTED_POINTS[study])
    assert len(result["runs"]) == n_points * TINY["nruns"]
    assert result["params"]["ntest"] == settings["ntest"] and result["params"]["model"] == settings["model"]
    row = result["runs"][0]
    assert 0 <= row["accuracy"] <= 1 and row["ntest"] == settings["ntest"] and "float_accuracy" in row
    expected = [point for point in EXPECTED_POINTS[study] for _ in range(TINY["nruns"])]
    assert [{name: run[name] for name in expected[0]} for run in result["runs"]] == expected
    assert [run["run"] for run in result["runs"]] == list(range(TINY["nruns"])) * n_points

def test_a_sweep_point_sets_one_value(tmp_path):
    "The sweep runner sets the scalar parameter (e.g. adc_bits=5): the notebook then evaluates just that point."
    result_path = tmp_path / "result.json"
    pm.execute_notebook(str(SWEEPS / "accuracy_vs_adc_bits.ipynb"), str(tmp_path / "executed.ipynb"), kernel_name="python3",
                        parameters={**TINY, "nruns": 1, "adc_bits": 5, "result_path": str(result_path)}, progress_bar=False)
    runs = json.loads(result_path.read_text())["runs"]
    assert [r["adc_bits"] for r in runs] == [5]

def test_vit_study_reads_its_stored_table(tmp_path):
    "With the defaults the notebook draws the committed full run from its CSV (no simulation); the JSON holds those rows."
    import pandas as pd
    table_path = tmp_path / "table.csv"
    table_path.write_bytes((SWEEPS / "vit_attention_study.csv").read_bytes())
    result_path = tmp_path / "result.json"
    executed = pm.execute_notebook(str(SWEEPS / "vit_attention_study.ipynb"), str(tmp_path / "executed.ipynb"), kernel_name="python3",
                                   parameters={"results_table": str(table_path), "result_path": str(result_path)}, progress_bar=False)
    run_cell = next(cell for cell in executed.cells if cell.source.startswith("table = earlier_runs("))
    assert "read from" in "".join(run_cell["outputs"][0]["text"])
    stored = pd.read_csv(table_path)
    runs = pd.DataFrame(json.loads(result_path.read_text())["runs"])
    assert len(runs) == len(stored) == 20 * 5
    merged = runs.merge(stored, on=["attention_products", "adc_bits", "alpha_noise", "run"], suffixes=("", "_stored"))
    assert len(merged) == len(runs) and (merged["accuracy"] == merged["accuracy_stored"]).all()
