"""Accuracy vs ADC bits for MAX, percentile-99.99 and optimal ADC calibration (issue: ADC calibration).

8-bit weights and DAC; ADC ranges calibrated on 500 training images; mean over `--nruns` programmings (programming
error off: the spread comes from nothing else, so runs are identical unless --alpha-error is set).
Writes nbs/data/calibration_study.csv (plotted in nbs/36_calibration.ipynb) and prints the table.
Usage: python benchmarks/calibration_study.py [--models mnist_cnn fashion_resnet] [--ntest 10000] [--nruns 3]
"""
import argparse, time
from pathlib import Path
import pandas as pd
from crosssim_nb import InferenceConfig, zoo
from crosssim_nb.inference import run_inference

def main(models, ntest, nruns, bits_list, alpha_error):
    rows = []
    for model in models:
        dataset = zoo.info(model)["dataset"]
        for bits in bits_list:
            base = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=bits, adc_range_option="MAX", nruns=nruns,
                                   error_model="generic" if alpha_error else "none", alpha_error=alpha_error)
            for method in ("MAX", "percentile", "optimal"):
                start = time.perf_counter()
                calibration = None if method == "MAX" else method     # run_inference sets CALIBRATED itself when calibrating
                result = run_inference(model, dataset, base, ntest=ntest, progress=False, adc_calibration=calibration)
                rows.append(dict(model=model, adc_bits=bits, method=method if method != "percentile" else "percentile 99.99",
                                 accuracy=result.mean[0], std=result.std[0], float_accuracy=result.float_accuracy[0],
                                 ntest=result.ntest, nruns=result.nruns, seconds=time.perf_counter() - start))
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    out = Path(__file__).parent.parent / "nbs" / "data" / "calibration_study.csv"
    table.to_csv(out, index=False)
    print(table.pivot_table(index=["model", "adc_bits"], columns="method", values="accuracy").round(4).to_string())
    print(f"wrote {out}")

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mnist_cnn", "fashion_resnet"])
    parser.add_argument("--ntest", type=int, default=10000)
    parser.add_argument("--nruns", type=int, default=3)
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 5, 6, 7, 8])
    parser.add_argument("--alpha-error", type=float, default=0.0)
    args = parser.parse_args()
    main(args.models, args.ntest, args.nruns, args.bits, args.alpha_error)
