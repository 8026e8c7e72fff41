"""The commands of ``ucofia-run``, one module per command group; ``runtime.cli`` imports each
only when it runs. Argument parsing and messages live here; the work is in library modules."""
