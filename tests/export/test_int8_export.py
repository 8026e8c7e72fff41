"""``ucofia export --int8``: dynamically quantised encoder graphs (lossy, onnxruntime CPU)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

import ucofia
from evaluation.compare import Tolerance
from export import export_bundle
from export.int8 import INT8_R1_DELTA
from export.samples import sample_token_ids
from runtime.bundle import load_bundle
from runtime.text import TextEncoder
from ucofia.cli import main as cli
from ucofia.config import tiny_config


@pytest.fixture(scope="module")
def int8_bundle(tiny_export_int8):
    """The session's tiny model exported with int8=True (``tiny_export_int8``, tests/conftest.py)."""
    return tiny_export_int8.model, tiny_export_int8.bundle, tiny_export_int8.manifest


def _ops(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.mark.slow
def test_int8_bundle_quantises_the_encoders_only(int8_bundle):
    _, bundle, manifest = int8_bundle
    section = manifest["int8"]
    assert section["graphs"] == ["text_encoder", "video_encoder"] and section["parity_r1_delta"] == INT8_R1_DELTA
    for key in section["graphs"]:
        ops = _ops(bundle / manifest["graphs"][key]["file"])
        assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops, key
        assert section["sizes"][key]["int8_mb"] < section["sizes"][key]["float32_mb"]
    assert "MatMulInteger" not in _ops(bundle / manifest["graphs"]["scorer"]["file"])
    # the contract is unchanged: float32 inputs and outputs
    assert manifest["dtype"] == "float32"
    assert manifest["graphs"]["text_encoder"]["outputs"][0]["dtype"] == "float32"
    assert manifest["verification"]["passed"]
    # TensorRT's parser is not asked about the onnxruntime-only int8 encoders
    assert set(manifest["trt_check"]["not_checked"]) == {"text_encoder", "video_encoder"}
    assert manifest["trt_check"]["ok"] and manifest["trt_check"]["issues"] == []


@pytest.mark.slow
def test_int8_text_features_stay_close_to_pytorch(int8_bundle):
    model, bundle_dir, _ = int8_bundle
    ids = sample_token_ids(model, 6, torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model.encode_text(ids)
    got = TextEncoder(load_bundle(bundle_dir), "cpu").encode_ids(ids.numpy())
    a, b = got.sentence.astype(np.float64), ref.sentence.double().numpy()
    cosine = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cosine.min() > 0.99
    assert np.abs(a - b).max() > 1e-5  # really quantised: not the float32 graph


@pytest.mark.slow
def test_parity_tolerance_follows_the_manifest(int8_bundle):
    _, _, manifest = int8_bundle
    tol = Tolerance.for_manifest(manifest)
    assert tol.max_abs is None and tol.max_r1_delta == INT8_R1_DELTA and not tol.identical_metrics
    assert Tolerance.for_manifest({"dtype": "float32", "int8": None}) == Tolerance()
    assert Tolerance.for_manifest({"dtype": "float16"}) == Tolerance.for_dtype("float16")


def test_int8_refuses_fp16_and_tensorrt(tmp_path):
    model = ucofia.build_model(tiny_config(), seed=8)
    with pytest.raises(ValueError, match="int8"):
        export_bundle(model, tmp_path / "a", int8=True, fp16=True)
    with pytest.raises(ValueError, match="TensorRT"):
        export_bundle(model, tmp_path / "b", int8=True, trt=True)
    ucofia.save_checkpoint(tmp_path / "ckpt", model)
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "ckpt"), "-o", str(tmp_path / "c"), "--int8", "--fp16"])
    assert result.exit_code == 2 and "--int8" in result.output
    assert not (tmp_path / "c").exists()
