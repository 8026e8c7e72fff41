"""Load and validate an exported bundle directory against the contract (``runtime.bundle.contract``).

A bundle holds the manifest, the three ONNX graphs it names (text encoder, video encoder, scorer)
and the BPE vocabulary. Inputs and outputs of each graph are taken from the manifest by their
position in the contract order; their names and dtypes come from the manifest.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.bundle.contract import (
    BUNDLE_DTYPES,
    BUNDLE_FORMAT,
    GRAPH_ROLES,
    MANIFEST_FILE,
    REQUIRED_FIELDS,
    TENSOR_DTYPES,
    TOKENIZER_FIELDS,
    GraphSpec,
    TensorSpec,
)
from runtime.errors import BundleError
from ucofia.config import ConfigError, UCoFiAConfig

_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class TokenizerSpec:
    """The manifest's tokenizer section. ``model_vocab_size``: token embeddings of the text encoder
    (token ids must be below it); None in bundles written before the field existed."""

    vocab_file: Path
    max_words: int
    sot_id: int
    eot_id: int
    model_vocab_size: int | None = None


@dataclass(frozen=True)
class Bundle:
    """A validated bundle directory."""

    root: Path
    manifest: dict[str, Any]
    config: UCoFiAConfig
    fingerprint: str
    dtype: str
    graphs: dict[str, GraphSpec]
    tokenizer: TokenizerSpec

    @property
    def tensorrt(self) -> dict[str, Any] | None:
        """The manifest's TensorRT section (engines built at export), or None."""
        return self.manifest.get("tensorrt") or None


def _field(data: dict[str, Any], key: str, where: str) -> Any:
    if not isinstance(data, dict) or key not in data:
        raise BundleError(f"{where} is missing the field {key!r}; re-export the bundle with `ucofia export`")
    return data[key]


def _tensor_specs(entries: Any, roles: tuple[str, ...], where: str) -> dict[str, TensorSpec]:
    if not isinstance(entries, list) or len(entries) != len(roles):
        raise BundleError(f"{where} must list {len(roles)} tensors ({', '.join(roles)}), got {entries!r}")
    specs = {}
    for role, entry in zip(roles, entries):
        name = _field(entry, "name", f"{where} entry for {role}")
        dtype = _field(entry, "dtype", f"{where} entry {name!r}")
        shape = _field(entry, "shape", f"{where} entry {name!r}")
        if dtype not in TENSOR_DTYPES:
            raise BundleError(f"{where} entry {name!r} has unsupported dtype {dtype!r} "
                              f"(one of {sorted(TENSOR_DTYPES)})")
        specs[role] = TensorSpec(str(name), str(dtype), tuple(shape))
    return specs


def load_bundle(path: str | Path) -> Bundle:
    """Read ``path/manifest.json``, check every field and file it names, and return a Bundle.

    Raises BundleError naming the missing file or field.
    """
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"bundle directory not found: {root} (export one with `ucofia export`)")
    manifest_path = root / MANIFEST_FILE
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path} not found: {root} is not a ucofia bundle")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{manifest_path} is not valid JSON: {exc}") from None
    where = str(manifest_path)
    for key in REQUIRED_FIELDS:
        _field(manifest, key, where)
    if manifest["format"] != BUNDLE_FORMAT:
        raise BundleError(f"{where}: unsupported bundle format {manifest['format']!r} (this runtime reads "
                          f"{BUNDLE_FORMAT!r}); re-export the bundle or upgrade ucofia-run")
    try:
        config = UCoFiAConfig.from_dict(manifest["config"])
    except (ConfigError, TypeError) as exc:
        raise BundleError(f"{where}: invalid config: {exc}") from None
    fingerprint = str(manifest["fingerprint"])
    if not _FINGERPRINT.match(fingerprint):
        raise BundleError(f"{where}: fingerprint must be a 64-digit sha256 hex string, got {fingerprint!r}")
    if manifest["dtype"] not in BUNDLE_DTYPES:
        raise BundleError(f"{where}: dtype must be one of {', '.join(map(repr, BUNDLE_DTYPES))}, "
                          f"got {manifest['dtype']!r}")

    graphs = {}
    for key, (in_roles, out_roles) in GRAPH_ROLES.items():
        entry = _field(manifest["graphs"], key, f"{where} 'graphs'")
        file = root / str(_field(entry, "file", f"{where} graphs.{key}"))
        if not file.is_file():
            raise BundleError(f"bundle file missing: {file} (named by {where} graphs.{key}.file)")
        graphs[key] = GraphSpec(
            key, file,
            _tensor_specs(_field(entry, "inputs", f"{where} graphs.{key}"), in_roles, f"{where} graphs.{key}.inputs"),
            _tensor_specs(_field(entry, "outputs", f"{where} graphs.{key}"), out_roles,
                          f"{where} graphs.{key}.outputs"),
        )

    tok = manifest["tokenizer"]
    for key in TOKENIZER_FIELDS:
        _field(tok, key, f"{where} 'tokenizer'")
    vocab = root / str(tok["vocab_file"])
    if not vocab.is_file():
        raise BundleError(f"bundle file missing: {vocab} (named by {where} tokenizer.vocab_file)")
    model_vocab = tok.get("model_vocab_size")
    if model_vocab is not None and (not isinstance(model_vocab, int) or model_vocab <= 0):
        raise BundleError(f"{where}: tokenizer.model_vocab_size must be a positive integer, got {model_vocab!r}; "
                          f"re-export the bundle")
    tokenizer = TokenizerSpec(vocab, int(tok["max_words"]), int(tok["sot_id"]), int(tok["eot_id"]), model_vocab)
    if tokenizer.max_words != config.max_words:
        raise BundleError(f"{where}: tokenizer.max_words ({tokenizer.max_words}) differs from "
                          f"config.max_words ({config.max_words}); the bundle is inconsistent, re-export it")
    return Bundle(root=root, manifest=manifest, config=config, fingerprint=fingerprint,
                  dtype=str(manifest["dtype"]), graphs=graphs, tokenizer=tokenizer)
