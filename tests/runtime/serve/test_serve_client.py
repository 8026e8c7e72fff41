"""The generated-client example of docs/serve.md ("A generated client"), run as written (issue 29).

For a real server in each auth mode: the schema is fetched where the document's command writes it,
the document's ``openapi-python-client generate`` command runs with the document's client.yaml,
and the document's Python example runs against the server with the generated package (and
``UCOFIA_API_KEY`` when keys are on). Its output must be the server's own ranking."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="ucofia-run serve needs the 'serve' extra")
httpx = pytest.importorskip("httpx", reason="the client test uses httpx")
pytest.importorskip("openapi_python_client", reason="the generated-client example needs openapi-python-client "
                                                    "(the 'test' extra)")

pytestmark = pytest.mark.slow  # a live server per auth mode

from data_paths import REPO_ROOT  # noqa: E402
from serve_helpers import ServerThread, build_index, make_keys, open_app  # noqa: E402

DOC = REPO_ROOT / "docs" / "serve.md"
SECTION = "### A generated client"
DOC_URL = "http://127.0.0.1:8080"
CLIPS = 3
TOP_K = 3  # as in the example
TIMEOUT_S = 120
HIT_LINE = re.compile(r"^(\d+) (\S+) (-?\d+\.\d{3})$")


def doc_blocks() -> dict[str, list[str]]:
    """The fenced blocks of the document's generated-client section, by language."""
    section = DOC.read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks: dict[str, list[str]] = {}
    for language, code in re.findall(r"^```(\w+)\n(.*?)^```", section, re.S | re.M):
        blocks.setdefault(language, []).append(code)
    return blocks


def generate_client(url: str, workdir: Path) -> None:
    """Do what the document's shell block says, in ``workdir``, against the server at ``url``."""
    blocks = doc_blocks()
    fetch, generate = blocks["bash"][0].strip().splitlines()
    fetch_words, generate_words = shlex.split(fetch), shlex.split(generate)
    assert fetch_words[:3] == ["curl", "-s", f"{DOC_URL}/openapi.json"] and fetch_words[3] == "-o", fetch
    (workdir / fetch_words[4]).write_bytes(httpx.get(f"{url}/openapi.json", timeout=TIMEOUT_S).content)
    (workdir / "client.yaml").write_text(blocks["yaml"][0])
    assert generate_words[:2] == ["openapi-python-client", "generate"], generate
    result = subprocess.run([sys.executable, "-m", "openapi_python_client", *generate_words[1:]], cwd=workdir,
                            capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stdout + result.stderr, result.stdout + result.stderr  # every route generated
    assert (workdir / "ucofia_client" / "api" / "search" / "search.py").is_file()


def run_example(url: str, workdir: Path, key: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "UCOFIA_URL": url, "PYTHONPATH": str(workdir)}
    env.pop("UCOFIA_API_KEY", None)
    if key is not None:
        env["UCOFIA_API_KEY"] = key
    return subprocess.run([sys.executable, "-c", doc_blocks()["python"][0]], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return build_index(tmp_path_factory.mktemp("serve_client"), CLIPS)[2]


@pytest.mark.parametrize("mode", ["no keys", "keys"])
def test_the_documented_generated_client_searches(index, tmp_path, mode):
    keys = make_keys(tmp_path / "keys.json") if mode == "keys" else None
    _, app = open_app(index, **({"api_keys": keys.path} if keys else {}))
    with ServerThread(app) as server:
        generate_client(server.url, tmp_path)
        result = run_example(server.url, tmp_path, keys.search if keys else None)
        assert result.returncode == 0, result.stdout + result.stderr
        lines = [HIT_LINE.match(line) for line in result.stdout.splitlines()]
        assert len(lines) == TOP_K and all(lines), result.stdout
        headers = {"Authorization": f"Bearer {keys.search}"} if keys else {}
        expected = httpx.post(f"{server.url}/v1/search", headers=headers, timeout=TIMEOUT_S,
                              json={"queries": ["a dog runs on the beach"], "top_k": TOP_K}).json()
        hits = expected["results"][0]["results"]
        assert [(int(m[1]), m[2]) for m in lines] == [(h["rank"], h["video_id"]) for h in hits]
        assert [float(m[3]) for m in lines] == pytest.approx([h["score"] for h in hits], abs=1e-3)
        if keys:  # the 401 comes back as the ErrorResponse model: the example exits with its message
            refused = run_example(server.url, tmp_path, None)
            assert refused.returncode == 1 and "needs an API key" in refused.stderr, refused.stderr
