"""Rich tables for the export's verification results and TensorRT check (from manifest dicts)."""
from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2e}"


def verification_table(verification: dict[str, Any]) -> Table:
    """One row per (graph, case, output): max abs / max rel error, allowed bound, pass."""
    tol = verification.get("tolerances", {})
    table = Table(title=f"ONNX vs PyTorch ({verification.get('dtype')}, onnxruntime CPU)", box=box.SIMPLE_HEAD,
                  padding=(0, 1), pad_edge=False, show_edge=False,
                  caption=f"pass: max abs <= bound = tol * max(1, max|ref|); tol {tol.get('features')} "
                          f"(features), {tol.get('similarities')} (similarities)")
    for col in ("graph", "case", "output"):
        table.add_column(col, overflow="fold")
    for col in ("max abs", "max rel", "bound"):
        table.add_column(col, justify="right", no_wrap=True, min_width=8)
    table.add_column("ok", no_wrap=True, min_width=3)
    for c in verification.get("checks", []):
        if not c.get("gated", True):
            ok = "[dim]info[/]"
        else:
            ok = "[green]yes[/]" if c["passed"] else "[red]NO[/]"
        table.add_row(c["graph"], c["case"], c["output"], _fmt(c["max_abs"]), _fmt(c["max_rel"]), _fmt(c["bound"]), ok)
    return table


def selection_lines(verification: dict[str, Any]) -> list[str]:
    """One line per video case about the hard top-k patch selection."""
    lines = []
    for s in verification.get("patch_selection", []):
        mark = "[green]ok[/]" if s["passed"] else "[red]FAILED[/]"
        lines.append(f"patch selection {s['case']}: {s['mismatches']}/{s['frames']} frames differ "
                     f"({s['tie_flips']} tie flips; smallest top-k score gap {_fmt(s['min_margin'])}) {mark}")
    notes = [f"{c['graph']}/{c['case']}/{c['output']}: {c['note']}" for c in verification.get("checks", [])
             if c.get("note") and c["note"] != "reported only"]
    if any(not c.get("gated", True) for c in verification.get("checks", [])):
        notes.append("end_to_end rows (ORT encoders -> ORT scorer) are reported only: the ISA temperature "
                     "amplifies encoder rounding")
    return lines + notes


def trt_check_table(trt_check: dict[str, Any], limit: int = 20) -> Table | None:
    """Issues of the static TensorRT check (None when there are none)."""
    issues = trt_check.get("issues", [])
    if not issues:
        return None
    table = Table(title=f"TensorRT compatibility ({trt_check.get('table')})")
    for col in ("severity", "graph", "op", "node", "message"):
        table.add_column(col, overflow="fold")
    for issue in issues[:limit]:
        style = "red" if issue["severity"] == "error" else "yellow"
        table.add_row(f"[{style}]{issue['severity']}[/]", issue["graph"], issue["op"], issue["node"], issue["message"])
    if len(issues) > limit:
        table.caption = f"... and {len(issues) - limit} more (see manifest.json trt_check)"
    return table


def print_verification(console: Console, verification: dict[str, Any]) -> None:
    console.print(verification_table(verification))
    for line in selection_lines(verification):
        console.print(line)


def print_summary(console: Console, manifest: dict[str, Any]) -> None:
    """Verification table, TensorRT check issues, engines and warnings of a written bundle."""
    if manifest.get("verification"):
        print_verification(console, manifest["verification"])
    table = trt_check_table(manifest.get("trt_check") or {})
    if table is not None:
        console.print(table)
    else:
        console.print("[green]static TensorRT check: no issues[/]")
    trt = manifest.get("tensorrt")
    if trt:
        console.print(f"TensorRT {trt['version']} engines for {trt['gpu']} (sm {trt['compute_capability']}), "
                      f"{trt['precision']}: " + ", ".join(e["file"] for e in trt["engines"].values()))
        checked = trt.get("verification") or {}
        if checked.get("passed"):
            frames = checked.get("patch_selection", [])
            agreement = (min(s["identical_fraction"] for s in frames) if frames else None)
            console.print("[green]engines agree with onnxruntime[/] on the verification inputs"
                          + ("" if agreement is None else f"; patch selection identical on {agreement:.1%} of frames"))
    for warning in manifest.get("warnings", []):
        console.print(f"[yellow]warning:[/] {warning}")
