"""Result tables: markdown for results.md / the README, and a rich table for the terminal."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ROWS: tuple[tuple[str, str], ...] = (
    ("video_sentence", "video-sentence only"),
    ("frame_sentence", "frame-sentence only"),
    ("patch_word", "patch-word only"),
    ("all", "all three levels"),
    ("all_sk", "all three + SK"),
)
TABLE_WIDTH = 130
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("t2v", "R1", "T2V R@1"), ("t2v", "R5", "T2V R@5"), ("t2v", "R10", "T2V R@10"),
    ("t2v", "MdR", "T2V MdR"), ("t2v", "MnR", "T2V MnR"), ("v2t", "R1", "V2T R@1"),
    ("v2t", "R5", "V2T R@5"), ("v2t", "MnR", "V2T MnR"),
)


def table_rows(metrics: Mapping[str, Mapping[str, Mapping[str, float]]]) -> list[list[str]]:
    """One row per level variant present: label + the COLUMNS values ('-' where absent)."""
    rows = []
    for key, label in ROWS:
        if key not in metrics.get("t2v", {}) and key not in metrics.get("v2t", {}):
            continue
        row = [label]
        for direction, metric, _ in COLUMNS:
            value = metrics.get(direction, {}).get(key, {}).get(metric)
            row.append("-" if value is None else f"{value:.1f}")
        rows.append(row)
    return rows


def markdown_tables(test: Mapping[str, Any]) -> str:
    """Markdown tables of the final test results (one per evaluated checkpoint)."""
    out = []
    for name in ("best", "last"):
        if name not in test:
            continue
        entry = test[name]
        out.append(f"### `{name}` checkpoint (step {entry.get('step')}), {test.get('split', 'test')} split\n")
        out.append("| levels | " + " | ".join(c[2] for c in COLUMNS) + " |")
        out.append("|---|" + "---:|" * len(COLUMNS))
        for row in table_rows(entry["metrics"]):
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    return "\n".join(out)


def print_rich_summary(test: Mapping[str, Any], header: str = "") -> None:
    """Print the final test tables with rich (falls back to markdown text)."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is a dependency
        print(markdown_tables(test))
        return
    console = Console(stderr=False)
    if not console.is_terminal:  # logs / pipes: keep table rows on one line
        console.width = max(console.width, TABLE_WIDTH)
    if header:
        console.print(header)
    for name in ("best", "last"):
        if name not in test:
            continue
        entry = test[name]
        table = Table(title=f"{test.get('split', 'test')} split, `{name}` checkpoint (step {entry.get('step')})")
        table.add_column("levels")
        for _, _, title in COLUMNS:
            table.add_column(title, justify="right")
        for row in table_rows(entry["metrics"]):
            table.add_row(*row)
        console.print(table)
