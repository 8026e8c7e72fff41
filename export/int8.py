"""Dynamic int8 quantisation of the encoder graphs (``ucofia export --int8``), a lossy CPU option.

``onnxruntime.quantization.quantize_dynamic`` rewrites every MatMul with a constant weight: the
weights become int8 per output channel (stored, in 7 bits: ``reduce_range``), the activations are
quantised to uint8 per tensor at run time (onnxruntime fuses both into ``DynamicQuantizeMatMul``),
so the encoders' GEMMs run on uint8 x int8 kernels (AMX-INT8 / VNNI). Products of two activations
(attention) and the patch embedding convolution stay float32, as does the scorer. Inputs and
outputs keep their float32 contract: the runtime needs nothing new.

Why 7-bit weights: on x86 CPUs without VNNI (AVX2 only, e.g. many AMD EPYC hosts) onnxruntime's
uint8 x int8 kernel adds pairs of products in saturating int16 (``vpmaddubsw``); full-range weights
overflow it (the tiny test model exported on an AVX2-only EPYC failed its 15 %-of-scale check with
errors of about 21 %). With weights in [-64, 63] no
pair can saturate, so the same bundle is correct on every CPU (the cost: one bit of weight
resolution, well inside the int8 tolerances below).

This changes the features (cosine ~0.999 to float32 with random ViT-B/32 weights; real CLIP
activations have outliers that per-tensor uint8 handles worse) and so the hard top-k patch
selection on close scores. The export therefore verifies int8 encoders with loose feature
tolerances and reports selection changes without failing on them; ``ucofia parity`` then measures
what matters, the retrieval metrics against the float32 PyTorch model (``INT8_R1_DELTA``).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from export.verify import Tolerances
from runtime.bundle.contract import TEXT_ENCODER, VIDEO_ENCODER, GraphSpec

INT8_GRAPHS = (TEXT_ENCODER, VIDEO_ENCODER)
# Features within 15 % of their scale (the worst element; random ViT-B/32 weights gave <= 5 %);
# the scorer is float32 and keeps the float32 similarity tolerance; patch selections may change.
INT8_TOLERANCES = Tolerances(features=0.15, similarities=2e-4, tie_margin=math.inf)
# ``ucofia parity`` default for int8 bundles: R@1 within this many points of the float32 model.
INT8_R1_DELTA = 2.0


def quantize_encoders(directory: Path, specs: dict[str, GraphSpec]) -> dict[str, Any]:
    """Quantise the encoder graphs in ``directory`` in place; returns the manifest's ``int8`` section."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    sizes = {}
    for key in INT8_GRAPHS:
        path = directory / specs[key].file
        staged = path.with_name(f".{path.stem}.int8.onnx")
        before = path.stat().st_size
        quantize_dynamic(path, staged, op_types_to_quantize=["MatMul"], per_channel=True, reduce_range=True,
                         weight_type=QuantType.QInt8)
        os.replace(staged, path)
        sizes[key] = {"float32_mb": round(before / 1e6, 1), "int8_mb": round(path.stat().st_size / 1e6, 1)}
    return {"graphs": list(INT8_GRAPHS),
            "scheme": "onnxruntime.quantization.quantize_dynamic: MatMul weights int8 (7-bit range) per output "
                      "channel, activations uint8 per tensor at run time; attention products, convolutions and "
                      "the scorer stay float32",
            "onnxruntime": ort.__version__, "sizes": sizes,
            "parity_r1_delta": INT8_R1_DELTA}
