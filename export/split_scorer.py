"""Export and verify the split-int8 scorer graphs (the CPU fast path, ``ucofia.split_int8``).

Three graphs beside the float32 scorer: ``scorer_split_text`` (words -> split text side, once
per query batch), ``scorer_split_video`` (patches -> split patches, once per block of gallery
videos) and ``scorer_split`` (the scorer with the patch-word product on int8 operands, per tile).
They use onnxruntime's com.microsoft ``MatMulIntegerToFloat`` and so run on its CPU provider
only; TensorRT and CUDA use the float32 scorer. Always exported with the torchscript exporter
(the custom symbolic), float32 bundles only.

Verification, on the export sample's features: the onnxruntime chain against the same chain in
PyTorch (same integer maths; float32 similarity tolerance) and against the float32 scorer in
PyTorch (the emulation error, also within the float32 similarity tolerance, or the export fails).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnxruntime as ort
import torch

from export.graphs import split_graph_modules
from export.onnx_export import export_graph
from export.specs import LEVEL_OUTPUTS, SPLIT_SCORER, SPLIT_TEXT, SPLIT_VIDEO, GraphSpec, split_scorer_specs
from export.verify import OutputCheck, Tolerances, _check
from ucofia import split_int8
from ucofia.model import UCoFiA

ORT_CONTRIB_OPSETS = {"com.microsoft": 1}
SCHEME = (f"patch-word product as two int8 slices per row (x ~= scale * (hi + lo / {split_int8.SLICE_BASE})), "
          "hi.hi + hi.lo + lo.hi with exact integer sums (com.microsoft MatMulIntegerToFloat, "
          "onnxruntime CPU); ~16 bits per operand instead of float32's 24")


def export_split_graphs(model: UCoFiA, directory: Path, features: tuple[torch.Tensor, ...], opset: int,
                        say: Callable[[str], None]) -> dict[str, GraphSpec]:
    """Write the three split graphs into ``directory``; ``features`` = (sentence, words, video,
    frame_features, patches) sample tensors. Returns their specs."""
    specs = split_scorer_specs(model.config)
    modules = split_graph_modules(model)
    sentence, words, video, frames, patches = features
    with torch.no_grad():
        text_split = modules[SPLIT_TEXT](words)
        video_split = modules[SPLIT_VIDEO](patches)
    args = {SPLIT_TEXT: (words,), SPLIT_VIDEO: (patches,),
            SPLIT_SCORER: (sentence, *text_split, video, frames, *video_split)}
    for key, spec in specs.items():
        say(f"exporting {spec.file} (CPU int8 fast path)")
        export_graph(modules[key], args[key], directory / spec.file, spec, opset, "torchscript",
                     custom_opsets=ORT_CONTRIB_OPSETS if key == SPLIT_SCORER else None)
    return specs


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_split_chain(sessions: dict[str, ort.InferenceSession], specs: dict[str, GraphSpec],
                    features: list[np.ndarray]) -> list[np.ndarray]:
    """onnxruntime: (sentence, words, video, frame_features, patches) -> the three levels."""
    sentence, words, video, frames, patches = features
    text = sessions[SPLIT_TEXT].run(specs[SPLIT_TEXT].output_names, {"words": words})
    vids = sessions[SPLIT_VIDEO].run(specs[SPLIT_VIDEO].output_names, {"patches": patches})
    values = [sentence, *text, video, frames, *vids]
    feeds = dict(zip(specs[SPLIT_SCORER].input_names, values))
    return sessions[SPLIT_SCORER].run(specs[SPLIT_SCORER].output_names, feeds)


def verify_split_graphs(model: UCoFiA, directory: Path, specs: dict[str, GraphSpec],
                        features: tuple[torch.Tensor, ...], tol: Tolerances) -> list[OutputCheck]:
    """Checks of the split chain against PyTorch (same maths) and the float32 scorer."""
    sessions = {key: _session(directory / spec.file) for key, spec in specs.items()}
    modules = split_graph_modules(model)
    checks: list[OutputCheck] = []
    n_text, n_video = features[1].shape[0], features[2].shape[0]
    for t, v in sorted({(1, 1), (n_text, n_video)}):
        feats = [features[0][:t], features[1][:t], features[2][:v], features[3][:v], features[4][:v]]
        got = run_split_chain(sessions, specs, [x.detach().numpy().astype(np.float32) for x in feats])
        with torch.no_grad():
            split = modules[SPLIT_SCORER](feats[0], *modules[SPLIT_TEXT](feats[1]), feats[2], feats[3],
                                          *modules[SPLIT_VIDEO](feats[4]))
            exact = model.score(*feats)
        for name, g, ref in zip(LEVEL_OUTPUTS, got, split):
            checks.append(_check(SPLIT_SCORER, f"T={t},V={v}", name, np.asarray(g), ref.numpy(), tol.similarities))
        g = np.asarray(got[LEVEL_OUTPUTS.index("patch_word")])
        checks.append(_check(SPLIT_SCORER, f"T={t},V={v}", "patch_word vs float32 scorer", g,
                             exact["patch_word"].numpy(), tol.similarities, note="int8 emulation error"))
    return checks


def manifest_section(specs: dict[str, GraphSpec], checks: list[OutputCheck]) -> dict[str, Any]:
    """The manifest's ``split_scorer`` section."""
    emulation = [c for c in checks if c.note == "int8 emulation error"]
    return {"graphs": list(specs), "scheme": SCHEME, "providers": ["CPUExecutionProvider"],
            "max_abs_vs_float32_scorer": max((c.max_abs for c in emulation), default=None),
            "max_rel_vs_float32_scorer": max((c.max_rel for c in emulation), default=None)}
