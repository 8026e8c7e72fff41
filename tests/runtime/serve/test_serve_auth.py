"""Signed links, key files and key reloads, in process (issue 27: the auth survivors of mutation).

A signed link opens one kind of resource of one video for one key until its expiry: any change to
its signature, expiry, video, kind or key id -- one character, a truncation, a pushed expiry --
is refused. The key file fails closed when it breaks, and a reload (``POST /v1/admin/reload``, or
the reload ``--watch`` makes) re-reads it at once, without waiting for the periodic check.
"""
from __future__ import annotations

import json
import os
import string
import time

import pytest

pytest.importorskip("fastapi", reason="ucofia-run serve needs the 'serve' extra")
httpx = pytest.importorskip("httpx", reason="the service tests use httpx")

from serve_helpers import ServerThread, build_index, make_keys, open_app  # noqa: E402

from runtime.bundle import load_bundle  # noqa: E402
from runtime.index import GalleryIndex, IndexWriter  # noqa: E402
from runtime.serve import auth  # noqa: E402
from runtime.serve.auth import MEDIA, THUMBNAIL, KeyFile, KeyFileError, KeyRing, MediaSigner  # noqa: E402

SECRET = bytes(range(32))
NOW = 1_800_000_000.0
TTL_S, BUCKET_S = 3600.0, 600.0
KID = "k" * auth.KEY_ID_CHARS
VIDEO = "clip0"
QUERY = {"queries": ["a red car"], "top_k": 2}
NEVER_S = 3600.0  # a periodic key check that never comes during a test
WATCH_S = 0.2
WAIT_S = 30.0


@pytest.fixture
def signer() -> MediaSigner:
    return MediaSigner(SECRET, TTL_S, BUCKET_S)


def _verify(signer: MediaSigner, link: dict[str, str], kind: str = MEDIA, video: str = VIDEO,
            now: float = NOW) -> bool:
    return signer.verify(kind, video, link["exp"], link["kid"], link["sig"], now=now)


def test_a_link_opens_its_kind_of_its_video_for_its_key_until_its_expiry(signer):
    link = signer.sign(MEDIA, VIDEO, KID, now=NOW)
    assert _verify(signer, link)
    assert not _verify(signer, link, kind=THUMBNAIL)
    assert not _verify(signer, link, video="clip1")
    assert not _verify(signer, {**link, "kid": "j" + KID[1:]})
    assert not MediaSigner(bytes(reversed(SECRET)), TTL_S, BUCKET_S).verify(
        MEDIA, VIDEO, link["exp"], link["kid"], link["sig"], now=NOW)
    expires = int(link["exp"])
    assert _verify(signer, link, now=expires) and not _verify(signer, link, now=expires + 1)


def test_the_expiry_is_at_least_the_ttl_ahead_rounded_up_to_the_bucket(signer):
    for now in (NOW, NOW + 1, NOW + BUCKET_S - 1, NOW + 0.5):
        expires = int(signer.sign(MEDIA, VIDEO, KID, now=now)["exp"])
        assert expires % BUCKET_S == 0 and now + TTL_S <= expires < now + TTL_S + BUCKET_S
    # within one bucket the link is the same (browser caches hit), in the next one it is not
    assert signer.sign(MEDIA, VIDEO, KID, now=NOW + 1) == signer.sign(MEDIA, VIDEO, KID, now=NOW + 2)
    assert signer.sign(MEDIA, VIDEO, KID, now=NOW)["exp"] != signer.sign(MEDIA, VIDEO, KID, now=NOW + BUCKET_S)["exp"]


def test_every_one_character_change_of_the_signature_is_refused(signer):
    link = signer.sign(MEDIA, VIDEO, KID, now=NOW)
    sig = link["sig"]
    alphabet = string.ascii_letters + string.digits + "-_"
    for i, char in enumerate(sig):
        other = alphabet[(alphabet.index(char) + 1) % len(alphabet)]
        assert not _verify(signer, {**link, "sig": sig[:i] + other + sig[i + 1:]}), i


@pytest.mark.parametrize("sig", ["", "A", "x", "=", None])
def test_a_short_or_missing_signature_is_refused(signer, sig):
    assert not _verify(signer, {**signer.sign(MEDIA, VIDEO, KID, now=NOW), "sig": sig})


def test_a_truncated_or_extended_signature_is_refused(signer):
    link = signer.sign(MEDIA, VIDEO, KID, now=NOW)
    assert not _verify(signer, {**link, "sig": link["sig"][:-1]})
    assert not _verify(signer, {**link, "sig": link["sig"][1:]})
    assert not _verify(signer, {**link, "sig": link["sig"] + "A"})


@pytest.mark.parametrize("pushed_s", [1, BUCKET_S, 365 * 86400])
def test_an_expiry_pushed_ahead_keeps_no_signature(signer, pushed_s):
    link = signer.sign(MEDIA, VIDEO, KID, now=NOW)
    assert not _verify(signer, {**link, "exp": str(int(link["exp"]) + int(pushed_s))})


@pytest.mark.parametrize("exp", ["", "12a", "-1", "1e12", "١٢٣", "9" * 13, None])
def test_an_expiry_that_is_not_plain_digits_is_refused(signer, exp):
    link = signer.sign(MEDIA, VIDEO, KID, now=NOW)
    assert not _verify(signer, {**link, "exp": exp}, now=0)


def test_the_sizes_docs_serve_md_gives(signer, tmp_path):
    """128-bit signatures, 16-hex-digit key ids, keys of 32 random bytes, 256-bit link secrets."""
    import base64

    link = signer.sign(MEDIA, VIDEO, KID, now=NOW)
    assert len(link["sig"]) == 22 and len(base64.urlsafe_b64decode(link["sig"] + "==")) == 16
    key = auth.new_key()
    assert key.startswith("ucofia_") and len(base64.urlsafe_b64decode(key.removeprefix("ucofia_") + "=")) == 32
    keys = make_keys(tmp_path / "keys.json")
    kid = KeyRing.load(keys.path).match(keys.search).kid
    assert len(kid) == 16 and set(kid) <= set("0123456789abcdef")
    secret_file = tmp_path / "secret"
    assert len(auth.load_link_secret(secret_file)) == 32 and len(secret_file.read_text().strip()) == 64


def test_signing_refuses_unknown_kinds_and_short_secrets():
    with pytest.raises(ValueError, match="kind"):
        MediaSigner(SECRET, TTL_S, BUCKET_S).sign("index", VIDEO, KID, now=NOW)
    with pytest.raises(ValueError, match="too short"):
        MediaSigner(SECRET[: auth.LINK_SECRET_BYTES // 2 - 1], TTL_S, BUCKET_S)
    half = MediaSigner(SECRET[: auth.LINK_SECRET_BYTES // 2], TTL_S, BUCKET_S)  # the shortest accepted
    assert _verify(half, half.sign(MEDIA, VIDEO, KID, now=NOW))


def test_key_ids_and_matching(tmp_path):
    keys = make_keys(tmp_path / "keys.json")
    ring = KeyRing.load(keys.path)
    searcher, operator = ring.match(keys.search), ring.match(keys.admin)
    assert searcher.name == "searcher" and operator.name == "operator" and ring.match(keys.search + "x") is None
    assert searcher.scopes == {"search"} and operator.scopes == {"admin"}
    assert ring.by_kid(searcher.kid) is searcher and ring.by_kid(operator.kid) is operator
    assert searcher.kid != operator.kid and len(searcher.kid) == auth.KEY_ID_CHARS
    assert ring.by_kid("é" * auth.KEY_ID_CHARS) is None and ring.by_kid("0" * auth.KEY_ID_CHARS) is None


def _write(path, data) -> None:
    path.write_text(json.dumps(data))
    os.chmod(path, auth.KEY_FILE_MODE)


@pytest.mark.parametrize("data, message", [
    ("other format", "not a ucofia API key file"),
    ("no format", "not a ucofia API key file"),
    ("list", "'keys' must be a list"),
    ("empty", "holds no keys"),
    ("twice", "repeated: a"),
    ("short hash", "64 lower-case hex"),
    ("bad scope", "'scopes' must be"),
    ("no name", "'name' must be"),
])
def test_a_malformed_key_file_is_refused_naming_the_problem(tmp_path, data, message):
    good = {"name": "a", "sha256": "0" * 64, "scopes": ["search"]}
    fmt = auth.KEY_FILE_FORMAT
    data = {"other format": {"format": "other", "keys": [good]}, "no format": {"keys": [good]},
            "list": {"format": fmt, "keys": {}}, "empty": {"format": fmt, "keys": []},
            "twice": {"format": fmt, "keys": [good, good]},
            "short hash": {"format": fmt, "keys": [{**good, "sha256": "0" * 63}]},
            "bad scope": {"format": fmt, "keys": [{**good, "scopes": ["root"]}]},
            "no name": {"format": fmt, "keys": [{**good, "name": ""}]}}[data]
    path = tmp_path / "keys.json"
    _write(path, data)
    with pytest.raises(KeyFileError, match=message):
        KeyRing.load(path)


def test_the_key_file_is_re_read_when_it_changes_and_fails_closed_when_it_breaks(tmp_path):
    keys = make_keys(tmp_path / "keys.json")
    watched = KeyFile(keys.path)
    assert watched.refresh() is None and watched.refresh(force=True) == "ok"
    auth.revoke_key(keys.path, "searcher")
    assert watched.refresh() == "ok"
    assert watched.ring.match(keys.search) is None and watched.ring.match(keys.admin) is not None
    good = keys.path.read_text()
    keys.path.write_text("{ not json")
    assert watched.refresh() == "failed" and len(watched.ring) == 0 and "unreadable" in watched.error
    keys.path.write_text(good)
    os.chmod(keys.path, 0o644)
    assert watched.refresh() == "failed" and len(watched.ring) == 0
    os.chmod(keys.path, auth.KEY_FILE_MODE)
    assert watched.refresh() == "ok" and watched.error is None and watched.ring.match(keys.admin) is not None


def test_the_link_secret_is_made_once_private_and_shared(tmp_path):
    path = tmp_path / "keys.json.link-secret"
    first = auth.load_link_secret(path)
    assert len(first) >= auth.LINK_SECRET_BYTES and (path.stat().st_mode & 0o777) == auth.KEY_FILE_MODE
    assert auth.load_link_secret(path) == first
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError):
        auth.load_link_secret(path)
    path.write_text("00" * (auth.LINK_SECRET_BYTES - 1))
    os.chmod(path, auth.KEY_FILE_MODE)
    with pytest.raises(KeyFileError, match="fewer than"):
        auth.load_link_secret(path)


@pytest.fixture(scope="module")
def keyed(fake_bundle, tmp_path_factory):
    """A served index (with --watch) whose periodic key check never comes: only reloads re-read
    the key file."""
    root = tmp_path_factory.mktemp("serve_auth")
    bundle, _, index = build_index(root, clips=3, bundle=fake_bundle)
    keys = make_keys(root / "keys.json")
    _service, app = open_app(index, api_keys=keys.path, key_check_interval_s=NEVER_S, watch=True,
                             watch_interval_s=WATCH_S)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        yield client, keys, index, bundle


def _search(client, key: str) -> int:
    return client.post("/v1/search", json=QUERY, headers={"Authorization": f"Bearer {key}"}).status_code


def test_a_reload_re_reads_the_key_file_at_once(keyed):
    client, keys, index, bundle = keyed
    assert _search(client, keys.search) == 200
    made = auth.create_key(keys.path, "late", ["search"])
    auth.revoke_key(keys.path, "searcher")
    # nothing re-reads the file until a reload: the old keys still hold
    assert _search(client, keys.search) == 200 and _search(client, made) == 401
    reply = client.post("/v1/admin/reload", json={}, headers={"Authorization": f"Bearer {keys.admin}"})
    assert reply.status_code == 200, reply.text
    assert _search(client, keys.search) == 401 and _search(client, made) == 200
    # the reload --watch makes when the index changes goes the same way
    auth.revoke_key(keys.path, "late")
    assert _search(client, made) == 200
    gallery = GalleryIndex(index)
    row = gallery.features(0, 1, roles=("video", "frame_features", "patches", "video_mask"))
    with IndexWriter(index, load_bundle(bundle)) as writer:
        writer.add_batch(["copy"], row, [{**gallery.entry(gallery.ids[0]), "id": "copy"}])
    deadline = time.monotonic() + WAIT_S
    while client.get("/v1/info").json()["snapshot"]["videos"] != 4 and time.monotonic() < deadline:
        time.sleep(WATCH_S)
    assert client.get("/v1/info").json()["snapshot"]["videos"] == 4
    assert _search(client, made) == 401 and _search(client, keys.both) == 200


def test_create_key_makes_the_folder_leaves_no_temp_files_and_records_the_time(tmp_path):
    path = tmp_path / "new" / "folder" / "keys.json"
    before = time.time()
    key = auth.create_key(path, "first", ["search", "admin"])
    stored = json.loads(path.read_text())
    assert stored["format"] == auth.KEY_FILE_FORMAT and stored["keys"][0]["name"] == "first"
    assert stored["keys"][0]["sha256"] == auth.hash_key(key) and stored["keys"][0]["scopes"] == ["admin", "search"]
    assert before - 1 <= stored["keys"][0]["created"] <= time.time() + 1
    assert KeyRing.load(path).keys[0].created == stored["keys"][0]["created"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["keys.json", "keys.json.lock"]
    assert (path.stat().st_mode & 0o777) == auth.KEY_FILE_MODE and path.read_text().endswith("}\n")


@pytest.mark.parametrize("name, scopes, message", [
    ("a", [], "scopes must be among"),
    ("a", ["search", "root"], "got search, root"),
    ("", ["search"], "non-empty --name"),
    ("  ", ["search"], "non-empty --name"),
])
def test_create_key_refuses_bad_names_and_scopes(tmp_path, name, scopes, message):
    with pytest.raises(KeyFileError, match=message):
        auth.create_key(tmp_path / "keys.json", name, scopes)
    assert not (tmp_path / "keys.json").exists()


def test_a_key_that_is_not_an_object_is_refused(tmp_path):
    path = tmp_path / "keys.json"
    _write(path, {"format": auth.KEY_FILE_FORMAT, "keys": ["ucofia_abc"]})
    with pytest.raises(KeyFileError, match=r"keys\[0\]: expected an object"):
        KeyRing.load(path)


def test_revoking_a_name_that_is_not_there_says_which_names_are(tmp_path):
    keys = make_keys(tmp_path / "keys.json")
    before = keys.path.read_text()
    with pytest.raises(KeyFileError, match="no key named 'ghost' .*searcher"):
        auth.revoke_key(keys.path, "ghost")
    assert keys.path.read_text() == before


def test_a_changed_key_file_is_read_once_per_change(tmp_path):
    keys = make_keys(tmp_path / "keys.json")
    watched = KeyFile(keys.path)
    auth.revoke_key(keys.path, "operator")
    assert watched.refresh() == "ok" and watched.refresh() is None and watched.refresh() is None


def test_a_key_listed_without_its_creation_time_shows_a_question_mark(tmp_path):
    from runtime_helpers import run_cli

    path = tmp_path / "keys.json"
    _write(path, {"format": auth.KEY_FILE_FORMAT, "keys": [{"name": "old", "sha256": "0" * 64, "scopes": ["search"]}]})
    listed = run_cli("api-key", "list", "--file", str(path))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip().split("\t") == ["old", "search", "?"]


def test_the_link_secret_file_is_made_in_a_new_folder_without_leftovers(tmp_path):
    path = tmp_path / "new" / "deeper" / "keys.json.link-secret"
    auth.load_link_secret(path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    path.write_text("not hex\n")
    with pytest.raises(KeyFileError, match="unreadable"):
        auth.load_link_secret(path)


def test_an_expiry_of_twelve_digits_is_the_longest_accepted(signer):
    for expires, accepted in ((10**12 - 1, True), (10**12, False)):
        link = signer.sign(MEDIA, VIDEO, KID, expires=expires)
        assert _verify(signer, link, now=NOW) is accepted, expires


def test_a_key_file_write_that_fails_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    keys = make_keys(tmp_path / "keys.json")
    before = keys.path.read_text()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(auth.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        auth.create_key(keys.path, "late", ["search"])
    assert keys.path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.json", "keys.json.lock"]
