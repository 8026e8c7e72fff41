"""The public UCoFiA reference code as a benchmark baseline (``scoring.py --reference-tree DIR``).

The reference (github.com/Ziyang412/UCoFiA, commit 6098be2) is never part of this repository:
``DIR`` is an extracted copy of it, e.g.::

    git clone https://github.com/Ziyang412/UCoFiA /tmp/UCoFiA   # or: git archive 6098be2 | tar -x -C DIR

Its ``eval_t2v`` tree is imported at run time exactly as the parity-fixture generator does
(``tests/fixtures/reference/make_reference_fixtures.py``: ``load_tree`` and
``build_reference_model``, with the same run-time patches: numpy aliases, stubbed download
modules, no-op ``init_process_group`` while importing, identity all-gather, a CLIP state dict
handed to ``CLIP.get_config``, the cross config's width set to the embed dim, float32, hard
top-k). The CLIP towers are tiny (one layer each, 32 px frames, 128 tokens): the scorer loop
never touches them, so they only keep the baseline's memory figure honest; the parts the loop
uses (frame position embeddings, the seqTransf temporal transformer, the ISA matrices, the logit
scale) have the benchmarked geometry.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GENERATOR = REPO / "tests" / "fixtures" / "reference" / "make_reference_fixtures.py"
TREE = "eval_t2v"
# Layers of the tiny CLIP towers around the benchmarked heads (never run by the scorer loop).
TOWER_LAYERS = 1
# Parameters the reference's similarity function reads, by state-dict prefix.
HEAD_PREFIXES = ("frame_position_embeddings.", "transformerClip.", "clip.logit_scale")


def _generator() -> types.ModuleType:
    """The fixture generator's module (its import helpers and patches), loaded from its file."""
    name = "ucofia_reference_fixture_generator"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, GENERATOR)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules[name]


def load(tree_root: Path) -> types.SimpleNamespace:
    """Import the reference's eval_t2v tree from ``tree_root`` (the extracted repository)."""
    root = Path(tree_root)
    if not (root / TREE / "main_ucofia.py").is_file():
        raise SystemExit(f"--reference-tree {root}: no {TREE}/main_ucofia.py there; pass the folder of an "
                         "extracted github.com/Ziyang412/UCoFiA checkout (commit 6098be2)")
    return _generator().load_tree(root, TREE)


def build_model(ns: types.SimpleNamespace, cfg):
    """The reference UCoFiA (eval tree, seqTransf, hard top-k, float32, eval mode) with the scorer
    geometry of ``cfg`` (a ucofia UCoFiAConfig) around tiny CLIP towers."""
    if cfg.clip.text_width != cfg.embed_dim:
        raise SystemExit(f"the reference sizes its temporal transformer by the text width ({cfg.clip.text_width}); "
                         f"it must equal the embed dim ({cfg.embed_dim}) for a reference baseline")
    if cfg.temporal_heads != cfg.clip.text_width // 64 or cfg.frame_positions != cfg.clip.context_length:
        raise SystemExit("the reference fixes temporal heads = text width // 64 and frame positions = context "
                         f"length; config {cfg.clip_model_name} differs")
    return _generator().build_reference_model(
        ns, TOWER_LAYERS, TOWER_LAYERS, cfg.temporal_layers, embed_dim=cfg.embed_dim,
        text_width=cfg.clip.text_width, max_words=cfg.max_words, max_frames=cfg.max_frames)


def copy_heads(source_state: dict, reference_model) -> list[str]:
    """Copy every head parameter (``HEAD_PREFIXES`` and the ISA matrices the reference loop reads)
    from ``source_state`` (a ucofia model's state dict: same names) into ``reference_model``;
    returns the names copied. Raises when one is missing or has another shape."""
    import torch
    from common import ISA_WEIGHTS  # benchmarks/ is on sys.path for the scripts

    names = [k for k in reference_model.state_dict() if k.startswith(HEAD_PREFIXES) or k in ISA_WEIGHTS]
    params = dict(reference_model.named_parameters())
    with torch.no_grad():
        for name in names:
            if name not in source_state or source_state[name].shape != params[name].shape:
                got = None if name not in source_state else tuple(source_state[name].shape)
                raise SystemExit(f"cannot copy {name} {tuple(params[name].shape)} into the reference model: the "
                                 f"ucofia model has {got}")
            params[name].copy_(source_state[name])
    return names

