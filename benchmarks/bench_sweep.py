"""Wall time of a 6-point ADC-bits sweep on mnist_cnn, serial vs a Dask LocalCluster, and the table it produced.

Usage: python benchmarks/bench_sweep.py [--ntest 1000] [--nruns 3] [--workers 2] [--out /tmp/bench_sweep]
"""
import argparse, shutil, time
from pathlib import Path
from crosssim_nb.sweep import run_sweep

def main(ntest, nruns, workers, out):
    notebook = Path(__file__).parent.parent / "sweeps" / "accuracy_vs_adc_bits.ipynb"
    grid = {"adc_bits": [3, 4, 5, 6, 7, 8]}
    parameters = {"model": "mnist_cnn", "ntest": ntest, "nruns": nruns}
    times = {}
    for label, scheduler, n_workers in (("serial", "serial", None), (f"LocalCluster x{workers}", None, workers)):
        folder = Path(out) / label.split()[0]
        shutil.rmtree(folder, ignore_errors=True)
        start = time.perf_counter()
        table = run_sweep(notebook, grid, folder, scheduler=scheduler, n_workers=n_workers, parameters=parameters, progress=False)
        times[label] = time.perf_counter() - start
        print(f"{label}: {times[label]:.1f} s for {len(grid['adc_bits'])} points")
    summary = table.groupby("adc_bits")["accuracy"].agg(["mean", "std", "count"])
    print(summary.to_string())
    print("speed-up:", round(times["serial"] / times[f"LocalCluster x{workers}"], 2))

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ntest", type=int, default=1000); parser.add_argument("--nruns", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2); parser.add_argument("--out", default="/tmp/bench_sweep")
    args = parser.parse_args()
    main(args.ntest, args.nruns, args.workers, args.out)
