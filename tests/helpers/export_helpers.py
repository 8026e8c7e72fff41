"""Test helpers for the export tests: a fake ``tensorrt`` module that records the build calls, and
the tiny exported bundle the session shares (``tiny_export`` in tests/conftest.py)."""
from __future__ import annotations

import json
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from trt_runtime_fakes import engine_plan, runtime_class

DEVICE = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def fake_flags(*names: str) -> types.SimpleNamespace:
    """A stand-in for ``trt.BuilderFlag`` with only the given members."""
    return types.SimpleNamespace(**{n: n for n in names})


@dataclass(frozen=True)
class TinyExport:
    """A tiny model, its checkpoint and a bundle exported from it. Shared by the whole session: read
    them, never change them (export your own with ``export.export_bundle`` for other options)."""

    model: Any  # ucofia.UCoFiA, eval mode
    checkpoint: Path  # ucofia.save_checkpoint of ``model``
    bundle: Path
    manifest: dict  # bundle/manifest.json
    output: str  # what ``ucofia export`` printed ("" when the bundle came from export_bundle)


def export_tiny(root: Path, seed: int = 0) -> TinyExport:
    """``build_model(tiny_config(), seed)`` saved to ``root/ckpt`` and exported by the command line,
    ``ucofia export root/ckpt -o root/bundle`` (in-process, with its ONNX-vs-PyTorch verification)."""
    from click.testing import CliRunner

    import ucofia
    from ucofia.cli import main
    from ucofia.config import tiny_config

    model = ucofia.build_model(tiny_config(), seed=seed)
    ucofia.save_checkpoint(root / "ckpt", model)
    result = CliRunner().invoke(main, ["export", str(root / "ckpt"), "-o", str(root / "bundle")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((root / "bundle" / "manifest.json").read_text())
    return TinyExport(model, root / "ckpt", root / "bundle", manifest, result.output)


class FakeTRT(types.ModuleType):
    """Records the calls the build makes; version/flags selectable. The engines it builds are JSON
    "plans" (``trt_runtime_fakes.engine_plan``: the parsed ONNX file and the profile set) that its
    Runtime deserializes into runnable fake engines (onnxruntime on the graph), so the export can run
    them; ``perturb`` ({graph: {output: amount}}) builds numerically wrong ones."""

    def __init__(self, version="10.3.0", has_fp16=True, parse_ok=True, build_ok=True, cache_ok=True,
                 cache_kept=True, perturb=None):
        """``cache_ok``: set_timing_cache accepts caches (False: it refuses any non-empty one);
        ``cache_kept``: get_timing_cache returns the cache (False: None)."""
        super().__init__("tensorrt")
        self.__version__ = version
        self.engines: list = []  # fake engines deserialized so far
        self.parsed_dir: Path | None = None  # the directory of the last ONNX file parsed
        flags = ["TF32"] + (["FP16"] if has_fp16 else [])
        self.BuilderFlag = fake_flags(*flags)
        # TensorRT 10.x: EXPLICIT_BATCH = 0 (ignored), STRONGLY_TYPED = 1; 11.x: STRONGLY_TYPED = 0
        self.NetworkDefinitionCreationFlag = (types.SimpleNamespace(EXPLICIT_BATCH=0, STRONGLY_TYPED=1) if has_fp16
                                              else types.SimpleNamespace(STRONGLY_TYPED=0))
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        self.calls: list[tuple] = []
        trt = self

        class Logger:
            WARNING = "W"

            def __init__(self, level):
                self.level = level

        class Cache:
            def __init__(self, data):
                self.data = data

            def serialize(self):
                return self.data + b"+"

        class Config:
            def __init__(self):
                self.cache = None

            def set_memory_pool_limit(self, pool, size):
                trt.calls.append(("pool", pool, size))

            def set_flag(self, flag):
                trt.calls.append(("set_flag", flag))

            def clear_flag(self, flag):
                trt.calls.append(("clear_flag", flag))

            def create_timing_cache(self, data):
                trt.calls.append(("create_cache", bytes(data)))
                return Cache(bytes(data))

            def set_timing_cache(self, cache, ignore_mismatch):
                if cache.data and not cache_ok:
                    return False
                self.cache = cache
                return True

            def get_timing_cache(self):
                return self.cache if cache_kept else None

            def add_optimization_profile(self, profile):
                trt.calls.append(("profile", dict(profile.shapes)))
                self.profile = dict(profile.shapes)

        class Profile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, mn, opt, mx):
                self.shapes[name] = (list(mn), list(opt), list(mx))

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                trt.calls.append(("network", flags))
                return types.SimpleNamespace(onnx=None)

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                if not build_ok:
                    return None
                profile = {name: dict(zip(("min", "opt", "max"), shapes)) for name, shapes in config.profile.items()}
                return engine_plan(network.onnx, profile, perturb=(perturb or {}).get(Path(network.onnx).stem))

        class Parser:
            num_errors = 0 if parse_ok else 1

            def __init__(self, network, logger):
                self.network = network

            def parse_from_file(self, path):
                trt.calls.append(("parse", Path(path).name))
                self.network.onnx, trt.parsed_dir = Path(path).name, Path(path).parent
                return parse_ok

            def get_error(self, i):
                return "In node 3 (TopK): K must be an initializer"

        def not_a_plan(data: bytes):
            return ("engine", data)

        self.Runtime = runtime_class(lambda: trt.parsed_dir, self.engines, not_a_plan)
        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, Parser
        self.nptype = lambda dtype: np.dtype(dtype).type
