"""Static TensorRT check and the TensorRT build/load logic (with a fake ``tensorrt`` module).

Nothing here needs TensorRT or a GPU except ``test_real_tensorrt_build``, which skips without them.
"""
from __future__ import annotations

import json
import types

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.specs import SCORER, TEXT_ENCODER, VIDEO_ENCODER, graph_specs
from export.tensorrt_build import (AxisRange, EngineMismatchError, TensorRTError, TrtBuildOptions,
                                   build_engines, compatibility_problem, input_profiles, load_engine,
                                   precision_plan)
from export.trt_check import check_graphs, check_model
from ucofia.config import tiny_config

from export_helpers import DEVICE, FakeTRT, fake_flags as _fake_flags


# ---- static check ---------------------------------------------------------------------------
def _model(nodes, inputs, outputs, initializers=(), opset=17, domains=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=opsets)


def _vi(name, elem=TensorProto.FLOAT, shape=("N", 8)):
    return helper.make_tensor_value_info(name, elem, list(shape))


def _errors(model, name="g"):
    issues, _ = check_model(model, name)
    return [i for i in issues if i.severity == "error"], [i for i in issues if i.severity == "warning"]


def test_good_graph_passes():
    k = numpy_helper.from_array(np.array([3], dtype=np.int64), "k")
    nodes = [helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=-1, name="topk_ok"),
             helper.make_node("Softmax", ["v"], ["y"], axis=-1, name="softmax")]
    model = _model(nodes, [_vi("x")], [_vi("y", shape=("N", 3))], [k])
    errors, warnings = _errors(model)
    assert errors == [] and warnings == []


def test_topk_with_runtime_k_is_flagged_with_node_name():
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "one"], ["k"], axis=0, name="gather_k"),
             helper.make_node("Unsqueeze", ["k", "zero"], ["k1"], name="unsq"),
             helper.make_node("TopK", ["x", "k1"], ["v", "i"], axis=-1, name="dynamic_topk")]
    inits = [numpy_helper.from_array(np.array(1, dtype=np.int64), "one"),
             numpy_helper.from_array(np.array([0], dtype=np.int64), "zero")]
    model = _model(nodes, [_vi("x")], [_vi("v")], inits)
    errors, _ = _errors(model)
    assert len(errors) == 1
    assert errors[0].node == "dynamic_topk" and errors[0].op == "TopK" and "'K'" in errors[0].message


def test_topk_k_from_constant_node_and_unsorted():
    nodes = [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array([2], np.int64)),
                              name="kconst"),
             helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=-1, sorted=0, name="unsorted_topk")]
    errors, _ = _errors(_model(nodes, [_vi("x")], [_vi("v", shape=("N", 2))]))
    assert [e.node for e in errors] == ["unsorted_topk"] and "sorted" in errors[0].message


@pytest.mark.parametrize("case", ["sequence", "custom", "unsupported", "ellipsis", "argmax_last",
                                  "int64_io", "opset", "slice_axes"])
def test_bad_graphs_are_flagged(case):
    x, y = _vi("x"), _vi("y")
    inits, domains, opset = [], [], 17
    if case == "sequence":
        nodes = [helper.make_node("SequenceConstruct", ["x"], ["seq"], name="seq"),
                 helper.make_node("SequenceAt", ["seq", "zero"], ["y"], name="seq_at")]
        inits = [numpy_helper.from_array(np.array(0, dtype=np.int64), "zero")]
    elif case == "custom":
        nodes = [helper.make_node("FancyOp", ["x"], ["y"], domain="com.example", name="fancy")]
        domains = ["com.example"]
    elif case == "unsupported":
        nodes = [helper.make_node("Unique", ["x"], ["y"], name="uniq")]
    elif case == "ellipsis":
        nodes = [helper.make_node("Einsum", ["x", "x"], ["y"], equation="...i,...i->...i", name="ein")]
    elif case == "argmax_last":
        nodes = [helper.make_node("ArgMax", ["x"], ["y"], axis=-1, select_last_index=1, name="am")]
        y = _vi("y", TensorProto.INT64, ("N", 1))
    elif case == "int64_io":
        nodes = [helper.make_node("ArgMax", ["x"], ["y"], axis=-1, name="am")]
        y = _vi("y", TensorProto.INT64, ("N", 1))
    elif case == "opset":
        nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
        opset = 21
    else:  # Slice whose axes come from the input's shape
        nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
                 helper.make_node("Slice", ["x", "s", "s", "s"], ["y"], name="slice_dyn_axes")]
    model = _model(nodes, [x], [y], inits, opset=opset, domains=domains)
    errors, _ = _errors(model)
    assert errors, f"{case}: expected an error"
    text = " ".join(str(e) for e in errors)
    expected = {"sequence": "sequence", "custom": "plugin", "unsupported": "not supported",
                "ellipsis": "ellipsis", "argmax_last": "select_last_index", "int64_io": "int64",
                "opset": "opset", "slice_axes": "'axes'"}[case]
    assert expected in text


def test_int64_input_ids_allowed_but_big_int64_weights_warned():
    big = numpy_helper.from_array(np.array([2 ** 40], dtype=np.int64), "big")
    nodes = [helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Cast", ["big"], ["bf"], to=TensorProto.FLOAT, name="cast_big"),
             helper.make_node("Add", ["f", "bf"], ["y"], name="add")]
    model = _model(nodes, [_vi("input_ids", TensorProto.INT64)], [_vi("y")], [big])
    errors, warnings = _errors(model)
    assert errors == []
    assert [w.node for w in warnings] == ["big"] and "int32" in warnings[0].message


def test_subgraphs_are_walked():
    then_graph = helper.make_graph([helper.make_node("Unique", ["x"], ["t"], name="inner_unique")], "then", [],
                                   [_vi("t")])
    else_graph = helper.make_graph([helper.make_node("Relu", ["x"], ["e"], name="inner_relu")], "else", [],
                                   [_vi("e")])
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph, name="if")]
    model = _model(nodes, [_vi("x"), _vi("cond", TensorProto.BOOL, ())], [_vi("y")])
    errors, _ = _errors(model)
    assert [e.node for e in errors] == ["inner_unique"]


def test_check_graphs_report_roundtrip(tmp_path):
    path = tmp_path / "bad.onnx"
    onnx.save(_model([helper.make_node("Unique", ["x"], ["y"], name="u")], [_vi("x")], [_vi("y")]), path)
    report = check_graphs({"bad": path})
    assert not report.ok and report.op_counts["bad"] == {"Unique": 1}
    data = report.to_dict()
    assert data["errors"] == 1 and data["issues"][0]["node"] == "u"
    json.dumps(data)


# ---- profiles and precision -----------------------------------------------------------------
def test_axis_range_validation():
    AxisRange(1, 1, 1)
    for bad in ((0, 1, 2), (2, 1, 3), (1, 4, 3)):
        with pytest.raises(ValueError, match="min <= opt <= max"):
            AxisRange(*bad)
    with pytest.raises(ValueError):
        TrtBuildOptions(workspace_gib=0)


def test_input_profiles_cover_every_dynamic_axis():
    cfg = tiny_config()
    specs = graph_specs(cfg)
    opts = TrtBuildOptions(texts=AxisRange(1, 8, 32), videos=AxisRange(2, 4, 6))
    ranges = opts.axis_ranges()
    text = input_profiles(specs[TEXT_ENCODER], ranges)
    assert text == {"input_ids": {"min": [1, cfg.max_words], "opt": [8, cfg.max_words], "max": [32, cfg.max_words]}}
    video = input_profiles(specs[VIDEO_ENCODER], ranges)
    size = cfg.clip.image_size
    assert video["frames"]["max"] == [6, cfg.max_frames, 3, size, size]
    assert video["video_mask"]["min"] == [2, cfg.max_frames]
    scorer = input_profiles(specs[SCORER], ranges)
    assert scorer["words"]["opt"] == [8, cfg.max_words, cfg.embed_dim]
    assert scorer["patches"]["max"] == [6, cfg.num_pixels, cfg.embed_dim]
    assert set(scorer) == {"sentence", "words", "video", "frame_features", "patches"}


def test_precision_plan_detects_the_fp16_api():
    trt10 = types.SimpleNamespace(BuilderFlag=_fake_flags("FP16", "TF32"))
    trt11 = types.SimpleNamespace(BuilderFlag=_fake_flags("TF32"))
    p10 = precision_plan(trt10, "float16")
    assert p10.set_flags == ("FP16",) and p10.network_flags == 0 and "BuilderFlag.FP16" in p10.mode
    p11 = precision_plan(trt11, "float16")
    assert p11.set_flags == () and "strongly typed" in p11.mode
    assert precision_plan(trt10, "float32").set_flags == ()
    assert precision_plan(trt10, "float32").clear_flags == ("TF32",)
    assert precision_plan(types.SimpleNamespace(BuilderFlag=_fake_flags()), "float32").clear_flags == ()
    with pytest.raises(ValueError):
        precision_plan(trt10, "int8")


def _bundle_dir(tmp_path):
    specs = graph_specs(tiny_config())
    for spec in specs.values():
        (tmp_path / spec.file).write_bytes(b"onnx")
    return specs


def test_build_engines_with_fake_trt10(tmp_path):
    specs = _bundle_dir(tmp_path)
    trt = FakeTRT()
    opts = TrtBuildOptions(texts=AxisRange(1, 2, 4), videos=AxisRange(1, 2, 3), workspace_gib=0.5)
    section = build_engines(tmp_path, specs, "float16", opts, trt=trt, device=DEVICE)
    assert section["version"] == "10.3.0" and section["gpu"] == DEVICE["gpu"]
    assert section["compute_capability"] == "9.0" and "BuilderFlag.FP16" in section["precision"]
    assert section["axes"] == {"T": {"min": 1, "opt": 2, "max": 4}, "V": {"min": 1, "opt": 2, "max": 3}}
    for key, spec in specs.items():
        entry = section["engines"][key]
        assert entry["file"] == spec.file.replace(".onnx", ".plan")
        assert (tmp_path / entry["file"]).read_bytes() == b"PLAN"
    assert ("pool", "WORKSPACE", 1 << 29) in trt.calls
    assert trt.calls.count(("set_flag", "FP16")) == 3 and ("clear_flag", "TF32") in trt.calls
    assert [c[1] for c in trt.calls if c[0] == "network"] == [0, 0, 0]
    profiles = [c[1] for c in trt.calls if c[0] == "profile"]
    assert profiles[0]["input_ids"] == ([1, 32], [2, 32], [4, 32])
    # the timing cache is threaded through the three builds and saved in the bundle
    assert (tmp_path / "trt_timing.cache").read_bytes() == b"+++"
    json.dumps(section)


def test_build_engines_trt11_strongly_typed_and_reuses_cache(tmp_path):
    specs = _bundle_dir(tmp_path)
    cache = tmp_path / "caches" / "shared.cache"
    cache.parent.mkdir()
    cache.write_bytes(b"old")
    trt = FakeTRT(version="11.4.0", has_fp16=False)
    section = build_engines(tmp_path, specs, "float16", TrtBuildOptions(timing_cache=cache), trt=trt, device=DEVICE)
    assert "strongly typed" in section["precision"]
    assert not any(c[0] == "set_flag" for c in trt.calls)
    assert cache.read_bytes() == b"old+++" and section["timing_cache"] == str(cache)


def test_build_errors_are_clear(tmp_path):
    specs = _bundle_dir(tmp_path)
    with pytest.raises(TensorRTError, match="(?s)parser rejected text_encoder.onnx.*K must be an initializer"):
        build_engines(tmp_path, specs, "float32", TrtBuildOptions(), trt=FakeTRT(parse_ok=False), device=DEVICE)
    with pytest.raises(TensorRTError, match="failed to build"):
        build_engines(tmp_path, specs, "float32", TrtBuildOptions(), trt=FakeTRT(build_ok=False), device=DEVICE)


def _write_manifest(tmp_path, version="10.3.0", device=DEVICE):
    (tmp_path / "text_encoder.plan").write_bytes(b"PLAN")
    manifest = {"format": "ucofia.bundle/1", "tensorrt": {
        "version": version, "gpu": device["gpu"], "compute_capability": device["compute_capability"],
        "engines": {"text_encoder": {"file": "text_encoder.plan"}}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))


def test_load_engine_checks_gpu_and_version(tmp_path):
    _write_manifest(tmp_path)
    assert load_engine(tmp_path, "text_encoder", trt=FakeTRT(), device=DEVICE) == ("engine", b"PLAN")
    with pytest.raises(EngineMismatchError, match=r"TensorRT 10\.3\.0.*TensorRT 10\.8\.0.*versions differ.*--trt"):
        load_engine(tmp_path, "text_encoder", trt=FakeTRT(version="10.8.0"), device=DEVICE)
    a100 = {"gpu": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}
    with pytest.raises(EngineMismatchError, match="architectures differ"):
        load_engine(tmp_path, "text_encoder", trt=FakeTRT(), device=a100)
    other_model = {"gpu": "NVIDIA H100 PCIe", "compute_capability": "9.0"}
    assert "GPU models differ" in compatibility_problem(json.loads((tmp_path / "manifest.json").read_text())["tensorrt"],
                                                        "10.3.0", other_model)
    with pytest.raises(TensorRTError, match="no TensorRT engine for 'scorer'"):
        load_engine(tmp_path, "scorer", trt=FakeTRT(), device=DEVICE)


def test_load_engine_without_engines(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"tensorrt": None}))
    with pytest.raises(TensorRTError, match="--trt"):
        load_engine(tmp_path, "text_encoder", trt=FakeTRT(), device=DEVICE)


def test_real_tensorrt_build(tmp_path):
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (optional extra ucofia[tensorrt])")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT engines need a CUDA GPU")
    import ucofia
    from export import export_bundle

    model = ucofia.build_model(tiny_config())
    manifest = export_bundle(model, tmp_path / "bundle", trt=True,
                             trt_options=TrtBuildOptions(texts=AxisRange(1, 2, 4), videos=AxisRange(1, 2, 4)))
    assert manifest["tensorrt"]["version"] == trt.__version__
    engine = load_engine(tmp_path / "bundle", "scorer")
    assert engine is not None
