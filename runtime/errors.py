"""Runtime error types and the exit codes of ``ucofia-run``."""
from __future__ import annotations

# Exit codes besides 0 (success) and click's 2 (bad usage); documented in ``ucofia-run --help``.
EXIT_ERROR = 1  # bad input, bundle, index or backend; nothing was changed
EXIT_PARTIAL = 3  # the index was written but some videos failed (see failed.jsonl)


class RuntimeUserError(Exception):
    """An error the user can fix; the CLI prints the message (no traceback) and exits with 1."""


class BundleError(RuntimeUserError):
    """The bundle directory is missing a file or a manifest field, or is of another format."""


class GalleryIndexError(RuntimeUserError):
    """The index directory is missing, corrupt, or belongs to another bundle."""


class BackendError(RuntimeUserError):
    """The requested execution backend is unavailable on this machine or for this bundle."""


class QueryError(RuntimeUserError):
    """A query or annotation text is unusable (e.g. empty)."""


class OptionsError(RuntimeUserError):
    """Options that cannot go together; the CLI reports it as a usage error (exit code 2)."""


class ShardsUnavailable(RuntimeUserError):
    """Some shards of a sharded gallery did not answer in time: ``missing`` names them and
    ``partial`` is the answer of the others (for requests that accept a partial answer)."""

    def __init__(self, message: str, missing: list[int], partial: object = None) -> None:
        super().__init__(message)
        self.missing = missing
        self.partial = partial
