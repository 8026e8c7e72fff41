"""``ucofia-run export-features``: parquet and npy files that pyarrow and numpy read (in a process
without ucofia) hold every live row's id, metadata and features equal to what the index stores
(decoded), in row groups; a missing pyarrow names the extra; the output appears whole or not at all."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from runtime_helpers import run_cli

from runtime.bundle import load_bundle
from runtime.index import FEATURE_ROLES, GalleryIndex, IndexWriter

ROWS = 23
META = [{"channel": ["news", "sport"][i % 2], "year": 2000 + i, **({"score": 0.5} if i % 3 == 0 else {}),
         **({"tags": ["a", f"t{i}"]} if i % 4 == 0 else {}), **({"video": "name clash"} if i == 5 else {}),
         **({"mixed": i if i % 2 else str(i)} if i < 4 else {})} for i in range(ROWS)]
READ_PARQUET = """
import json, sys
import numpy as np, pyarrow.parquet as pq
f = pq.ParquetFile(sys.argv[1])
t = f.read()
out = {"row_groups": f.num_row_groups, "columns": t.column_names, "id": t.column("id").to_pylist(),
       "video": np.stack(t.column("video").to_numpy(zero_copy_only=False)).tolist(),
       "patches": np.array(t.column("patches").to_pylist(), np.float32).tolist()
                  if "patches" in t.column_names else None,
       "meta": {c: t.column(c).to_pylist() for c in t.column_names if c not in ("id", "video", "patches")},
       "types": {c: str(t.schema.field(c).type) for c in t.column_names}}
print(json.dumps(out))
"""
READ_NPY = """
import json, sys
import numpy as np
d = sys.argv[1]
print(json.dumps({"id": np.load(d + "/id.npy").tolist(), "video": np.load(d + "/video.npy").tolist(),
                  "frames": np.load(d + "/frame_features.npy").tolist(),
                  "meta": [json.loads(l) for l in open(d + "/metadata.jsonl")]}))
"""


def _without_ucofia(script: str, *args: str) -> dict:
    """Run ``script`` in a fresh Python that cannot import ucofia or runtime (isolated mode)."""
    result = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.modules['runtime'] = None; "
                             "sys.modules['ucofia'] = None\n" + script, *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module", params=["float32", "float16"])
def index(request, fake_bundle, tmp_path_factory):
    """ROWS random rows with metadata in shards of 7, two of them removed, stored as float32 / float16."""
    bundle = load_bundle(fake_bundle)
    cfg, rng = bundle.config, np.random.default_rng(5)
    root = tmp_path_factory.mktemp("export") / "index"
    with IndexWriter(root, bundle, request.param) as writer:
        for s0 in range(0, ROWS, 7):
            ids = [f"v{i}" for i in range(s0, min(s0 + 7, ROWS))]
            n = len(ids)
            writer.add_batch(ids, {
                "video": rng.standard_normal((n, cfg.embed_dim), dtype=np.float32),
                "frame_features": rng.standard_normal((n, cfg.max_frames, cfg.embed_dim), dtype=np.float32),
                "patches": rng.standard_normal((n, cfg.num_pixels, cfg.embed_dim), dtype=np.float32),
                "video_mask": np.ones((n, cfg.max_frames), np.float32)},
                [{"id": vid, **({"metadata": META[int(vid[1:])]} if int(vid[1:]) != 7 else {})} for vid in ids])
    ids_file = root.parent / "remove.txt"
    ids_file.write_text("v2\nv9\n")
    assert run_cli("remove", "--index", str(root), "--ids", str(ids_file), "-q").returncode == 0
    return root


def _stored(root):
    gallery = GalleryIndex(root)
    return gallery, gallery.features(0, len(gallery), roles=FEATURE_ROLES)


def test_parquet_holds_the_stored_values_in_row_groups(index, tmp_path):
    out = tmp_path / "features.parquet"
    result = run_cli("export-features", "--index", str(index), "--format", "parquet", "-o", str(out), "--patches",
                     "--rows-per-group", "5")
    assert result.returncode == 0, result.stderr
    got = _without_ucofia(READ_PARQUET, str(out))
    gallery, stored = _stored(index)
    assert got["id"] == gallery.ids and "v2" not in got["id"] and len(got["id"]) == ROWS - 2
    assert got["row_groups"] == -(-(ROWS - 2) // 5)
    np.testing.assert_array_equal(np.array(got["video"], np.float32), stored["video"])
    np.testing.assert_array_equal(np.array(got["patches"], np.float32), stored["patches"])
    rows = [int(vid[1:]) for vid in gallery.ids]
    want = {"channel": [META[i]["channel"] if i != 7 else None for i in rows],
            "year": [META[i]["year"] if i != 7 else None for i in rows],
            "score": [META[i].get("score") if i != 7 else None for i in rows],
            "tags": [META[i].get("tags") if i != 7 else None for i in rows],
            "metadata.video": [META[i].get("video") for i in rows],
            "mixed": [None if i >= 4 else json.dumps(META[i]["mixed"]) for i in rows]}
    assert got["meta"] == want
    assert got["types"]["year"] == "int64" and got["types"]["tags"].startswith("list<")
    assert got["types"]["video"] == "fixed_size_list<element: float>[64]"


def test_npy_needs_numpy_only_and_holds_the_stored_values(index, tmp_path):
    out = tmp_path / "features"
    result = run_cli("export-features", "--index", str(index), "--format", "npy", "-o", str(out), "--frames",
                     "--rows-per-group", "4")
    assert result.returncode == 0, result.stderr
    got = _without_ucofia(READ_NPY, str(out))
    gallery, stored = _stored(index)
    assert got["id"] == gallery.ids
    np.testing.assert_array_equal(np.array(got["video"], np.float32), stored["video"])
    np.testing.assert_array_equal(np.array(got["frames"], np.float32), stored["frame_features"])
    assert got["meta"] == [META[int(vid[1:])] if vid != "v7" else {} for vid in gallery.ids]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features"]  # no temporary left
    again = run_cli("export-features", "--index", str(index), "--format", "npy", "-o", str(out))
    assert again.returncode == 1 and "exists" in again.stderr


def test_parquet_without_pyarrow_names_the_extra_and_writes_nothing(index, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    out = tmp_path / "f.parquet"
    result = run_cli("export-features", "--index", str(index), "--format", "parquet", "-o", str(out))
    assert result.returncode == 1 and "pip install 'ucofia[parquet]'" in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []
