"""Float and analog accuracy of every zoo model on its full test set, and simulated vs Keras time per image.

(a) 8-bit weights, DAC and ADC with MAX ranges; (b) the same plus 2 % proportional programming error;
(c) (b) with optimal calibrated ADC ranges (for reference). Mean ± std over --nruns programmings.
Usage: python benchmarks/zoo_accuracy.py [--ntest N] [--nruns 5] [--models ...]
"""
import argparse
import pandas as pd
from crosssim_nb import InferenceConfig, zoo
from crosssim_nb.inference import run_inference

CASE_A = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX")
CASE_B = CASE_A.replace(error_model="generic", alpha_error=0.02)
CASES = {
    "(a) 8-bit W/DAC/ADC, MAX": (CASE_A, None),
    "(b) (a) + 2% prog. error": (CASE_B, None),
    "(c) (b), calibrated ADC": (CASE_B.replace(adc_range_option="CALIBRATED"), "optimal"),
}

def main(models, ntest, nruns):
    rows = []
    for model in models:
        dataset = zoo.info(model)["dataset"]
        for label, (config, calibration) in CASES.items():
            result = run_inference(model, dataset, config, ntest=ntest, nruns=nruns, progress=False, adc_calibration=calibration,
                                   batch_size=500)
            rows.append(dict(model=model, case=label, float_accuracy=result.float_accuracy[0], analog_mean=result.mean[0],
                             analog_std=result.std[0], ntest=result.ntest, nruns=result.nruns,
                             sim_over_keras=result.seconds_per_image / result.float_seconds_per_image,
                             ms_per_image=1e3 * result.seconds_per_image))
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--ntest", type=int, default=None, help="default: the full test set")
    parser.add_argument("--nruns", type=int, default=5)
    args = parser.parse_args()
    main(args.models or list(zoo.list_models().index), args.ntest, args.nruns)
