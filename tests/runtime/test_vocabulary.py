"""A text tower smaller than the CLIP BPE vocabulary: refused at export unless asked for, and no
bundle (new, or written before the manifest recorded the size) reaches onnxruntime's raw
out-of-bounds error -- the runtime checks token ids first and says what is wrong in one line."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from runtime_helpers import build_fake_bundle, make_clip, run_cli

import ucofia
from export import export_bundle
from export.manifest import SmallVocabularyError
from runtime.bundle import load_bundle
from runtime.errors import BundleError, QueryError
from runtime.text import TextEncoder
from runtime.vocabulary import embedding_rows
from ucofia.cli import main as cli
from ucofia.config import tiny_config

SMALL_VOCAB = 128
CLIP_BPE_IDS = 49408


def _small_vocab_model():
    cfg = tiny_config()
    cfg.clip.vocab_size = SMALL_VOCAB
    return ucofia.build_model(cfg, seed=0)


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    """A bundle exported with allow_small_vocab (128 token embeddings), checked against PyTorch."""
    root = tmp_path_factory.mktemp("small_vocab")
    manifest = export_bundle(_small_vocab_model(), root / "bundle", allow_small_vocab=True)
    return root / "bundle", manifest


def _ids(rows: list[list[int]], width: int) -> np.ndarray:
    out = np.zeros((len(rows), width), np.int64)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def test_export_refuses_a_small_vocabulary(tmp_path):
    model = _small_vocab_model()
    with pytest.raises(SmallVocabularyError, match=r"128 token embeddings.*49,408"):
        export_bundle(model, tmp_path / "bundle")
    assert not tmp_path.joinpath("bundle").exists() and not list(tmp_path.iterdir())
    ucofia.save_checkpoint(tmp_path / "ckpt", model)
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "ckpt"), "-o", str(tmp_path / "bundle")])
    assert result.exit_code == 1
    assert "128 token embeddings" in result.output and "49,408" in result.output
    assert "--allow-small-vocab" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "bundle").exists()


@pytest.mark.slow
def test_allowed_small_vocabulary_is_recorded(small_bundle):
    bundle_dir, manifest = small_bundle
    assert manifest["verification"]["passed"]
    assert manifest["tokenizer"]["model_vocab_size"] == SMALL_VOCAB
    assert manifest["tokenizer"]["vocab_size"] == CLIP_BPE_IDS
    assert any("do not fit this model" in w for w in manifest["warnings"])
    assert load_bundle(bundle_dir).tokenizer.model_vocab_size == SMALL_VOCAB


@pytest.mark.slow
def test_runtime_refuses_tokenized_text_on_a_small_vocabulary(small_bundle):
    encoder = TextEncoder(load_bundle(small_bundle[0]), "cpu", 1)
    assert encoder.vocab_size == SMALL_VOCAB
    with pytest.raises(BundleError, match=r"128 token embeddings but query 1 has token id 49,406"):
        encoder.encode(["a dog runs on the beach"])
    # ids from elsewhere that fit are encoded; one that does not is named with its text number
    feats = encoder.encode_ids(_ids([[126, 5, 9, 127], [126, 127]], encoder.max_words))
    assert feats.sentence.shape[0] == 2 and np.isfinite(feats.sentence).all()
    with pytest.raises(BundleError, match=r"bank caption 12 has token id 128"):
        encoder.encode_ids(_ids([[126, 127], [126, 128, 127]], encoder.max_words), what="bank caption",
                           first_number=11)


@pytest.mark.slow
def test_bundle_without_the_field_derives_it_from_the_graph(small_bundle, tmp_path):
    old = tmp_path / "old_bundle"
    shutil.copytree(small_bundle[0], old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["tokenizer"]["model_vocab_size"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    bundle = load_bundle(old)
    assert bundle.tokenizer.model_vocab_size is None
    assert embedding_rows(bundle.graphs["text_encoder"].file, "input_ids") == SMALL_VOCAB
    encoder = TextEncoder(bundle, "cpu", 1)
    assert encoder.vocab_size == SMALL_VOCAB
    with pytest.raises(BundleError, match="--allow-small-vocab"):
        encoder.encode(["a cat"])


def test_bundle_without_the_field_and_no_embedding_lookup_is_refused(tmp_path):
    root = build_fake_bundle(tmp_path / "fake")  # its text graph reduces ids modulo 97 before the lookup
    manifest = json.loads((root / "manifest.json").read_text())
    del manifest["tokenizer"]["model_vocab_size"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"no tokenizer.model_vocab_size .* re-export the bundle"):
        TextEncoder(load_bundle(root), "cpu", 1)


def test_out_of_range_ids_on_a_full_vocabulary_are_query_errors(fake_bundle):
    encoder = TextEncoder(load_bundle(fake_bundle), "cpu", 1)
    assert encoder.vocab_size == CLIP_BPE_IDS
    assert encoder.encode(["a red square"]).sentence.shape == (1, tiny_config().embed_dim)
    with pytest.raises(QueryError, match=r"query 2: token id 49,408 is outside"):
        encoder.encode_ids(_ids([[49406, 49407], [49406, CLIP_BPE_IDS, 49407]], encoder.max_words))
    with pytest.raises(QueryError, match=r"query 1: token id -3 is outside"):
        encoder.encode_ids(_ids([[49406, -3, 49407]], encoder.max_words))


@pytest.mark.slow
def test_cli_index_with_a_bank_on_a_small_vocabulary_is_one_line(small_bundle, tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", 2.0)
    bank = tmp_path / "bank.txt"
    bank.write_text("a dog runs\na cat sleeps\n")
    done = run_cli("index", "--bundle", str(small_bundle[0]), "--videos", str(clip.parent), "--bank", str(bank),
                   "-o", str(tmp_path / "index"), "-q")
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    assert "128 token embeddings but bank caption 1 has token id 49,406" in done.stderr
    assert "Traceback" not in done.stderr and "out of data bounds" not in done.stderr
    assert not (tmp_path / "index").exists()  # refused before any video was encoded
