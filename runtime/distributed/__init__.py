"""Scale-out indexing on a Ray cluster (``ucofia-run index --ray``).

Ray (``pip install 'ucofia[ray]'``) is imported only here and only when asked for, so the core
runtime stays light. Layout:

* :mod:`runtime.distributed.stages`: what the workers do, free of Ray (decode one batch of
  videos to uint8 frames; encode a batch and write it as a shard).
* :mod:`runtime.distributed.pipeline`: the driver: a Ray Data pipeline (decode tasks -> an actor
  pool of encoders writing shards), commits, retries, the progress bar and the summary.
* :mod:`runtime.distributed.bank`: the caption bank x gallery scoring for the SK biases, spread
  over an actor pool.
"""
from __future__ import annotations

from typing import Any

from runtime.errors import RuntimeUserError

RAY_EXTRA = "pip install 'ucofia[ray]'"


def require_ray() -> Any:
    """The ``ray`` module (with Ray Data), or a RuntimeUserError saying how to install it."""
    try:
        import ray
        import ray.data  # Ray Data is what the pipeline runs on
    except ImportError as exc:
        raise RuntimeUserError(f"--ray needs Ray with Ray Data, which is not installed here ({exc}); install it "
                               f"with: {RAY_EXTRA}") from None
    return ray
