"""``ucofia-run serve``: a long-running, torch-free HTTP search service over one index.

Modules, one job each:

* ``settings``  -- the service's settings and request limits (named constants).
* ``auth``      -- API key files (hashes only), constant-time key checks, signed media URLs.
* ``snapshot``  -- an opened index (biases, FAISS cache) as one immutable snapshot; reload builds
  a new one off the event loop and swaps one reference.
* ``engine``    -- the model side: text encoder + scorer over a batch of requests (runs in a thread).
* ``batching``  -- the dynamic batcher: a bounded queue, coalescing concurrent requests.
* ``metrics``   -- Prometheus metrics (``prometheus-client``).
* ``service``   -- ties them together: readiness, search, reload, ``--watch``.
* ``app``       -- the FastAPI app: routes, auth, limits, security headers, the static page.
* ``server``    -- binding the socket and running uvicorn.
* ``commands``  -- the ``serve``, ``thumbnails`` and ``api-key`` commands of ``ucofia-run``.

FastAPI, uvicorn and prometheus-client come with the ``serve`` extra and are imported only where
they are used, so ``import runtime`` and ``ucofia-run --help`` work without them.
"""
from __future__ import annotations

from runtime.errors import RuntimeUserError

SERVE_EXTRA_HINT = "pip install 'ucofia[serve]'"
SERVE_MODULES = ("fastapi", "uvicorn", "prometheus_client")


def require_serve_dependencies() -> None:
    """Raise RuntimeUserError naming the install command when the ``serve`` extra is missing."""
    import importlib

    missing = []
    for name in SERVE_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise RuntimeUserError(f"`ucofia-run serve` needs {', '.join(missing)}: {SERVE_EXTRA_HINT}")
