"""API keys for ``ucofia-run serve``: a key file that stores only hashes, scope checks, and signed
short-lived URLs for thumbnails and media (which a browser fetches without an Authorization header).

Key file (JSON, written atomically with mode 0600 by ``ucofia-run api-key create``)::

    {"format": "ucofia.api-keys/1",
     "keys": [{"name": "alice", "sha256": "<hex>", "scopes": ["search"], "created": 1764000000.0}]}

A key is 32 random bytes (``secrets.token_urlsafe``) behind the prefix ``ucofia_``; the file holds
its SHA-256 only. A fast hash is enough for keys of that entropy (no password to guess), and
every check compares against every stored hash with ``hmac.compare_digest``, so neither a match
nor its position shows in the timing.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import RuntimeUserError

KEY_FILE_FORMAT = "ucofia.api-keys/1"
SEARCH_SCOPE = "search"  # search, video metadata, thumbnails, media
ADMIN_SCOPE = "admin"  # reload
SCOPES = (SEARCH_SCOPE, ADMIN_SCOPE)
KEY_PREFIX = "ucofia_"
KEY_BYTES = 32
KEY_FILE_MODE = 0o600
# Bytes of the HMAC kept in a media URL signature (128 bits).
SIGNATURE_BYTES = 16


class KeyFileError(RuntimeUserError):
    """The API key file is missing, unreadable or malformed."""


@dataclass(frozen=True)
class ApiKey:
    """One stored key: its name, the SHA-256 of the secret and its scopes."""

    name: str
    sha256: str
    scopes: frozenset[str]
    created: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "scopes": sorted(self.scopes), "created": self.created}


def hash_key(key: str) -> str:
    """Hex SHA-256 of a key as stored in the key file."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A fresh random key (shown once; only its hash is stored)."""
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def _parse_key(item: Any, where: str) -> ApiKey:
    if not isinstance(item, dict):
        raise KeyFileError(f"{where}: expected an object with name, sha256 and scopes")
    name, digest, scopes = item.get("name"), item.get("sha256"), item.get("scopes")
    if not isinstance(name, str) or not name:
        raise KeyFileError(f"{where}: 'name' must be a non-empty string")
    if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise KeyFileError(f"{where} ({name}): 'sha256' must be 64 lower-case hex digits")
    if not isinstance(scopes, list) or not scopes or any(s not in SCOPES for s in scopes):
        raise KeyFileError(f"{where} ({name}): 'scopes' must be a non-empty list of {', '.join(SCOPES)}")
    return ApiKey(name, digest, frozenset(scopes), float(item.get("created", 0.0)))


class KeyRing:
    """The keys of one key file, checked in constant time."""

    def __init__(self, keys: list[ApiKey], path: Path | None = None) -> None:
        self.keys = list(keys)
        self.path = path

    def __len__(self) -> int:
        return len(self.keys)

    def match(self, presented: str) -> ApiKey | None:
        """The key whose hash equals the presented key's, comparing with every stored hash."""
        digest = hash_key(presented).encode()
        found = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.sha256.encode()) and found is None:
                found = key
        return found

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyRing:
        """Read a key file; KeyFileError naming the file and field when it is malformed."""
        path = Path(path)
        if not path.is_file():
            raise KeyFileError(f"API key file not found: {path}; create one with "
                               f"`ucofia-run api-key create --file {path} --name NAME`")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise KeyFileError(f"API key file {path} is unreadable ({exc}); recreate it with "
                               f"`ucofia-run api-key create`") from None
        if not isinstance(data, dict) or data.get("format") != KEY_FILE_FORMAT:
            raise KeyFileError(f"{path}: not a ucofia API key file (format must be {KEY_FILE_FORMAT!r})")
        items = data.get("keys")
        if not isinstance(items, list):
            raise KeyFileError(f"{path}: 'keys' must be a list")
        keys = [_parse_key(item, f"{path} keys[{i}]") for i, item in enumerate(items)]
        names = [k.name for k in keys]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise KeyFileError(f"{path}: key names must be unique, repeated: {', '.join(dup)}")
        if not keys:
            raise KeyFileError(f"{path} holds no keys; add one with `ucofia-run api-key create`")
        return cls(keys, path)


def _write_keys(path: Path, keys: list[ApiKey]) -> None:
    """Write the key file atomically; it is readable by its owner only from the first byte on."""
    text = json.dumps({"format": KEY_FILE_FORMAT, "keys": [k.to_json() for k in keys]}, indent=1) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, KEY_FILE_MODE)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def create_key(path: str | os.PathLike[str], name: str, scopes: list[str]) -> str:
    """Add a new key named ``name`` with ``scopes`` to the key file (created when missing) and
    return the key itself: the only time it is shown."""
    path = Path(path)
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise KeyFileError(f"scopes must be among {', '.join(SCOPES)}, got {', '.join(scopes) or 'none'}")
    if not name or not name.strip():
        raise KeyFileError("give the key a non-empty --name")
    keys = KeyRing.load(path).keys if path.exists() else []
    if any(k.name == name for k in keys):
        raise KeyFileError(f"{path} already has a key named {name!r}; choose another name or revoke it first")
    key = new_key()
    keys.append(ApiKey(name, hash_key(key), frozenset(scopes), round(time.time(), 3)))
    _write_keys(path, keys)
    return key


def revoke_key(path: str | os.PathLike[str], name: str) -> None:
    """Remove the key named ``name`` from the key file."""
    path = Path(path)
    ring = KeyRing.load(path)
    kept = [k for k in ring.keys if k.name != name]
    if len(kept) == len(ring.keys):
        raise KeyFileError(f"{path} has no key named {name!r} (names: {', '.join(k.name for k in ring.keys)})")
    _write_keys(path, kept)


class MediaSigner:
    """HMAC-signed, expiring URLs for one video's thumbnail and media.

    ``<img>`` and ``<video>`` cannot send an Authorization header, so search results carry URLs
    with ``exp`` (unix seconds) and ``sig``; a signature covers one video id and one expiry only.
    The secret is random per server process: restarting the server invalidates every URL.
    """

    def __init__(self, ttl_s: float, secret: bytes | None = None) -> None:
        self.ttl_s = ttl_s
        self._secret = secret or secrets.token_bytes(32)

    def _mac(self, video_id: str, expires: int) -> str:
        mac = hmac.new(self._secret, f"{video_id}\n{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:SIGNATURE_BYTES]).decode().rstrip("=")

    def sign(self, video_id: str, now: float | None = None) -> dict[str, str]:
        """Query parameters {exp, sig} that grant access to ``video_id`` for ``ttl_s`` seconds."""
        expires = int((time.time() if now is None else now) + self.ttl_s)
        return {"exp": str(expires), "sig": self._mac(video_id, expires)}

    def verify(self, video_id: str, expires: str | None, signature: str | None, now: float | None = None) -> bool:
        """Whether ``sig`` was made by this signer for ``video_id`` and ``exp`` has not passed."""
        if not expires or not signature or not expires.isdigit():
            return False
        if int(expires) < (time.time() if now is None else now):
            return False
        return hmac.compare_digest(self._mac(video_id, int(expires)), signature)
