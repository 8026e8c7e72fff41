"""The bundle contract (format ``ucofia.bundle/1``): what the export writes and the runtime reads.

The one place that names the manifest file and its required fields, the three graphs, the roles
of their inputs and outputs in contract order, the dynamic axes and the ONNX opsets, and that
derives every tensor's dtype and shape from a ``UCoFiAConfig``. ``export/`` writes bundles from
these specs; ``runtime.bundle.loader`` validates them. Torch-free, and imports nothing of the
runtime, so the export can depend on it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ucofia.config import LEVELS, UCoFiAConfig

BUNDLE_FORMAT = "ucofia.bundle/1"
MANIFEST_FILE = "manifest.json"
# Manifest fields every reader needs, and those of its tokenizer section.
REQUIRED_FIELDS = ("format", "config", "fingerprint", "dtype", "graphs", "tokenizer")
TOKENIZER_FIELDS = ("vocab_file", "max_words", "sot_id", "eot_id")
# The manifest's ``dtype``: the float type of a bundle's graph inputs and outputs.
BUNDLE_DTYPES = ("float32", "float16")
# Dtypes a manifest may give a graph tensor (numpy names).
TENSOR_DTYPES = ("float32", "float16", "int64", "int32", "bool")
TOKEN_DTYPE = "int64"

TEXT_ENCODER = "text_encoder"
VIDEO_ENCODER = "video_encoder"
SCORER = "scorer"
GRAPH_KEYS = (TEXT_ENCODER, VIDEO_ENCODER, SCORER)
GRAPH_SUFFIX = ".onnx"

# Roles of the graph inputs and outputs, in contract order. The encoders' outputs are the scorer's
# inputs; the scorer's outputs are the alignment levels.
TEXT_INPUT_ROLES = ("input_ids",)
TEXT_ROLES = ("sentence", "words")
VIDEO_INPUT_ROLES = ("frames", "video_mask")
VIDEO_ROLES = ("video", "frame_features", "patches")
GRAPH_ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    TEXT_ENCODER: (TEXT_INPUT_ROLES, TEXT_ROLES),
    VIDEO_ENCODER: (VIDEO_INPUT_ROLES, VIDEO_ROLES),
    SCORER: (TEXT_ROLES + VIDEO_ROLES, LEVELS),
}

# Dynamic (batch) axes: number of texts and number of videos.
TEXTS_AXIS = "T"
VIDEOS_AXIS = "V"
DYNAMIC_AXES = {TEXTS_AXIS: "number of texts", VIDEOS_AXIS: "number of videos"}
RGB_CHANNELS = 3

# ONNX opsets: 17 is the first with LayerNormalization (kept whole, and float32 in float16
# bundles); 20 is the last that TensorRT 10's ONNX parser documents.
MIN_OPSET = 17
MAX_OPSET = 20
DEFAULT_OPSET = 17

Dim = int | str


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: its name in the graph, numpy dtype name and shape (strings are
    dynamic axes)."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    @property
    def dynamic_axes(self) -> dict[int, str]:
        """{axis index: axis name} of the dynamic axes."""
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def concrete(self, sizes: dict[str, int]) -> tuple[int, ...]:
        """The shape with dynamic axes replaced by ``sizes`` (e.g. {"T": 4, "V": 2})."""
        return tuple(sizes[d] if isinstance(d, str) else d for d in self.shape)

    def to_dict(self) -> dict[str, object]:
        """The tensor's manifest entry."""
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph of a bundle. ``inputs``/``outputs`` map contract roles to tensors, in contract
    order. ``file``: relative to the bundle directory in specs from ``graph_specs``, under the
    bundle's root in a loaded bundle."""

    key: str
    file: Path
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs.values()]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs.values()]

    @property
    def tensors(self) -> tuple[TensorSpec, ...]:
        """Inputs, then outputs."""
        return (*self.inputs.values(), *self.outputs.values())

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """torch.onnx ``dynamic_axes`` for every input and output."""
        return {t.name: t.dynamic_axes for t in self.tensors if t.dynamic_axes}

    def to_dict(self) -> dict[str, object]:
        """The graph's manifest entry (graph files lie in the bundle directory itself)."""
        return {"file": self.file.name, "inputs": [t.to_dict() for t in self.inputs.values()],
                "outputs": [t.to_dict() for t in self.outputs.values()]}


def role_shapes(config: UCoFiAConfig) -> dict[str, tuple[Dim, ...]]:
    """The shape of every role of every graph for ``config``."""
    d, f, l, p = config.embed_dim, config.max_frames, config.max_words, config.num_pixels
    size = config.clip.image_size
    t, v = TEXTS_AXIS, VIDEOS_AXIS
    (input_ids,) = TEXT_INPUT_ROLES
    sentence, words = TEXT_ROLES
    frames, video_mask = VIDEO_INPUT_ROLES
    video, frame_features, patches = VIDEO_ROLES
    return {input_ids: (t, l), sentence: (t, d), words: (t, l, d),
            frames: (v, f, RGB_CHANNELS, size, size), video_mask: (v, f),
            video: (v, d), frame_features: (v, f, d), patches: (v, p, d),
            **dict.fromkeys(LEVELS, (t, v))}


def graph_specs(config: UCoFiAConfig, float_dtype: str = "float32") -> dict[str, GraphSpec]:
    """The three graph specs of a bundle for ``config``; float tensors use ``float_dtype``.

    Every tensor is named after its role.
    """
    shapes = role_shapes(config)

    def tensors(roles: tuple[str, ...]) -> dict[str, TensorSpec]:
        return {role: TensorSpec(role, TOKEN_DTYPE if role in TEXT_INPUT_ROLES else float_dtype, shapes[role])
                for role in roles}

    return {key: GraphSpec(key, Path(f"{key}{GRAPH_SUFFIX}"), tensors(inputs), tensors(outputs))
            for key, (inputs, outputs) in GRAPH_ROLES.items()}
