"""Accuracy of the CrossSim accelerator presets (ISAAC, ISAAC-SarADC, PRIME, SONOS-TCAS) on mnist_cnn and fashion_resnet.

Each preset as its CrossSim file defines it; CALIBRATED presets (PRIME, SONOS-TCAS) get optimal per-layer ADC ranges from
the calibration sample (training split) first. A preset the build cannot simulate (SONOS-TCAS without the SONOS device
model) is listed with the reason. The presets have no random element (ideal devices, error-free converters), so their
Monte-Carlo runs are identical; the 'σ=1%' variants add 1 % capacitor mismatch and comparator offsets, so their runs differ.
Results are appended to --out (CSV) as each finishes; finished rows are skipped when restarted.
Usage: python benchmarks/preset_accuracy.py [--ntest 500] [--nruns 5] [--models ...] [--presets ...] [--out preset_accuracy.csv]
"""
import argparse, time
from pathlib import Path
import pandas as pd
from crosssim_nb import InferenceConfig, zoo
from crosssim_nb.inference import run_inference

VARIANTS = {"ISAAC": ("ISAAC", {}), "ISAAC-SarADC": ("ISAAC-SarADC", {}), "PRIME": ("PRIME", {}), "SONOS-TCAS": ("SONOS-TCAS", {}),
            "ISAAC-SarADC σ=1%": ("ISAAC-SarADC", dict(sigma_capacitor=0.01, sigma_comparator=0.01)),
            "PRIME σ=1%": ("PRIME", dict(sigma_capacitor=0.01, sigma_comparator=0.01))}

def main(models, presets, ntest, nruns, out):
    out = Path(out)
    done = pd.read_csv(out) if out.is_file() else pd.DataFrame(columns=["model", "preset"])
    for model in models:
        dataset = zoo.info(model)["dataset"]
        for label in presets:
            if ((done["model"] == model) & (done["preset"] == label)).any(): continue
            name, changes = VARIANTS[label]
            row = dict(model=model, preset=label, ntest=ntest)
            try: config = InferenceConfig.preset(name, **changes, nruns=nruns)
            except ValueError as error:
                row.update(status="refused", reason=str(error).splitlines()[-1].strip())
            else:
                start = time.perf_counter()
                calibration = "optimal" if config.adc_bits and config.adc_range_option == "CALIBRATED" else None
                result = run_inference(model, dataset, config, ntest=ntest, nruns=nruns, progress=False, adc_calibration=calibration,
                                       batch_size=250)
                row.update(status="ok", float_accuracy=result.float_accuracy[0], analog_mean=result.mean[0], analog_std=result.std[0],
                           analog_min=result.accuracies[:, 0].min(), analog_max=result.accuracies[:, 0].max(), nruns=result.nruns,
                           calibration=calibration or "-", seconds=round(time.perf_counter() - start, 1))
            print(row, flush=True)
            done = pd.concat([done, pd.DataFrame([row])], ignore_index=True)
            done.to_csv(out, index=False)
    print(done.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return done

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mnist_cnn", "fashion_resnet"])
    parser.add_argument("--presets", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--ntest", type=int, default=500)
    parser.add_argument("--nruns", type=int, default=5)
    parser.add_argument("--out", default="preset_accuracy.csv")
    args = parser.parse_args()
    main(args.models, args.presets, args.ntest, args.nruns, args.out)
