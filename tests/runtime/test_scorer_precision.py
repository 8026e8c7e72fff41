"""``--scorer-precision``: float32 by default; int8 (opt-in) rewrites the scorer's patch-word product
into a uint8 x int8 product and nothing else, and is refused with the fix where it cannot run."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from runtime_helpers import build_fake_bundle, run_cli, synthetic_index

from runtime import scoring
from runtime.backends import open_session, precision
from runtime.bundle import load_bundle
from runtime.deployment import load_query_models
from runtime.errors import BackendError
from runtime.index import GalleryIndex

QUERIES = ["a red car", "a dog in the park", "someone cooking", "a football match", "a cat asleep"]
VIDEOS = 40


@pytest.fixture(scope="module")
def pairwise(tmp_path_factory):
    """A fake bundle whose scorer has a real patch-word product ([T*L, D] x [D, V*P]) and an index."""
    root = tmp_path_factory.mktemp("precision")
    bundle_dir = build_fake_bundle(root / "bundle", pairwise_patch_word=True)
    bundle = load_bundle(bundle_dir)
    return bundle, synthetic_index(root / "index", bundle, VIDEOS)


@pytest.fixture
def int8_cpu(monkeypatch):
    """Whatever this machine has: a CPU with AMX-INT8 for the checks."""
    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: {"avx2", "amx_int8"})


def _features(bundle, seed=0):
    cfg = bundle.config
    rng = np.random.default_rng(seed)
    return scoring.TextFeatures(rng.standard_normal((len(QUERIES), cfg.embed_dim), dtype=np.float32),
                                rng.standard_normal((len(QUERIES), cfg.max_words, cfg.embed_dim), dtype=np.float32))


def _scores(bundle, index, which: str) -> dict[str, np.ndarray]:
    session = open_session(bundle, "scorer", "cpu", precision=which)
    return scoring.score_matrix(scoring.Scorer(session, bundle.config), _features(bundle), GalleryIndex(index))


def test_rewrite_quantises_exactly_the_patch_word_product(pairwise):
    bundle, _ = pairwise
    source = onnx.load(str(bundle.graphs["scorer"].file))
    model = onnx.load_from_string(precision.int8_scorer_model(bundle.graphs["scorer"].file))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulInteger") == 1 and ops.count("DynamicQuantizeLinear") == 1
    # the one float MatMul gone is the one fed by the patches; the others (two levels) stay float32
    assert ops.count("MatMul") == [n.op_type for n in source.graph.node].count("MatMul") - 1
    integer = next(n for n in model.graph.node if n.op_type == "MatMulInteger")
    quantised = {n.output[0]: n for n in model.graph.node}
    assert quantised[integer.input[1]].op_type == "Cast"  # the second operand: symmetric int8
    assert quantised[integer.input[1]].attribute[0].i == onnx.TensorProto.INT8
    assert [o.name for o in model.graph.output] == [o.name for o in source.graph.output]
    onnx.checker.check_model(model)


def test_int8_changes_patch_word_slightly_and_keeps_the_ranking(pairwise, int8_cpu):
    bundle, index = pairwise
    exact, approx = _scores(bundle, index, "float32"), _scores(bundle, index, "int8")
    for level in ("video_sentence", "frame_sentence"):  # float32 products, untouched
        np.testing.assert_array_equal(approx[level], exact[level])
    diff = np.abs(approx["patch_word"] - exact["patch_word"])
    spread = float(exact["patch_word"].std())
    assert 0 < diff.max() < 0.15 * spread  # really int8 (not the float32 graph), and close (D = 32 here)
    # the best video stays first wherever float32 puts it ahead by more than twice the largest change
    ranked = np.sort(exact["patch_word"], axis=1)
    clear = ranked[:, -1] - ranked[:, -2] > 2 * diff.max()
    assert clear.sum() >= 2
    np.testing.assert_array_equal(approx["patch_word"].argmax(1)[clear], exact["patch_word"].argmax(1)[clear])


def test_float32_is_the_default_and_opens_the_bundle_graph(pairwise):
    bundle, index = pairwise
    models = load_query_models(bundle, "cpu")
    assert models.scorer.session.precision == "float32"
    default = scoring.score_matrix(models.scorer, _features(bundle), GalleryIndex(index))
    explicit = _scores(bundle, index, "float32")
    for level in scoring.LEVELS:
        np.testing.assert_array_equal(default[level], explicit[level])


def test_search_cli_uses_the_int8_scorer_only_when_asked(pairwise, int8_cpu, tmp_path):
    _, index = pairwise
    runs = {}
    for which in ("default", "float32", "int8"):
        out = tmp_path / f"{which}.jsonl"
        extra = () if which == "default" else ("--scorer-precision", which)
        result = run_cli("search", "--index", str(index), *[a for q in QUERIES for a in ("--query", q)],
                         "--top-k", "5", "--backend", "cpu", *extra, "-o", str(out))
        assert result.returncode == 0, result.stderr
        runs[which] = [json.loads(line) for line in out.read_text().splitlines()]
    levels = {w: np.array([[h["levels"]["patch_word"] for h in row["results"]] for row in rows])
              for w, rows in runs.items()}
    assert runs["default"] == runs["float32"]
    assert not np.array_equal(levels["int8"], levels["float32"])  # the int8 session really ran


def test_evaluate_reports_the_scorer_precision(pairwise, int8_cpu, tmp_path):
    from runtime.evaluate import EvaluateRequest, evaluate_index

    _, index = pairwise
    ann = tmp_path / "test.csv"
    ann.write_text("key,vid_key,video_id,sentence\n" +
                   "".join(f"ret{i},msr{i},v{i},{q}\n" for i, q in enumerate(QUERIES)))
    reports = {which: evaluate_index(EvaluateRequest(index=index, annotations=ann, backend="cpu",
                                                     scorer_precision=which, allow_missing=True))
               for which in ("float32", "int8")}
    assert reports["float32"]["scorer_precision"] == "float32"
    assert reports["int8"]["scorer_precision"] == "int8"


def test_unknown_precision_is_refused(pairwise):
    bundle, _ = pairwise
    with pytest.raises(BackendError, match="unknown scorer precision 'int4'; choose one of float32, int8"):
        open_session(bundle, "scorer", "cpu", precision="int4")
    result = run_cli("search", "--index", str(pairwise[1]), "--query", "x", "--scorer-precision", "bf16")
    assert result.returncode == 2 and "--scorer-precision" in result.stderr


def test_int8_refused_without_int8_units(pairwise, monkeypatch, tmp_path):
    bundle, index = pairwise
    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: {"avx2", "fma"})
    with pytest.raises(BackendError, match="no int8 dot-product units.*--scorer-precision float32"):
        open_session(bundle, "scorer", "cpu", precision="int8")
    result = run_cli("search", "--index", str(index), "--query", "x", "--backend", "cpu",
                     "--scorer-precision", "int8", "-o", str(tmp_path / "out.jsonl"))
    assert result.returncode == 1 and "no int8 dot-product units" in result.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_int8_refused_off_the_cpu_backend_and_for_float16_bundles():
    flags = {"amx_int8"}
    assert "CPU backend only, not cuda" in precision.int8_problem("cuda", "float32", flags)
    assert "CPU backend only, not tensorrt" in precision.int8_problem("tensorrt", "float32", flags)
    assert "needs a float32 bundle (this one is float16)" in precision.int8_problem("cpu", "float16", flags)
    assert "could not read this CPU's features" in precision.int8_problem("cpu", "float32", None)
    for flag in precision.INT8_CPU_FLAGS:
        assert precision.int8_problem("cpu", "float32", {"avx2", flag}) is None


def test_int8_applies_to_the_scorer_only(pairwise, int8_cpu):
    bundle, _ = pairwise
    with pytest.raises(BackendError, match="scorer graph only, not text_encoder"):
        open_session(bundle, "text_encoder", "cpu", precision="int8")


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n")
    assert precision.cpu_flags(info) == {"fpu", "avx2", "avx512_vnni"}
    assert precision.cpu_flags(tmp_path / "missing") is None
    (tmp_path / "noflags").write_text("processor\t: 0\n")
    assert precision.cpu_flags(tmp_path / "noflags") is None


def test_a_scorer_without_a_patch_word_product_is_refused(tmp_path):
    bundle = load_bundle(build_fake_bundle(tmp_path / "bundle"))  # patch_word from mean-pooled features
    with pytest.raises(BackendError, match="found 0 patch-word products.*re-export"):
        precision.int8_scorer_model(bundle.graphs["scorer"].file)


def _product_graph(path, rows: int, d: int) -> None:
    """patches [V, P, D] -> [V*P, D] times words [T, L, D] -> [D, T*L]: the product alone."""
    from onnx import TensorProto, helper, numpy_helper

    shape = numpy_helper.from_array(np.array([-1, d], np.int64), "rows_d")
    nodes = [helper.make_node("Reshape", ["patches", "rows_d"], ["p2"]),
             helper.make_node("Reshape", ["words", "rows_d"], ["w2"]),
             helper.make_node("Transpose", ["w2"], ["w2_t"], perm=[1, 0]),
             helper.make_node("MatMul", ["p2", "w2_t"], ["scores"])]
    graph = helper.make_graph(
        nodes, "product", [helper.make_tensor_value_info("patches", TensorProto.FLOAT, ["V", rows, d]),
                           helper.make_tensor_value_info("words", TensorProto.FLOAT, ["T", rows, d])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, None)], [shape])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _emulated(patches: np.ndarray, words: np.ndarray) -> np.ndarray:
    """The scheme in numpy: patches uint8 per tensor (DynamicQuantizeLinear: range widened to 0,
    zero point rounded half to even), words int8 symmetric (scale max|w| / 127), exact integer product."""
    a, b = patches.reshape(-1, patches.shape[-1]), words.reshape(-1, words.shape[-1]).T
    scale_a = np.float32((max(a.max(), 0) - min(a.min(), 0)) / np.float32(255))
    zero_a = np.clip(np.round(-min(a.min(), 0) / scale_a), 0, 255)
    qa = np.clip(np.round(a / scale_a) + zero_a, 0, 255).astype(np.int64) - int(zero_a)
    scale_b = np.float32(max(np.abs(b).max(), 1e-30) / np.float32(127))
    qb = np.clip(np.round(b / scale_b), -127, 127).astype(np.int64)
    return ((qa @ qb).astype(np.float32) * (scale_a * scale_b)).astype(np.float32)


@pytest.mark.parametrize("word_scale", [0.05, 3.0])
def test_int8_product_is_the_documented_scheme(tmp_path, word_scale):
    import onnxruntime as ort

    rows, d = 6, 16
    path = tmp_path / "product.onnx"
    _product_graph(path, rows, d)
    rng = np.random.default_rng(1)
    patches = rng.standard_normal((5, rows, d)).astype(np.float32)
    words = (word_scale * rng.standard_normal((3, rows, d))).astype(np.float32)
    words[0, 0, 0] = -word_scale * 4  # the largest magnitude is negative: the int8 range is symmetric
    session = ort.InferenceSession(precision.int8_scorer_model(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"patches": patches, "words": words})
    want = _emulated(patches, words)
    exact = patches.reshape(-1, d) @ words.reshape(-1, d).T
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    assert np.abs(got - exact).max() < 0.02 * np.abs(exact).max()
    (zeros,) = session.run(None, {"patches": patches, "words": np.zeros_like(words)})
    np.testing.assert_array_equal(zeros, 0)  # all-zero words: zeros, not 0/0


def test_serve_scores_with_the_int8_scorer_when_started_with_it(pairwise, int8_cpu):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from serve_helpers import open_app

    _, index = pairwise
    answers = {}
    for which in ("float32", "int8"):
        service, app = open_app(index, scorer_precision=which)
        assert service.engine.scorer.session.precision == which
        with TestClient(app, base_url="http://127.0.0.1") as client:
            reply = client.post("/v1/search", json={"queries": QUERIES, "top_k": VIDEOS})
            assert reply.status_code == 200, reply.text
        answers[which] = {(q, hit["video_id"]): hit["levels"] for q, row in enumerate(reply.json()["results"])
                          for hit in row["results"]}
    assert answers["int8"].keys() == answers["float32"].keys()
    for key, levels in answers["float32"].items():
        assert answers["int8"][key]["video_sentence"] == levels["video_sentence"]
    assert any(answers["int8"][key]["patch_word"] != levels["patch_word"] for key, levels in answers["float32"].items())
