"""Accuracy of a zoo model on measured devices over time since programming, with and without drift compensation.

Every device family of the device library on fashion_resnet (default), 8-bit weights/DAC/ADC with optimal calibrated
ADC ranges. The ADCs are calibrated once per device model at programming time (t = 0, that model's programming error
and read noise in place) and keep those ranges as the devices drift, as a deployed chip would; the DAC ranges come
from the same calibration. Each (model, time, compensation) point: mean ± std over --nruns programmings.
Results are appended to --out (JSON lines) as they finish, and finished points are skipped on a restart.
Usage: python benchmarks/device_drift_accuracy.py [--ntest 500] [--nruns 5] [--models SONOS PCMLike ...] [--out FILE]
"""
import argparse, json, time
from pathlib import Path
import pandas as pd
from crosssim_nb import InferenceConfig, zoo
from crosssim_nb.inference import run_inference
from crosssim_nb.device_models import device_config

BASE = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="CALIBRATED")
HOUR, MONTH, YEAR = 1 / 24, 30.0, 365.0
# device: times in days; each device is its preset (device_models.DEVICE_PRESETS: every role it has, inside its measured range)
TIMES = {"ideal devices": [0.0], "SONOS": [0.0, 1.0, 5.0], "PCMJoshi": [0.0], "RRAMMilo": [0.0], "RRAMWan": [0.0],
         "PCMLike": [0.0, HOUR, 1.0, MONTH, YEAR], "Hermes": [0.0, 1.0, MONTH, YEAR], "ReRamWan2022": [0.0, 1.0, 2.0],
         "ReRamCMO": [0.0, HOUR, 1.0, YEAR]}

def time_label(days):
    if days == 0: return "0"
    if days < 1: return f"{days * 24:g} h"
    return f"{days:g} d"

def main(model_name, ntest, nruns, models, out, compensations):
    dataset = zoo.info(model_name)["dataset"]
    done = {}
    if out.exists():
        for line in out.read_text().splitlines():
            row = json.loads(line); done[(row["device"], row["t_days"], row["compensation"])] = row
    for device in models:
        times = TIMES[device]
        config = BASE if device == "ideal devices" else device_config(device, BASE)
        todo = [(t, comp) for t in times for comp in (compensations if t > 0 else ["none"]) if (device, t, comp) not in done]
        if not todo: continue
        start = time.perf_counter()            # calibrate once, at programming time
        limits, ranges = _limits_of(model_name, dataset, config)
        print(f"{device}: calibrated in {time.perf_counter() - start:.1f} s", flush=True)
        for t, comp in todo:
            point = config.replace(t_drift=t, drift_compensation=comp)
            result = run_inference(model_name, dataset, point, ntest=ntest, nruns=nruns, progress=False, adc_limits=limits,
                                   input_ranges=ranges, batch_size=500)
            row = dict(device=device, t_days=t, time=time_label(t), compensation=comp, mean=float(result.mean[0]),
                       std=float(result.std[0]), float_accuracy=float(result.float_accuracy[0]), ntest=result.ntest, nruns=result.nruns,
                       ms_per_image=1e3 * result.seconds_per_image)
            done[(device, t, comp)] = row
            with out.open("a") as f: f.write(json.dumps(row) + "\n")
            print(row, flush=True)
    rows = [row for row in done.values() if row["device"] in models]
    table = pd.DataFrame(rows)
    table["accuracy"] = [f"{100 * m:.2f} ± {100 * s:.2f}" for m, s in zip(table["mean"], table["std"])]
    pivot = table.pivot_table(index=["device", "t_days", "time"], columns="compensation", values="accuracy", aggfunc="first")
    print(pivot.reset_index().drop(columns="t_days").to_string(index=False))

def _limits_of(model_name, dataset, config):
    "Optimal ADC limits and DAC ranges for `config` at t = 0, on 500 training images."
    from crosssim_nb.inference import resolve_model, training_sample
    from crosssim_nb.calibration import calibrate_adc
    resolved = resolve_model(model_name)
    x_calib = training_sample(dataset, resolved.preprocess, 500, config.seed)
    profiling = resolved.network(config.replace(adc_range_option="MAX", t_drift=0.0), calibration_data=x_calib, input_nonnegative=True)
    calibrated = calibrate_adc(profiling, x_calib, method="optimal")
    return calibrated.adc_limits, calibrated.input_ranges

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fashion_resnet")
    parser.add_argument("--models", nargs="+", default=list(TIMES), choices=list(TIMES))
    parser.add_argument("--ntest", type=int, default=500)
    parser.add_argument("--nruns", type=int, default=5)
    parser.add_argument("--compensations", nargs="+", default=["none", "global"])
    parser.add_argument("--out", type=Path, default=Path("device_drift_accuracy.jsonl"))
    args = parser.parse_args()
    main(args.model, args.ntest, args.nruns, args.models, args.out, args.compensations)
