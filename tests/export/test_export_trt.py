"""Static TensorRT check, the TensorRT build (export) and the runtime's engine loading (with a fake
``tensorrt`` module).

Nothing here needs TensorRT or a GPU except ``test_real_tensorrt_build``, which skips without them.
"""
from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from export_helpers import DEVICE, FakeTRT
from export_helpers import fake_flags as _fake_flags
from onnx import TensorProto, helper, numpy_helper

from export.tensorrt_build import AxisRange, TrtBuildOptions, build_engines, input_profiles, precision_plan
from export.trt_check import check_graphs, check_model
from runtime.backends.tensorrt_engines import EngineMismatchError, TensorRTError, compatibility_problem, load_engine
from runtime.bundle.contract import SCORER, TEXT_ENCODER, VIDEO_ENCODER, graph_specs
from ucofia.config import tiny_config


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


def test_topk_k_may_be_computed_at_run_time_but_must_stay_below_3840():
    # TensorRT 8.6 added TopK with a dynamic K (onnx-tensorrt Changelog); 10.x only caps K
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "one"], ["k"], axis=0, name="gather_k"),
             helper.make_node("Unsqueeze", ["k", "zero"], ["k1"], name="unsq"),
             helper.make_node("TopK", ["x", "k1"], ["v", "i"], axis=-1, name="dynamic_topk")]
    inits = [numpy_helper.from_array(np.array(1, dtype=np.int64), "one"),
             numpy_helper.from_array(np.array([0], dtype=np.int64), "zero")]
    errors, _ = _errors(_model(nodes, [_vi("x")], [_vi("v")], inits))
    assert errors == []
    big = numpy_helper.from_array(np.array([4000], dtype=np.int64), "k")
    nodes = [helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=-1, name="huge_topk")]
    errors, _ = _errors(_model(nodes, [_vi("x")], [_vi("v")], [big]))
    assert [e.node for e in errors] == ["huge_topk"] and "3840" in errors[0].message


def test_topk_k_from_constant_node_and_unsorted():
    nodes = [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array([2], np.int64)),
                              name="kconst"),
             helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=-1, sorted=0, name="unsorted_topk")]
    errors, _ = _errors(_model(nodes, [_vi("x")], [_vi("v", shape=("N", 2))]))
    assert [e.node for e in errors] == ["unsorted_topk"] and "sorted" in errors[0].message


@pytest.mark.parametrize("case", ["ellipsis", "argmax_last", "int64_io", "clip_tensor_bounds"])
def test_what_tensorrt_10_accepts_is_not_flagged(case):
    """TensorRT 8's restrictions that 10.x lifted (onnx-tensorrt operators.md 10.x, Changelog 9.0/9.3)."""
    x, y, inits = _vi("x"), _vi("y"), []
    if case == "ellipsis":
        nodes = [helper.make_node("Einsum", ["x", "x"], ["y"], equation="...i,...i->...i", name="ein")]
    elif case == "argmax_last":
        nodes = [helper.make_node("ArgMax", ["x"], ["y"], axis=-1, select_last_index=1, name="am")]
        y = _vi("y", TensorProto.INT64, ("N", 1))
    elif case == "int64_io":  # int64 I/O is native since TensorRT 9.0
        nodes = [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.INT64, name="cast")]
        x, y = _vi("x", TensorProto.INT64), _vi("y", TensorProto.INT64)
    else:  # bounds computed in the graph: imported as elementwise max/min
        nodes = [helper.make_node("ReduceMin", ["x"], ["lo"], keepdims=0, name="lo"),
                 helper.make_node("Clip", ["x", "lo"], ["y"], name="clip")]
    errors, warnings = _errors(_model(nodes, [x], [y], inits))
    assert errors == [] and warnings == []


@pytest.mark.parametrize("case", ["sequence", "custom", "unsupported", "opset", "reduce_axes", "dropout",
                                  "maxpool_indices", "dilations", "resize", "lstm", "zero_point", "onehot_depth"])
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
    elif case == "opset":
        nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
        opset = 21
    elif case == "reduce_axes":  # axes computed from constants: a build-time constant, but no initializer
        nodes = [helper.make_node("Add", ["one", "zero"], ["ax"], name="axes_sum"),
                 helper.make_node("ReduceSum", ["x", "ax"], ["y"], name="reduce")]
        inits = [numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
                 numpy_helper.from_array(np.array([0], dtype=np.int64), "zero")]
    elif case == "dropout":
        nodes = [helper.make_node("Dropout", ["x", "", "train"], ["y"], name="drop")]
        inits = [numpy_helper.from_array(np.array(True), "train")]
    elif case == "maxpool_indices":
        nodes = [helper.make_node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2], name="pool")]
    elif case == "dilations":
        nodes = [helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2], name="pool")]
    elif case == "resize":
        nodes = [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="cubic", name="resize")]
        inits = [numpy_helper.from_array(np.array([1, 2], dtype=np.float32), "scales")]
    elif case == "lstm":
        nodes = [helper.make_node("LSTM", ["x", "w", "r"], ["y"], hidden_size=4, layout=1, name="lstm")]
    elif case == "zero_point":
        nodes = [helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["y"], name="dq")]
        inits = [numpy_helper.from_array(np.array(3, dtype=np.int8), "zp"),
                 numpy_helper.from_array(np.array(0.5, dtype=np.float32), "scale")]
    else:  # OneHot whose depth comes from the input's shape
        nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
                 helper.make_node("OneHot", ["x", "s", "values"], ["y"], name="onehot_dyn_depth")]
        inits = [numpy_helper.from_array(np.array([0, 1], dtype=np.float32), "values")]
    model = _model(nodes, [x], [y], inits, opset=opset, domains=domains)
    errors, _ = _errors(model)
    assert errors, f"{case}: expected an error"
    text = " ".join(str(e) for e in errors)
    expected = {"sequence": "sequence", "custom": "plugin", "unsupported": "not supported", "opset": "opset",
                "reduce_axes": "must be an initializer", "dropout": "training_mode must be False",
                "maxpool_indices": "first output", "dilations": "dilations", "resize": "mode='cubic'",
                "lstm": "layout=0", "zero_point": "zero_point", "onehot_depth": "build-time constant"}[case]
    assert expected in text


def test_version_dependent_rules_follow_the_installed_release():
    """Slice with tensor axes came with TensorRT 10.3, STFT with 10.5 (onnx-tensorrt Changelog)."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Slice", ["x", "s", "s", "s"], ["y"], name="slice_dyn_axes")]
    model = _model(nodes, [_vi("x")], [_vi("y")])
    for version, errors_, warnings_ in (("10.2.0", 1, 0), ("10.3.0.26", 0, 0), (None, 0, 1)):
        issues, _ = check_model(model, "g", trt_version=version)
        assert [i.severity for i in issues].count("error") == errors_, version
        assert [i.severity for i in issues].count("warning") == warnings_, version
        assert all("10.3" in i.message for i in issues)
    stft = _model([helper.make_node("STFT", ["x", "step"], ["y"], name="stft")], [_vi("x")], [_vi("y")],
                  [numpy_helper.from_array(np.array(4, dtype=np.int64), "step")])
    assert [i.severity for i in check_model(stft, "g", "10.4.0")[0]] == ["error"]
    assert check_model(stft, "g", "10.15.1")[0] == []
    # run-time axes: Squeeze/Unsqueeze from 10.7, CumSum from 10.8; 11.x keeps every 10.x relaxation
    shape_axes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
                  helper.make_node("Slice", ["s", "zero", "one"], ["ax"], name="first_dim")]
    axes_inits = [numpy_helper.from_array(np.array([0], dtype=np.int64), "zero"),
                  numpy_helper.from_array(np.array([1], dtype=np.int64), "one")]
    for op, since in (("Squeeze", "10.7"), ("Unsqueeze", "10.7"), ("CumSum", "10.8")):
        model = _model(shape_axes + [helper.make_node(op, ["x", "ax"], ["y"], name=f"{op}_run_time_axes")],
                       [_vi("x")], [_vi("y")], axes_inits)
        for version, severity in (("10.6.0", "error"), (since + ".0", None), ("11.4.0.106", None), (None, "warning")):
            if op == "CumSum" and version == "10.6.0":
                version = "10.7.0"
            issues, _ = check_model(model, "g", trt_version=version)
            assert [i.severity for i in issues] == ([severity] if severity else []), (op, version, issues)
            assert all(f">= {since}" in i.message for i in issues)
    # TensorRT older than 10 is refused outright; the report says which rules it applied
    relu = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x")], [_vi("y")])
    assert [i.op for i in check_model(relu, "g", "8.6.1")[0]] == ["version"]
    assert check_graphs({"g": relu}, "11.4.0.106").to_dict()["rules"].startswith("TensorRT 11.4: the 10.15 table")
    assert check_graphs({"g": relu}, "10.8.0").to_dict()["rules"] == "TensorRT 10.8"
    # opsets 21..24 are documented from 10.15 on; 10.0's table stops at 20
    relu = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x")], [_vi("y")], opset=22)
    assert check_model(relu, "g", "10.15.1")[0] == [] and check_model(relu, "g", "10.8.0")[0]
    assert check_model(relu, "g", "11.4.0")[0] == []


def test_float64_weights_warned_int64_weights_native():
    big = numpy_helper.from_array(np.array([2 ** 40], dtype=np.int64), "big")
    wide = numpy_helper.from_array(np.array([1.5], dtype=np.float64), "wide")
    nodes = [helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Cast", ["big"], ["bf"], to=TensorProto.FLOAT, name="cast_big"),
             helper.make_node("Cast", ["wide"], ["wf"], to=TensorProto.FLOAT, name="cast_wide"),
             helper.make_node("Add", ["f", "bf"], ["g"], name="add"),
             helper.make_node("Add", ["g", "wf"], ["y"], name="add2")]
    model = _model(nodes, [_vi("input_ids", TensorProto.INT64)], [_vi("y")], [big, wide])
    errors, warnings = _errors(model)
    assert errors == []
    assert [w.node for w in warnings] == ["wide"] and "float32" in warnings[0].message


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


def _trt(*flags, creation=None):
    ns = types.SimpleNamespace(BuilderFlag=_fake_flags(*flags), __version__="x")
    if creation is not None:
        ns.NetworkDefinitionCreationFlag = creation
    return ns


def test_precision_plan_is_strongly_typed_on_10x_and_11x():
    """10.x: the STRONGLY_TYPED creation flag (bit 1) instead of BuilderFlag.FP16's weak typing;
    11.x: no BuilderFlag.FP16 and always strongly typed, so no flag (STRONGLY_TYPED is deprecated)."""
    trt10 = _trt("FP16", "TF32", creation=types.SimpleNamespace(EXPLICIT_BATCH=0, STRONGLY_TYPED=1))
    trt11 = _trt("TF32", creation=types.SimpleNamespace(STRONGLY_TYPED=0))
    for dtype in ("float16", "float32"):
        p10, p11 = precision_plan(trt10, dtype), precision_plan(trt11, dtype)
        assert p10.network_flags == 1 << 1 and p10.set_flags == () and "STRONGLY_TYPED" in p10.mode
        assert p11.network_flags == 0 and p11.set_flags == () and "strongly typed" in p11.mode
        assert p10.clear_flags == p11.clear_flags == ("TF32",)
    assert precision_plan(_trt(creation=types.SimpleNamespace(STRONGLY_TYPED=0)), "float32").clear_flags == ()
    with pytest.raises(TensorRTError, match="TensorRT 10 or newer"):  # weak typing only (TensorRT 8)
        precision_plan(_trt("FP16", "TF32", creation=types.SimpleNamespace(EXPLICIT_BATCH=0)), "float16")
    with pytest.raises(ValueError):
        precision_plan(trt10, "int8")


def _bundle_dir(tmp_path):
    specs = graph_specs(tiny_config())
    for spec in specs.values():
        (tmp_path / spec.file).write_bytes(b"onnx")
    return specs


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    home = tmp_path / "xdg_cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home


def test_build_engines_with_fake_trt10(tmp_path, cache_home):
    specs = _bundle_dir(tmp_path)
    trt = FakeTRT()
    opts = TrtBuildOptions(texts=AxisRange(1, 2, 4), videos=AxisRange(1, 2, 3), workspace_gib=0.5)
    section = build_engines(tmp_path, specs, "float16", opts, trt=trt, device=DEVICE)
    assert section["version"] == "10.3.0" and section["gpu"] == DEVICE["gpu"]
    assert section["compute_capability"] == "9.0" and "STRONGLY_TYPED" in section["precision"]
    # the encoders get the texts/videos profile, the scorer its own (default 1..64 texts x 1..1024 videos)
    assert section["axes"] == {"text_encoder": {"T": {"min": 1, "opt": 2, "max": 4}},
                               "video_encoder": {"V": {"min": 1, "opt": 2, "max": 3}},
                               "scorer": {"T": {"min": 1, "opt": 16, "max": 64},
                                          "V": {"min": 1, "opt": 256, "max": 1024}}}
    for key, spec in specs.items():
        entry = section["engines"][key]
        assert entry["file"] == spec.file.with_suffix(".plan").name
        plan = json.loads((tmp_path / entry["file"]).read_bytes())  # the fake's "engine": what it was built from
        assert plan["onnx"] == spec.file.name and plan["profile"] == entry["profile"]
    assert ("pool", "WORKSPACE", 1 << 29) in trt.calls
    # strongly typed: no precision flag (BuilderFlag.FP16 would let float32 islands run in float16)
    assert not any(c[0] == "set_flag" for c in trt.calls) and ("clear_flag", "TF32") in trt.calls
    assert [c[1] for c in trt.calls if c[0] == "network"] == [2, 2, 2]
    profiles = [c[1] for c in trt.calls if c[0] == "profile"]
    assert profiles[0]["input_ids"] == ([1, 32], [2, 32], [4, 32])
    assert profiles[2]["patches"][2][0] == 1024 and profiles[1]["frames"][2][0] == 3
    # the timing cache is threaded through the three builds and saved outside the build directory
    cache = cache_home / "ucofia" / "tensorrt" / "timing-trt10.3.0-sm9.0-NVIDIA-H100-80GB-HBM3.cache"
    assert cache.read_bytes() == b"+++" and section["timing_cache"]["path"] == str(cache)
    assert not list(tmp_path.glob("*.cache"))
    json.dumps(section)
    # a second export on the same machine starts from the saved cache
    again = FakeTRT()
    build_engines(tmp_path, specs, "float16", opts, trt=again, device=DEVICE)
    assert next(c[1] for c in again.calls if c[0] == "create_cache") == b"+++"
    assert cache.read_bytes() == b"++++++"


def test_build_engines_trt11_strongly_typed_and_reuses_cache(tmp_path):
    specs = _bundle_dir(tmp_path)
    cache = tmp_path / "caches" / "shared.cache"
    cache.parent.mkdir()
    cache.write_bytes(b"old")
    trt = FakeTRT(version="11.4.0", has_fp16=False)
    section = build_engines(tmp_path, specs, "float16", TrtBuildOptions(timing_cache=cache), trt=trt, device=DEVICE)
    assert "strongly typed" in section["precision"]
    assert not any(c[0] == "set_flag" for c in trt.calls)
    assert [c[1] for c in trt.calls if c[0] == "network"] == [0, 0, 0]
    assert cache.read_bytes() == b"old+++" and section["timing_cache"]["path"] == str(cache)
    assert section["timing_cache"]["bytes_read"] == 3


def test_refused_or_missing_timing_cache_is_handled(tmp_path, caplog):
    specs = _bundle_dir(tmp_path)
    cache = tmp_path / "foreign.cache"
    cache.write_bytes(b"other-gpu")
    trt = FakeTRT(cache_ok=False)  # set_timing_cache returns False for a non-empty cache
    build_engines(tmp_path, specs, "float32", TrtBuildOptions(timing_cache=cache), trt=trt, device=DEVICE)
    notes = [r.getMessage() for r in caplog.records if r.name == "export.tensorrt_build"]
    # each build falls back to a fresh cache, and the one saved is the fresh one's result
    assert [c[1] for c in trt.calls if c[0] == "create_cache"][:2] == [b"other-gpu", b""]
    assert sum("refused the timing cache" in n for n in notes) >= 1
    assert not cache.read_bytes().startswith(b"other-gpu")
    # get_timing_cache() may return None: the cache read in is kept, nothing crashes
    cache.write_bytes(b"mine")
    build_engines(tmp_path, specs, "float32", TrtBuildOptions(timing_cache=cache),
                  trt=FakeTRT(cache_kept=False), device=DEVICE)
    assert cache.read_bytes() == b"mine"


def test_build_errors_are_clear(tmp_path, cache_home):
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
    section = json.loads((tmp_path / "manifest.json").read_text())["tensorrt"]
    assert "GPU models differ" in compatibility_problem(section, "10.3.0", other_model)
    with pytest.raises(TensorRTError, match="no TensorRT engine for 'scorer'"):
        load_engine(tmp_path, "scorer", trt=FakeTRT(), device=DEVICE)


def test_load_engine_without_engines(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"tensorrt": None}))
    with pytest.raises(TensorRTError, match="--trt"):
        load_engine(tmp_path, "text_encoder", trt=FakeTRT(), device=DEVICE)


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.tensorrt
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


# ---- engines verified at export ----------------------------------------------------------------
SMALL_PROFILES = TrtBuildOptions(texts=AxisRange(2, 2, 3), videos=AxisRange(1, 2, 2),
                                 scorer_texts=AxisRange(1, 2, 4), scorer_videos=AxisRange(1, 2, 3))


@pytest.fixture
def fake_trt_export(monkeypatch, cache_home):
    """Make ``export_bundle(trt=True)`` build and run fake engines: returns a function installing a FakeTRT."""
    from trt_runtime_fakes import FakeCudaMemory

    from export import tensorrt_build
    from runtime.backends import tensorrt_session

    monkeypatch.setattr(tensorrt_build, "device_info", lambda: dict(DEVICE))
    monkeypatch.setattr(tensorrt_session, "CudaMemory", FakeCudaMemory)

    def install(**kwargs) -> FakeTRT:
        trt = FakeTRT(version="10.8.0", **kwargs)
        monkeypatch.setattr(tensorrt_build, "import_tensorrt", lambda: trt)
        return trt

    return install


@pytest.mark.slow
def test_export_runs_every_engine_against_onnxruntime(tiny_export, tmp_path, fake_trt_export):
    from export import export_bundle

    trt = fake_trt_export()
    manifest = export_bundle(tiny_export.model, tmp_path / "bundle", trt=True, trt_options=SMALL_PROFILES)
    result = manifest["tensorrt"]["verification"]
    assert result["passed"] is True and result["against"] == "onnxruntime CPUExecutionProvider"
    assert result["tolerances"] == manifest["verification"]["tolerances"]  # the same rule and bounds
    cases = {(c["graph"], c["case"]) for c in result["checks"]}
    assert cases == {("text_encoder", "T=1"), ("text_encoder", "T=5"), ("video_encoder", "V=1"),
                     ("video_encoder", "V=3 padded"), ("scorer", "T=1,V=1"), ("scorer", "T=5,V=4")}
    assert len(result["checks"]) == 2 * 2 + 2 * 3 + 2 * 3 and all(c["max_abs"] < 1e-5 for c in result["checks"])
    assert [s["case"] for s in result["patch_selection"]] == ["V=1", "V=3 padded"]
    assert all(s["identical_fraction"] == 1.0 and s["passed"] for s in result["patch_selection"])
    # run through TensorRTSession within the small profiles: T=1 padded to 2, T=5 split 3 + 2, V=3 split 2 + 1
    by_onnx = {Path(e.path).stem: e for e in trt.engines}
    assert sorted({r["shapes"]["input_ids"][0] for r in by_onnx["text_encoder"].executions}) == [2, 3]
    assert sorted({r["shapes"]["frames"][0] for r in by_onnx["video_encoder"].executions}) == [1, 2]
    assert max(r["shapes"]["patches"][0] for r in by_onnx["scorer"].executions) == 3
    assert json.loads((tmp_path / "bundle" / "manifest.json").read_text())["tensorrt"]["verification"] == result


@pytest.mark.slow
@pytest.mark.parametrize("graph, output", [("scorer", "patch_word"), ("video_encoder", "patches"),
                                           ("text_encoder", "words")])
def test_a_numerically_wrong_engine_fails_the_export(tiny_export, tmp_path, fake_trt_export, graph, output):
    from click.testing import CliRunner

    from export import export_bundle
    from export.verify_engines import EngineVerificationError
    from ucofia.cli import main

    fake_trt_export(perturb={graph: {output: 0.05}})
    with pytest.raises(EngineVerificationError, match=rf"{graph} engine/[^:]+/{output}: max_abs") as info:
        export_bundle(tiny_export.model, tmp_path / "bundle", trt=True, trt_options=SMALL_PROFILES)
    assert not info.value.report.passed and not (tmp_path / "bundle").exists()
    if graph == "scorer":  # the command line says so and writes nothing
        result = CliRunner().invoke(main, ["export", str(tiny_export.checkpoint), "-o", str(tmp_path / "cli"),
                                           "--trt", "--min-texts", "2", "--opt-texts", "2", "--max-texts", "3",
                                           "--opt-videos", "2", "--max-videos", "2"])
        assert result.exit_code == 1 and "TensorRT engines differ from onnxruntime" in result.output
        assert "nothing was written" in result.output and not (tmp_path / "cli").exists()


def test_patch_selection_agreement_tolerates_only_tie_flips():
    import torch

    from export.verify_engines import compare_selection

    engine = torch.tensor([[0, 1], [2, 3], [1, 2]])
    onnxruntime_ = torch.tensor([[0, 1], [2, 4], [1, 3]])
    check, differs = compare_selection("V=3", engine, onnxruntime_, torch.tensor([0.5, 1e-7, 1e-6]), 1e-5)
    assert differs.tolist() == [False, True, True]
    assert (check.mismatches, check.tie_flips, check.passed) == (2, 2, True)  # both below the tie margin
    check, _ = compare_selection("V=3", engine, onnxruntime_, torch.tensor([0.5, 1e-7, 0.3]), 1e-5)
    assert (check.mismatches, check.tie_flips, check.passed) == (2, 1, False)
    assert check.worst_flip_margin == pytest.approx(0.3)
