"""``ucofia-run serve``: a long-running, torch-free HTTP search service over one index.

Modules, one job each:

* ``settings``  -- the service's settings and request limits (named constants).
* ``auth``      -- API key files (hashes only, private, locked, re-read when they change),
  constant-time key checks, signed media URLs and their shared secret.
* ``snapshot``  -- an opened index (biases, FAISS cache) as one immutable snapshot; reload builds
  a new one off the event loop and swaps one reference.
* ``engine``    -- the model side: text encoder + scorer over a batch of requests (runs in a thread).
* ``batching``  -- the dynamic batcher: a bounded queue, coalescing concurrent requests.
* ``metrics``   -- Prometheus metrics (``prometheus-client``), every label from a fixed set.
* ``service``   -- ties them together: readiness, search, reload, ``--watch``, the key file's watch.
* ``contract``  -- the request and response models, patterns, media types and statuses (the schema).
* ``responses`` -- search answers built and encoded off the event loop.
* ``guard``     -- the outermost ASGI layer: request ids, Host and Origin checks, body limits,
  HEAD, security headers, request metrics, the access log.
* ``app``       -- the FastAPI app: routes, auth, the static page.
* ``transport`` -- under the app: deadlines for a request's head and body, the connection bound.
* ``server``    -- binding the socket and running uvicorn.

The commands (``serve``, ``thumbnails``, ``api-key``) are in ``runtime/commands/``.

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
