"""The scorer's text side cut out of the graph (runtime.backends.text_side): on the CPU the exported
scorer runs as a text-side graph (normalise, project, / tau: once per scoring call) and the rest, and
every score is bit-identical to the whole graph's, through every path that reaches the session
(tiles, top-k, a direct call with raw words). Graphs of another form are left whole."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from runtime_helpers import random_queries, random_rows

from runtime import scoring
from runtime.backends import open_session, selection
from runtime.backends.ort import OrtSession
from runtime.backends.text_side import PROJECTED_WORDS, split_scorer
from runtime.bundle import load_bundle

slow = pytest.mark.slow  # the tiny export is shared by the session; the first user pays for it

TEXTS, VIDEOS = 7, 11
TILE = (3, 4)  # divides neither side: several tiles per text and per video block


@pytest.fixture(scope="module")
def sessions(tiny_export):
    """(bundle, the split session open_session gives, the whole graph's session)."""
    bundle = load_bundle(tiny_export.bundle)
    split = open_session(bundle, "scorer", "cpu", threads=2, split_text_side=True)
    spec = bundle.graphs["scorer"]
    whole = OrtSession(spec, "cpu", threads=1, concurrency=2)
    return bundle, split, whole


@pytest.fixture(scope="module")
def features(sessions):
    bundle, _, _ = sessions
    videos = random_rows(bundle.config, VIDEOS, np.random.default_rng(3))
    return random_queries(bundle.config, TEXTS, seed=4), scoring.ArrayVideos(videos)


@slow
def test_the_cpu_scorer_is_split_and_its_rest_reads_no_raw_words(sessions):
    bundle, split, whole = sessions
    assert split.text_side is not None and whole.text_side is None
    spec = bundle.graphs["scorer"]
    parts = split_scorer(spec.file, spec.inputs["words"].name, spec.inputs["patches"].name)
    text_side, rest = onnx.load_from_string(parts.text_side), onnx.load_from_string(parts.rest)
    assert [i.name for i in text_side.graph.input] == [spec.inputs["words"].name]
    assert [o.name for o in text_side.graph.output] == [parts.projected]
    assert {"MatMul", "Div"} <= {n.op_type for n in text_side.graph.node}  # the projection and / tau
    # the rest keeps the scorer's inputs and outputs; its word readers are the product's side and shapes
    assert [i.name for i in rest.graph.input] == spec.input_names
    assert [o.name for o in rest.graph.output] == spec.output_names
    assert not any(parts.projected in node.output for node in rest.graph.node)
    readers = {n.op_type for n in rest.graph.node if spec.inputs["words"].name in n.input}
    assert "Shape" in readers and readers - {"Shape"}, readers
    assert len(rest.graph.node) + len(text_side.graph.node) <= len(onnx.load(str(spec.file)).graph.node)


@slow
def test_split_scores_are_bit_identical_to_the_whole_graph(sessions, features, monkeypatch):
    bundle, split, whole = sessions
    text, videos = features
    monkeypatch.setattr(scoring.Scorer, "plan_tiles", lambda self, n_text, n_video, memory_mb: TILE)
    want = scoring.score_matrix(scoring.Scorer(whole, bundle.config), text, videos)
    got = scoring.score_matrix(scoring.Scorer(split, bundle.config), text, videos)
    for level, value in want.items():
        assert np.array_equal(got[level], value), level
    want_top = scoring.score_topk(scoring.Scorer(whole, bundle.config), text, videos, 5)
    got_top = scoring.score_topk(scoring.Scorer(split, bundle.config), text, videos, 5)
    assert np.array_equal(got_top.indices, want_top.indices) and np.array_equal(got_top.fused, want_top.fused)


@slow
def test_the_text_side_runs_once_per_scoring_call_not_per_tile(sessions, features, monkeypatch):
    bundle, split, _ = sessions
    text, videos = features
    monkeypatch.setattr(scoring.Scorer, "plan_tiles", lambda self, n_text, n_video, memory_mb: TILE)
    calls = []
    original = split.text_side.run
    monkeypatch.setattr(split.text_side, "run", lambda inputs: calls.append(len(inputs["words"])) or original(inputs))
    scoring.score_matrix(scoring.Scorer(split, bundle.config), text, videos)
    assert calls == [TEXTS]  # 3 text tiles x 3 video blocks = 9 tiles, one projection of all 7 texts


@slow
def test_a_direct_call_with_raw_words_is_projected_first(sessions, features):
    """Callers that hand the session raw words (a warm-up probe, two-stage checks) get the same
    scores; projected words passed as such are not projected twice."""
    _bundle, split, whole = sessions
    text, videos = features
    block = videos.features(0, 4)
    inputs = {"sentence": text.sentence[:2], "words": text.words[:2], **block}
    want = whole.run(inputs)
    got = split.run(inputs)
    for level, value in want.items():
        assert np.array_equal(got[level], value), level
    projected = split.project_words(text.words[:2])
    assert not np.array_equal(projected, text.words[:2])
    again = split.run({"sentence": text.sentence[:2], PROJECTED_WORDS: projected, **block})
    for level, value in want.items():
        assert np.array_equal(again[level], value), level
    assert whole.project_words(text.words) is None


def _graph(extra_word_reader: bool = False, text_from_sentence: bool = False, width: int = 4) -> bytes:
    """A small scorer-like graph: normalise(words) @ A / tau (capped by a Clip whose optional lower
    bound is left out, as exported graphs leave optional inputs), its product with the patches,
    summed. ``extra_word_reader``: the output also adds the raw words' sum (another reader of the
    words); ``text_from_sentence``: the projection also adds the sentence (not the words alone);
    ``width``: the projection's width (the words' own, 4, by default)."""
    d, l, p = 4, 3, 2
    nodes = [
        helper.make_node("ReduceL2", ["words"], ["norm"], axes=[-1], keepdims=1),
        helper.make_node("Div", ["words", "norm"], ["unit"]),
        helper.make_node("MatMul", ["unit", "A"], ["proj"]),
        helper.make_node("Clip", ["proj", "", "cap"], ["capped"]),
        helper.make_node("Div", ["capped", "tau"], ["w"]),
    ]
    if text_from_sentence:
        nodes += [helper.make_node("Unsqueeze", ["sentence", "one"], ["s3"]),
                  helper.make_node("Add", ["w", "s3"], ["w_s"])]
    w = "w_s" if text_from_sentence else "w"
    nodes += [
        helper.make_node("Shape", ["words"], ["wshape"]),
        helper.make_node("Gather", ["wshape", "zero"], ["t"], axis=0),
        helper.make_node("Reshape", [w, "flat"], ["w2"]),
        helper.make_node("Transpose", ["w2"], ["wt"], perm=[1, 0]),
        helper.make_node("Reshape", ["patches", "flat"], ["p2"]),
        helper.make_node("MatMul", ["p2", "wt"], ["fine"]),
        helper.make_node("ReduceSum", ["fine"], ["total"], keepdims=0),
        helper.make_node("Cast", ["t"], ["tf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["total", "tf"], ["score"]),
    ]
    if extra_word_reader:
        nodes += [helper.make_node("ReduceSum", ["words"], ["wsum"], keepdims=0),
                  helper.make_node("Add", ["score", "wsum"], ["out"])]
    out = "out" if extra_word_reader else "score"
    inits = [numpy_helper.from_array(np.eye(d, width, dtype=np.float32), "A"),
             numpy_helper.from_array(np.array(0.01, np.float32), "tau"),
             numpy_helper.from_array(np.array(1e30, np.float32), "cap"),
             numpy_helper.from_array(np.array([-1, width], np.int64), "flat"),
             numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([1], np.int64), "one")]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("sentence", TensorProto.FLOAT, ["T", d]),
         helper.make_tensor_value_info("words", TensorProto.FLOAT, ["T", l, d]),
         helper.make_tensor_value_info("patches", TensorProto.FLOAT, ["V", p, width])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_the_small_graph_of_the_expected_form_is_split_and_scores_the_same():
    import onnxruntime as ort

    model = _graph()
    parts = split_scorer(model, "words", "patches")
    assert parts is not None and parts.projected == "w"
    rng = np.random.default_rng(0)
    feeds = {"sentence": rng.standard_normal((2, 4), dtype=np.float32),
             "words": rng.standard_normal((2, 3, 4), dtype=np.float32),
             "patches": rng.standard_normal((5, 2, 4), dtype=np.float32)}
    def session(graph: bytes):
        return ort.InferenceSession(graph, providers=["CPUExecutionProvider"])

    want = session(model).run(None, feeds)[0]
    (w,) = session(parts.text_side).run(None, {"words": feeds["words"]})
    got = session(parts.rest).run(None, {**feeds, "words": w})[0]
    assert np.array_equal(got, want)


@pytest.mark.parametrize("kind", [{"extra_word_reader": True}, {"text_from_sentence": True}, {"width": 5}],
                         ids=["extra_word_reader", "text_from_sentence", "projection_of_another_width"])
def test_graphs_of_another_form_are_left_whole(kind):
    assert split_scorer(_graph(**kind), "words", "patches") is None


def test_a_graph_without_one_patch_word_product_is_left_whole():
    model = onnx.load_from_string(_graph())
    model.graph.node.append(helper.make_node("MatMul", ["p2", "wt"], ["fine2"]))
    assert split_scorer(model.SerializeToString(), "words", "patches") is None


@slow
def test_by_default_a_session_is_whole_and_onnx_is_never_imported(tiny_export):
    """The cut imports onnx (~0.5 s): a one-off command that scores little must not pay it."""
    import subprocess
    import sys

    code = (f"import sys; from runtime.bundle import load_bundle; from runtime.backends import open_session\n"
            f"b = load_bundle({str(tiny_export.bundle)!r})\n"
            f"whole = open_session(b, 'scorer', 'cpu')\n"
            f"print(whole.text_side is None, 'onnx' in sys.modules)\n"
            f"split = open_session(b, 'scorer', 'cpu', split_text_side=True)\n"
            f"print(split.text_side is not None, 'onnx' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False", "True", "True"]


@slow
def test_the_service_and_large_one_off_work_cut_the_text_side_and_small_work_does_not(tiny_export, tmp_path,
                                                                                       monkeypatch):
    from runtime_helpers import synthetic_index

    from runtime import deployment
    from runtime.serve.service import SearchService
    from runtime.serve.settings import ServeSettings

    bundle = load_bundle(tiny_export.bundle)
    index = synthetic_index(tmp_path / "index", bundle, videos=6)
    asked = []
    real = deployment.load_query_models

    def spy(*args, **kwargs):
        asked.append(kwargs.get("split_text_side", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(deployment, "load_query_models", spy)
    import runtime.serve.service as service_module

    monkeypatch.setattr(service_module, "load_query_models", spy)
    service = SearchService.open(ServeSettings(index_dir=index, backend="cpu"))
    assert asked == [True] and service.engine.scorer.session.text_side is not None

    from click.testing import CliRunner

    from runtime.cli import main

    def search(queries: int) -> None:
        result = CliRunner().invoke(main, ["search", "--index", str(index), "--backend", "cpu", "-q",
                                           *[a for i in range(queries) for a in ("--query", f"a dog {i}")],
                                           "-o", str(tmp_path / "hits.jsonl")])
        assert result.exit_code == 0, result.output

    asked.clear()
    search(2)  # 2 queries x 6 videos: far below the threshold
    monkeypatch.setattr(selection, "SPLIT_MIN_PAIRS", 12)
    search(2)  # 12 pairs: at the threshold
    search(1)
    assert asked == [False, True, False]
