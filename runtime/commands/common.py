"""Options, help texts, error handling and output shared by the ``ucofia-run`` commands."""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from runtime.backends.precision import DEFAULT_SCORER_PRECISION, PRECISION_HELP, SCORER_PRECISIONS
from runtime.errors import EXIT_ERROR, OptionsError, RuntimeUserError
from runtime.scoring import DEFAULT_MEMORY_MB
from ucofia.io_utils import atomic_write_text

EXIT_CODES_HELP = ("Exit codes: 0 success; 1 error (bad input, bundle, index or backend; the message "
                   "names it); 2 bad command-line usage; 3 index written but some videos failed "
                   "(listed in INDEX/failed.jsonl); 130 interrupted (re-run the same command to resume).")
BACKEND_HELP = ("Execution backend: auto (TensorRT engines when usable, else onnxruntime CUDA when it "
                "really runs here, else CPU, with a note saying why), cpu, cuda (onnxruntime-gpu) or "
                "tensorrt (engines in the bundle).")
MEMORY_HELP = ("Working-memory budget of the scorer in MiB: tiles of texts x videos are sized so that the "
               "tiles running at once and the stored features they read fit in it, whatever the gallery "
               "size (query features and results come on top).")
STORE_HELP = ("Feature dtype on disk, recorded in the index: float32 (default for a new index), float16 (half "
              "the bytes; fused R@1 identical in parity) or int8 (frames and patches as int8 with a scale per "
              "vector: a quarter; lossy). An existing index keeps its own; convert with `merge --store`.")
STORES = ("float32", "float16", "int8")
BACKENDS = ("auto", "cpu", "cuda", "tensorrt")

index_option = click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path),
                            help="Index directory written by `ucofia-run index`.")
bundle_option = click.option("--bundle", "bundle_dir", default=None, type=click.Path(path_type=Path),
                             help="Bundle directory (default: the one recorded in the index; its "
                                  "fingerprint must match the index).")
backend_option = click.option("--backend", default="auto", show_default=True, type=click.Choice(BACKENDS),
                              help=BACKEND_HELP)
memory_option = click.option("--memory-mb", default=DEFAULT_MEMORY_MB, show_default=True,
                             type=click.FloatRange(min=1), help=MEMORY_HELP)
threads_option = click.option("--threads", default=None, type=click.IntRange(min=1),
                              help="onnxruntime intra-op threads.")
scorer_precision_option = click.option("--scorer-precision", default=DEFAULT_SCORER_PRECISION, show_default=True,
                                       type=click.Choice(SCORER_PRECISIONS), help=PRECISION_HELP)
store_option = click.option("--store", default=None, type=click.Choice(STORES), help=STORE_HELP)


def fail(message: str, code: int = EXIT_ERROR) -> None:
    """Print ``error: message`` on stderr and exit with ``code``."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the user-facing errors of the library into one line on stderr and exit code 1 (options
    that cannot go together: a usage error, exit code 2); Ctrl+C exits with 130."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from evaluation.metrics import MetricsError
        from ucofia.config import ConfigError

        try:
            return func(*args, **kwargs)
        except OptionsError as exc:
            raise click.UsageError(str(exc)) from None
        except (RuntimeUserError, ConfigError, MetricsError) as exc:
            fail(str(exc))
        except FileNotFoundError as exc:
            fail(f"{exc.strerror}: {exc.filename}")
        except KeyboardInterrupt:
            click.echo("interrupted; finished batches are kept, re-run the same command to resume", err=True)
            sys.exit(130)

    return wrapper


def write_output(out: Path, text: str) -> None:
    """``text`` to the file ``out`` (written atomically), or to stdout for ``-``."""
    if str(out) == "-":
        sys.stdout.write(text)
        return
    atomic_write_text(out, text)
