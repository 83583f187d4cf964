"""The tour notebook (the main job, interactively) runs end to end under papermill."""
from pathlib import Path
import papermill as pm

def test_tour_notebook_runs(tmp_path):
    notebook = Path(__file__).parent.parent / "nbs" / "57_tour.ipynb"
    executed = pm.execute_notebook(str(notebook), str(tmp_path / "tour.ipynb"), kernel_name="python3", progress_bar=False,
                                   parameters=dict(ntest=100, nruns=2, bits_sweep=[4, 8]), cwd=str(notebook.parent))
    printed = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert "crosssim_nb inference: mnist_cnn on mnist (100 images), 2 runs" in printed
    images = sum("image/png" in o.get("data", {}) for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= 2                                                   # the plots were drawn
