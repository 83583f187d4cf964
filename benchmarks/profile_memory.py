"""Peak memory of profiling keras.applications ResNet50 (random weights, 224 px) ADC inputs (issue: ADC calibration).

The profile keeps a bounded reservoir per layer, so memory does not grow with the number of images; the peak is set
by one batch's im2col chunk and ADC inputs. Usage: python benchmarks/profile_memory.py [--images 500] [--batch-size 16]
Run it under `/usr/bin/time -v` (or read the printed ru_maxrss) to see the peak resident memory.
"""
import argparse, resource, time
import numpy as np
import keras
from crosssim_nb import InferenceConfig
from crosssim_nb.network import AnalogNetwork
from crosssim_nb.calibration import profile_adc_inputs

def main(images, batch_size):
    model = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))
    x = np.random.default_rng(0).uniform(-1, 1, size=(images, 224, 224, 3)).astype(np.float32)
    config = InferenceConfig(weight_bits=8, dac_bits=8, adc_bits=8, adc_range_option="MAX")
    net = AnalogNetwork.from_keras(model, config, calibration_data=x[:16])
    start = time.perf_counter()
    profile = profile_adc_inputs(net, x, batch_size=batch_size)
    kept = sum(r.values.nbytes for groups in profile.adc.values() for r in groups.values())
    print(f"profiled {len(profile.adc)} cores on {images} images in {time.perf_counter() - start:.0f} s; "
          f"samples kept {kept / 2**20:.0f} MiB; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB "
          f"(inputs alone {x.nbytes / 2**30:.2f} GiB)")

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500); parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    main(args.images, args.batch_size)
