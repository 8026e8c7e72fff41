"""API keys for ``ucofia-run serve``: a key file that stores only hashes, scope checks, and signed
short-lived URLs for thumbnails and media (which a browser fetches without an Authorization header).

Key file (JSON, written atomically with mode 0600 by ``ucofia-run api-key create``, under an
exclusive lock on ``<file>.lock`` so that two commands never lose each other's change; refused,
as ssh refuses a private key, when its group or others have any permission on it)::

    {"format": "ucofia.api-keys/1",
     "keys": [{"name": "alice", "sha256": "<hex>", "scopes": ["search"], "created": 1764000000.0}]}

A key is 32 random bytes (``secrets.token_urlsafe``) behind the prefix ``ucofia_``; the file holds
its SHA-256 only. A fast hash is enough for keys of that entropy (no password to guess), and
every check compares against every stored hash with ``hmac.compare_digest``, so neither a match
nor its position shows in the timing. A running server re-reads the file when it changes
(``KeyFile``), so ``create`` and ``revoke`` apply at once.

Signed links (``MediaSigner``) carry the id of the key that searched (``kid``: a digest of the
key's hash, not the key), the kind of resource (thumbnail or media) and an expiry; the server
accepts one only while that key is still in the file. The signing secret is read from a file
(``load_link_secret``: created 0600 on first use, next to the key file by default), so replicas
that share it accept each other's links; expiries are rounded up to a bucket, so a video's link
stays the same for a while and browser caches hit.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import stat
import tempfile
import time
from collections.abc import Iterator
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
# Hex digits of a key id (a digest of the key's stored hash) in signed links.
KEY_ID_CHARS = 16
# The signing secret: this many random bytes, hex in its file.
LINK_SECRET_BYTES = 32
LINK_SECRET_SUFFIX = ".link-secret"
LOCK_SUFFIX = ".lock"
# The kinds of resource a signed link may open.
THUMBNAIL, MEDIA = "thumbnail", "media"
LINK_KINDS = (THUMBNAIL, MEDIA)

logger = logging.getLogger(__name__)


class KeyFileError(RuntimeUserError):
    """The API key file (or the link secret file) is missing, unreadable, malformed or open to others."""


def check_private(path: Path, what: str) -> None:
    """KeyFileError naming the chmod to run when group or others have any permission on ``path``
    (as ssh refuses such a private key); nothing to check where modes do not exist (Windows)."""
    if os.name == "nt":
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(f"{what} {path} is open to others (mode {mode:04o}); make it private with "
                           f"`chmod 600 {path}`")


@dataclass(frozen=True)
class ApiKey:
    """One stored key: its name, the SHA-256 of the secret and its scopes."""

    name: str
    sha256: str
    scopes: frozenset[str]
    created: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "scopes": sorted(self.scopes), "created": self.created}

    @property
    def kid(self) -> str:
        """The key's id in signed links: a digest of its stored hash (neither the key nor its hash)."""
        return hashlib.sha256(f"ucofia-kid\n{self.sha256}".encode()).hexdigest()[:KEY_ID_CHARS]


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

    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = list(keys)

    def __len__(self) -> int:
        return len(self.keys)

    def by_kid(self, kid: str) -> ApiKey | None:
        """The key with this id (``ApiKey.kid``), if it is still in the file."""
        if not kid.isascii():
            return None
        return next((k for k in self.keys if hmac.compare_digest(k.kid, kid)), None)

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
        check_private(path, "API key file")
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
        return cls(keys)


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


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` (the key file itself is replaced by rename, so it
    cannot carry the lock) while the block reads and rewrites the key file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + LOCK_SUFFIX), os.O_RDWR | os.O_CREAT, KEY_FILE_MODE)
    try:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks here; one command at a time
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def create_key(path: str | os.PathLike[str], name: str, scopes: list[str]) -> str:
    """Add a new key named ``name`` with ``scopes`` to the key file (created when missing) and
    return the key itself: the only time it is shown."""
    path = Path(path)
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise KeyFileError(f"scopes must be among {', '.join(SCOPES)}, got {', '.join(scopes) or 'none'}")
    if not name or not name.strip():
        raise KeyFileError("give the key a non-empty --name")
    with locked(path):
        keys = KeyRing.load(path).keys if path.exists() else []
        if any(k.name == name for k in keys):
            raise KeyFileError(f"{path} already has a key named {name!r}; choose another name or revoke it first")
        key = new_key()
        keys.append(ApiKey(name, hash_key(key), frozenset(scopes), round(time.time(), 3)))
        _write_keys(path, keys)
    return key


def revoke_key(path: str | os.PathLike[str], name: str) -> None:
    """Remove the key named ``name`` from the key file (a running server drops it within a
    second or two, and with it every link signed for it)."""
    path = Path(path)
    with locked(path):
        ring = KeyRing.load(path)
        kept = [k for k in ring.keys if k.name != name]
        if len(kept) == len(ring.keys):
            raise KeyFileError(f"{path} has no key named {name!r} (names: {', '.join(k.name for k in ring.keys)})")
        _write_keys(path, kept)


def _stamp(path: Path) -> tuple[int, int, int, int] | None:
    """What changes when the key file is rewritten, replaced or chmod-ed (None: it is gone)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino, st.st_mode


class KeyFile:
    """The key file as a running server sees it: ``refresh`` re-reads it when it changed. A file
    that has become unusable (removed, malformed, open to others) fails closed: no key is
    accepted until it is fixed, and the error is logged."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.stamp = _stamp(self.path)
        self.ring = KeyRing.load(self.path)  # at start an unusable file is an error (KeyFileError)
        self.error: str | None = None

    def refresh(self, force: bool = False) -> str | None:
        """Re-read the file if it changed (or ``force``): "ok", "failed", or None (unchanged)."""
        stamp = _stamp(self.path)
        if stamp == self.stamp and not force:
            return None
        self.stamp = stamp
        before = {k.name for k in self.ring.keys}
        try:
            ring = KeyRing.load(self.path)
        except KeyFileError as exc:
            self.ring, self.error = KeyRing([]), str(exc)
            logger.error("API key file %s is unusable, every key is refused until it is fixed: %s", self.path, exc)
            return "failed"
        self.ring, self.error = ring, None
        after = {k.name for k in ring.keys}
        logger.info("re-read API key file %s: %d key%s (added: %s; removed: %s)", self.path, len(after),
                    "" if len(after) == 1 else "s", ", ".join(sorted(after - before)) or "none",
                    ", ".join(sorted(before - after)) or "none")
        return "ok"


def default_link_secret(key_file: Path) -> Path:
    """Where the link-signing secret lives by default: ``<key file>.link-secret``."""
    return key_file.with_name(key_file.name + LINK_SECRET_SUFFIX)


def load_link_secret(path: str | os.PathLike[str]) -> bytes:
    """The link-signing secret in ``path``: created (0600, random) when missing, so that the first
    of several replicas to start writes it and the others read the same one (the file is linked
    into place, never overwritten); refused when open to others or malformed."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(LINK_SECRET_BYTES) + "\n")
            os.chmod(tmp, KEY_FILE_MODE)
            try:
                os.link(tmp, path)  # atomic, and never replaces a secret another replica wrote first
                logger.info("created the link-signing secret %s", path)
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
    check_private(path, "link secret file")
    try:
        secret = bytes.fromhex(path.read_text().strip())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise KeyFileError(f"link secret file {path} is unreadable ({exc}); delete it to have a new one made "
                           f"(links handed out so far then stop working)") from None
    if len(secret) < LINK_SECRET_BYTES:
        raise KeyFileError(f"link secret file {path} holds {len(secret)} bytes, fewer than {LINK_SECRET_BYTES}; "
                           f"delete it to have a new one made")
    return secret


class MediaSigner:
    """HMAC-signed, expiring URLs for one video's thumbnail or media, made for one key.

    ``<img>`` and ``<video>`` cannot send an Authorization header, so search results carry URLs
    with ``exp`` (unix seconds), ``kid`` (the searching key's id) and ``sig``; a signature covers
    one kind of resource, one video, one key id and one expiry. The expiry is at least ``ttl_s``
    ahead, rounded up to a multiple of ``bucket_s``: the same link for a bucket's time.
    """

    def __init__(self, secret: bytes, ttl_s: float, bucket_s: float) -> None:
        if len(secret) < LINK_SECRET_BYTES // 2:
            raise ValueError("the link secret is too short")
        self.ttl_s = ttl_s
        self.bucket_s = bucket_s
        self._secret = secret

    def _mac(self, kind: str, video_id: str, kid: str, expires: int) -> str:
        message = json.dumps([kind, kid, video_id, expires]).encode()
        mac = hmac.new(self._secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:SIGNATURE_BYTES]).decode().rstrip("=")

    def expiry(self, now: float | None = None) -> int:
        """The expiry of a link made now: ``ttl_s`` ahead, rounded up to the bucket."""
        ahead = (time.time() if now is None else now) + self.ttl_s
        return int(math.ceil(ahead / self.bucket_s) * self.bucket_s)

    def sign(self, kind: str, video_id: str, kid: str, now: float | None = None,
             expires: int | None = None) -> dict[str, str]:
        """Query parameters {exp, kid, sig} that open ``kind`` of ``video_id`` until the expiry."""
        if kind not in LINK_KINDS:
            raise ValueError(f"kind must be one of {LINK_KINDS}")
        expires = self.expiry(now) if expires is None else expires
        return {"exp": str(expires), "kid": kid, "sig": self._mac(kind, video_id, kid, expires)}

    def verify(self, kind: str, video_id: str, expires: str | None, kid: str | None, signature: str | None,
               now: float | None = None) -> bool:
        """Whether ``sig`` was made with this secret for ``kind``, ``video_id`` and ``kid``, and
        ``exp`` has not passed (whether the key still exists is the caller's check)."""
        if not expires or not signature or not kid or len(expires) > 12:
            return False
        if not (expires.isascii() and expires.isdigit() and signature.isascii() and kid.isascii()):
            return False
        if int(expires) < (time.time() if now is None else now):
            return False
        return hmac.compare_digest(self._mac(kind, video_id, kid, int(expires)), signature)
