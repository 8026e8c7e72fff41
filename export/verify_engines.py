"""Check the TensorRT engines ``ucofia export --trt`` just built against onnxruntime.

Every engine runs, through the runtime's ``TensorRTSession`` (profile splitting and padding
included), on the very inputs the onnxruntime-vs-PyTorch verification fed its graph
(``export.verify.VerifiedCase``: texts T=1 and T=5, videos V=1 and V=3 padded, the scorer on PyTorch
features at (T,V)=(1,1) and (5,4)); each output is compared with onnxruntime's by the same rule and
tolerances (``max_abs <= tolerance * max(1, max|onnxruntime|)``: features for the encoders,
similarities for the scorer).

Patch selection: TensorRT documents no tie rule for TopK, while the graph's ``hard_topk_indices``
relies on ONNX's (the lower index wins). The indices the engine selected are recovered from its
``patches`` output (nearest PyTorch patch token, as for onnxruntime) and compared with
onnxruntime's, frame by frame: the fraction of frames with identical indices is reported. A frame
that differs where PyTorch's k-th/(k+1)-th score gap is below the tie margin is a tie flip
(reported, left out of the patches comparison); a difference at a larger gap fails. The
verification inputs are drawn with gaps above the margin, so on them any flip is a failure; where
scores really tie in deployment, the engine may pick another of the tied patches (docs/export.md).

Results go to the manifest (``tensorrt.verification``); a failure raises ``EngineVerificationError``
and the export writes nothing.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from export.verify import OutputCheck, SelectionCheck, Tolerances, VerifiedCase, check_output, recover_indices
from runtime.backends.tensorrt_session import TensorRTSession
from runtime.bundle.contract import SCORER, VIDEO_ENCODER, VIDEO_ROLES, GraphSpec

_, _, PATCHES = VIDEO_ROLES

logger = logging.getLogger(__name__)


class EngineVerificationError(RuntimeError):
    """A TensorRT engine's outputs differ from onnxruntime's beyond the tolerances."""

    def __init__(self, message: str, report: EngineVerification) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class EngineVerification:
    tolerances: Tolerances
    checks: list[OutputCheck] = field(default_factory=list)
    selections: list[SelectionCheck] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks) and all(s.passed for s in self.selections)

    def failures(self) -> list[str]:
        out = [f"{c.graph} engine/{c.case}/{c.output}: max_abs {c.max_abs:.3g} > {c.bound:.3g} (vs onnxruntime)"
               for c in self.checks if not c.passed]
        out += [f"video_encoder engine/{s.case}: {s.mismatches - s.tie_flips} frames select other patches than "
                f"onnxruntime at a score gap of {s.worst_flip_margin:.3g} (> tie margin {self.tolerances.tie_margin:g})"
                for s in self.selections if not s.passed]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "against": "onnxruntime CPUExecutionProvider",
                "tolerances": self.tolerances.to_dict(), "seconds": round(self.seconds, 2),
                "checks": [c.to_dict() for c in self.checks],
                "patch_selection": [{**s.to_dict(), "identical_fraction": round(1 - s.mismatches / s.frames, 6)}
                                    for s in self.selections]}


def compare_selection(case: str, engine: torch.Tensor, reference: torch.Tensor, margins: torch.Tensor,
                      tie_margin: float) -> tuple[SelectionCheck, torch.Tensor]:
    """Selected patch indices [N,k] of the engine vs onnxruntime's, with PyTorch's top-k gap per frame.

    Returns the check and the frames [N] whose selections differ.
    """
    differs = (engine != reference).any(dim=-1)
    flips = differs & (margins < tie_margin)
    worst = float(margins[differs].max()) if differs.any() else None
    check = SelectionCheck(case, int(engine.shape[0]), int(differs.sum()), int(flips.sum()), float(margins.min()),
                           worst, not bool((differs & ~flips).any()))
    return check, differs


def _verify_case(session: TensorRTSession, spec: GraphSpec, case: VerifiedCase, tol: Tolerances, top_k: int,
                 patches_per_frame: int, report: EngineVerification) -> None:
    by_name = {tensor.name: role for role, tensor in spec.inputs.items()}
    got = session.run({by_name[name]: array for name, array in case.feeds.items()})
    bound = tol.similarities if spec.key == SCORER else tol.features
    rows = None
    if spec.key == VIDEO_ENCODER and case.tokens is not None:
        engine_indices = recover_indices(got[PATCHES], case.tokens, top_k)
        check, differs = compare_selection(case.case, engine_indices, case.selected, case.margins, tol.tie_margin)
        report.selections.append(check)
        videos = got[PATCHES].shape[0]
        rows = (~differs).reshape(videos, -1).repeat_interleave(patches_per_frame, dim=1).numpy()
    for (role, tensor), reference in zip(spec.outputs.items(), case.outputs):
        keep = rows if role == PATCHES else None
        report.checks.append(check_output(spec.key, case.case, tensor.name, got[role], reference, bound, keep))


def verify_engines(directory: Path, specs: dict[str, GraphSpec], section: dict[str, Any], cases: list[VerifiedCase],
                   tolerances: Tolerances, top_k: int, patches_per_frame: int, trt: ModuleType) -> EngineVerification:
    """Run every engine of ``section`` (the manifest's tensorrt section, plans in ``directory``) on
    ``cases`` and compare with onnxruntime's outputs; one engine is loaded at a time."""
    report = EngineVerification(tolerances)
    start = time.perf_counter()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    for key, spec in specs.items():
        plan = Path(directory) / section["engines"][key]["file"]
        engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if engine is None:
            raise EngineVerificationError(f"TensorRT could not deserialize the {key} engine it just built "
                                          f"({plan.name})", report)
        logger.info(f"running the {key} engine on the verification inputs")
        session = TensorRTSession(spec, engine, trt=trt)
        try:
            for case in (c for c in cases if c.graph == key):
                _verify_case(session, spec, case, tolerances, top_k, patches_per_frame, report)
        finally:
            session.close()
            del session, engine
    report.seconds = time.perf_counter() - start
    return report


def selection_agreement(report: EngineVerification) -> float | None:
    """Fraction of frames whose engine-selected patches equal onnxruntime's (None without video cases)."""
    frames = sum(s.frames for s in report.selections)
    return None if not frames else 1 - sum(s.mismatches for s in report.selections) / frames
