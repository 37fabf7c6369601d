"""The feature network under eager torch, ONNX Runtime and OpenVINO, float32 and INT8, on the same images.

    python benchmarks/runtimes.py data/offline brick 224x224,1232x924

A model is fitted on 4 training images of the category (Lite0, default taps); its feature network (backbone to
the deepest tap, patch features) is exported to ONNX at each size (torch's dynamo exporter), quantised to INT8
with ONNX Runtime's static QDQ quantisation calibrated on 8 good training images, and run by ONNX Runtime and,
when installed (`pip install openvino`), by OpenVINO; and as `runtime="onnxruntime"` runs it (its own export,
cached under $PATCHCORE_CACHE). Prints, per size and runtime, the best of 5 runs in ms (the
runtimes alternate, so slow spells hit all alike), the speed-up over eager torch and the largest feature
difference relative to the largest feature.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image

from patchcore import PatchCore
from patchcore.core.runtime import OnnxRuntimeNetwork, _Traceable
from patchcore.data.categories import load_category
from patchcore.evaluation.evaluate import machine_description
from timing import best_of_interleaved  # benchmarks/timing.py, beside this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("category")
    parser.add_argument("sizes", help="WxH,WxH,...")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    category = load_category(args.root, args.category)
    model = PatchCore(progress=False, coreset_ratio=0.01).fit(list(category.train_images)[:4])
    extractor, network = model.extractor_, _Traceable(model.extractor_).eval()
    folder = Path(tempfile.mkdtemp())
    threads = torch.get_num_threads()
    try:
        import openvino
        core = openvino.Core()
    except ImportError:
        core = None
    print(f"Machine: {machine_description()}, {threads} threads, onnxruntime {ort.__version__}"
          + (f", openvino {openvino.__version__}" if core else ", OpenVINO not installed") + ".\n")
    print("| input | runtime | ms | speed-up over torch | largest feature difference / largest feature |\n"
          "|---|---|---|---|---|")

    def calibration_images(size: tuple[int, int], count: int) -> list[np.ndarray]:
        images = []
        for path in list(category.train_images)[:count]:
            pixels = np.asarray(Image.open(path).convert("RGB").resize(size, Image.BILINEAR))
            images.append(model.preprocessor_.normalise(torch.from_numpy(pixels)[None]).contiguous().numpy())
        return images

    for size in [tuple(map(int, text.split("x"))) for text in args.sizes.split(",")]:
        images = calibration_images(size, 1)[0]
        tensor = torch.from_numpy(images)
        plain = folder / f"{size[0]}x{size[1]}.onnx"
        torch.onnx.export(network, (tensor,), str(plain), input_names=["images"], output_names=["features"],
                          opset_version=18, dynamo=True)
        prepared, quantised = folder / "prepared.onnx", folder / f"{size[0]}x{size[1]}.int8.onnx"
        quant_pre_process(str(plain), str(prepared))

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.feeds = iter([{"images": image} for image in calibration_images(size, 8)])

            def get_next(self):
                return next(self.feeds, None)

        quantize_static(str(prepared), str(quantised), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        channels_last = tensor.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            reference = extractor(channels_last).numpy()
        shipped = OnnxRuntimeNetwork(extractor)  # what runtime="onnxruntime" runs: its own export, cached
        shipped(tensor)
        runners = {"torch (eager)": lambda: extractor(channels_last),
                   "runtime='onnxruntime' (as shipped)": lambda: shipped(tensor)}
        for label, path in (("ONNX Runtime float32", plain), ("ONNX Runtime INT8", quantised)):
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            runners[label] = lambda session=session: session.run(None, {"images": images})[0]
        if core is not None:
            for label, path in (("OpenVINO float32", plain), ("OpenVINO INT8", quantised)):
                compiled = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads})
                runners[label] = lambda compiled=compiled: next(iter(compiled(images).values()))
        with torch.inference_mode():
            outputs = {label: np.asarray(run()) for label, run in runners.items()}
            best = best_of_interleaved(args.repeats, runners)
        for label in runners:
            difference = np.abs(outputs[label] - reference).max() / np.abs(reference).max()
            print(f"| {size[0]} x {size[1]} | {label} | {1000 * best[label]:.1f} | "
                  f"{best['torch (eager)'] / best[label]:.2f} | {difference:.1e} |", flush=True)


if __name__ == "__main__":
    main()
