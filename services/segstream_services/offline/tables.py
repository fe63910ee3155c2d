"""The tables of `segstream eval`: a rich table per k for the terminal, Markdown for files."""

from __future__ import annotations

from typing import Any

from segstream_services.offline.evaluate import EvalResult, metric_names

HEADERS = {"hr": "HR@10", "ndcg": "NDCG@10", "coverage": "coverage"}


def _header(metric: str) -> str:
    if metric.startswith("stability_"):
        return f"stability {metric.removeprefix('stability_')} (ARI)"
    return HEADERS[metric]


def _pm(mean: float, std: float, seeds: int) -> str:
    if mean != mean:  # NaN: not applicable
        return "–"
    return f"{mean:.4f}" if seeds == 1 else f"{mean:.4f} ± {std:.4f}"


def _rows(result: EvalResult, k: int) -> list[list[str]]:
    seeds = len(result.config.seeds)
    rows = []
    for name in result.config.methods:
        summary = result.summary(k, name)
        rows.append([name, *(_pm(*summary[m], seeds) for m in metric_names(result.config))])
    return rows


def _title(result: EvalResult, k: int) -> str:
    return (f"k={k}: {len(result.splits_used)} split(s), {result.users_evaluated} user-split "
            f"pairs, {len(result.config.seeds)} seed(s)"
            + (", mean ± std over seeds" if len(result.config.seeds) > 1 else ""))


def eval_table(result: EvalResult) -> Any:
    """One rich table with a block of rows per k."""
    from rich.table import Table

    table = Table(title="segstream eval")
    for col in ("k", "method", *(_header(m) for m in metric_names(result.config))):
        table.add_column(col, justify="left" if col in ("k", "method") else "right")
    last = len(result.config.methods) - 1
    for k in result.config.ks:
        for i, row in enumerate(_rows(result, k)):
            table.add_row(str(k) if i == 0 else "", *row, end_section=i == last)
    return table


def _ratio(r: tuple[float, float, float]) -> str:
    ratio, low, high = r
    return "–" if ratio != ratio else f"{ratio:.2f}× [{low:.2f}, {high:.2f}]"


def ratio_rows(result: EvalResult, k: int) -> tuple[list[str], list[list[str]]]:
    """(columns, rows): each method's HR@10 and NDCG@10 over each reference's on the same
    user-split pairs, with the 95% paired bootstrap interval."""
    by_method = result.ratios.get(k, {})
    refs = sorted({ref for per_ref in by_method.values() for ref in per_ref})
    cols = ["method", *(f"{HEADERS[m]} / {ref}" for ref in refs for m in ("hr", "ndcg"))]
    rows = [[name, *(_ratio(per_ref[ref][m]) if ref in per_ref else "–"
                     for ref in refs for m in ("hr", "ndcg"))]
            for name, per_ref in by_method.items()]
    return cols, rows


def eval_markdown(result: EvalResult) -> str:
    """The same figures as Markdown tables (one per k) with the chosen parameters, and
    the ratios to the reference baselines."""
    out = [f"Chosen interest parameters: {result.chosen}", ""]
    for k in result.config.ks:
        cols = ["method", *(_header(m) for m in metric_names(result.config))]
        out += [f"**{_title(result, k)}**", "", "| " + " | ".join(cols) + " |",
                "| " + " | ".join("---" for _ in cols) + " |"]
        out += ["| " + " | ".join(row) + " |" for row in _rows(result, k)]
        out.append("")
        cols, rows = ratio_rows(result, k)
        if rows:
            out += [f"k={k}: ratio to each baseline on the same user-split pairs "
                    "[95% paired bootstrap interval]", "",
                    "| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
            out += ["| " + " | ".join(row) + " |" for row in rows]
            out.append("")
    return "\n".join(out)
