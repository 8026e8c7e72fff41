"""Text-to-video search over an index (``ucofia-run search`` and the service use the same path).

Modules, one job each:

* ``searcher``  -- :class:`Searcher` and :class:`SearchOptions`: queries against one opened index,
  exhaustive or two-stage, grouped by file or by window; the one entry point for every caller.
* ``two_stage`` -- the video_sentence kernel read out of the scorer graph, the cached FAISS stage 1
  and the fused re-rank of its shortlist.
* ``stage1``    -- stage-1 FAISS index kinds (flat, IVF, HNSW), their parameters and ``auto``.
* ``grouping``  -- results of an index of time windows grouped by file.
* ``records``   -- results as JSON-ready records, JSONL and CSV.
"""
from __future__ import annotations

from runtime.search.searcher import (
                                     DEFAULT_SHORTLIST,
                                     DEFAULT_TOP_K,
                                     DEFAULT_WINDOWS_PER_FILE,
                                     GROUP_BY,
                                     SearchAnswer,
                                     Searcher,
                                     SearchOptions,
                                     exhaustive,
)
from runtime.search.two_stage import (
                                     KERNEL_FILE,
                                     TwoStage,
                                     cached_kernel,
                                     check_level1_kernel,
                                     probe_level1_kernel,
                                     two_stage,
)

__all__ = ["DEFAULT_SHORTLIST", "DEFAULT_TOP_K", "DEFAULT_WINDOWS_PER_FILE", "GROUP_BY", "KERNEL_FILE",
           "SearchAnswer", "SearchOptions", "Searcher", "TwoStage", "cached_kernel", "check_level1_kernel",
           "exhaustive", "probe_level1_kernel", "two_stage"]
