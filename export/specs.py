"""Names, dtypes and shapes of the three bundle graphs, derived from the model config.

This is the one place that fixes the bundle contract's tensor names; everything else (export,
verification, manifest, TensorRT profiles) reads them from here. Torch-free.
"""
from __future__ import annotations

from dataclasses import dataclass

from ucofia.config import UCoFiAConfig

TEXT_ENCODER = "text_encoder"
VIDEO_ENCODER = "video_encoder"
SCORER = "scorer"
GRAPH_KEYS = (TEXT_ENCODER, VIDEO_ENCODER, SCORER)

# Dynamic (batch) axes: number of texts and number of videos.
TEXTS_AXIS = "T"
VIDEOS_AXIS = "V"
DYNAMIC_AXES = (TEXTS_AXIS, VIDEOS_AXIS)

# ONNX opsets: 17 is the first with LayerNormalization (kept whole, and float32 in float16
# bundles); 20 is the last that TensorRT 10's ONNX parser documents.
MIN_OPSET = 17
MAX_OPSET = 20
DEFAULT_OPSET = 17

# Level similarity outputs of the scorer, in contract order.
LEVEL_OUTPUTS = ("video_sentence", "frame_sentence", "patch_word")

Dim = int | str


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, numpy dtype name and shape (strings are dynamic axes)."""

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
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph of the bundle: its manifest key, file name, inputs and outputs in order."""

    key: str
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """torch.onnx ``dynamic_axes`` for every input and output."""
        return {t.name: t.dynamic_axes for t in self.inputs + self.outputs if t.dynamic_axes}

    def to_dict(self) -> dict[str, object]:
        return {"file": self.file, "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs]}


def graph_specs(config: UCoFiAConfig, float_dtype: str = "float32") -> dict[str, GraphSpec]:
    """The three graph specs of a bundle for ``config``; float tensors use ``float_dtype``."""
    d, f, l, p = config.embed_dim, config.max_frames, config.max_words, config.num_pixels
    size = config.clip.image_size
    t, v, fl = TEXTS_AXIS, VIDEOS_AXIS, float_dtype
    sentence = TensorSpec("sentence", fl, (t, d))
    words = TensorSpec("words", fl, (t, l, d))
    video = TensorSpec("video", fl, (v, d))
    frame_features = TensorSpec("frame_features", fl, (v, f, d))
    patches = TensorSpec("patches", fl, (v, p, d))
    return {
        TEXT_ENCODER: GraphSpec(
            TEXT_ENCODER, f"{TEXT_ENCODER}.onnx",
            (TensorSpec("input_ids", "int64", (t, l)),),
            (sentence, words)),
        VIDEO_ENCODER: GraphSpec(
            VIDEO_ENCODER, f"{VIDEO_ENCODER}.onnx",
            (TensorSpec("frames", fl, (v, f, 3, size, size)), TensorSpec("video_mask", fl, (v, f))),
            (video, frame_features, patches)),
        SCORER: GraphSpec(
            SCORER, f"{SCORER}.onnx",
            (sentence, words, video, frame_features, patches),
            tuple(TensorSpec(name, fl, (t, v)) for name in LEVEL_OUTPUTS)),
    }
