"""``thriftgate report``: the spend and savings table from the rollups, as an aligned text table, CSV or
JSON. Pure rendering here; the query is ``gateway.reports.queries.report_table``."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

FIELDS = (
    "name",
    "requests",
    "cost_usd",
    "counterfactual_usd",
    "saved_usd",
    "input_tokens",
    "output_tokens",
    "unpriced_requests",
)
HEADERS = (
    "",
    "REQUESTS",
    "SPEND_USD",
    "WITHOUT_USD",
    "SAVED_USD",
    "SAVED_%",
    "IN_TOKENS",
    "OUT_TOKENS",
    "UNPRICED",
)


def totals(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The sum of every numeric column, named ``total``."""
    out: dict[str, Any] = {"name": "total"}
    for f in FIELDS[1:]:
        out[f] = sum(r[f] for r in rows)
    return out


def _pct(row: dict[str, Any]) -> str:
    return (
        "-" if not row["counterfactual_usd"] else f"{100 * row['saved_usd'] / row['counterfactual_usd']:.1f}"
    )


def render(rows: Sequence[dict[str, Any]], *, by: str, since: str, fmt: str) -> str:
    """``rows`` (from ``report_table``) as ``table``, ``csv`` or ``json`` (each with a total)."""
    total = totals(rows)
    if fmt == "json":
        return json.dumps(
            {"since": since, "by": by, "rows": list(rows), "total": total}, indent=2, default=str
        )
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=FIELDS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows([*rows, total])
        return out.getvalue().rstrip("\n")
    cells = [(by.upper(), *HEADERS[1:])]
    for r in [*rows, total]:
        cells.append(
            (
                str(r["name"]),
                f"{r['requests']:,}",
                f"{r['cost_usd']:.4f}",
                f"{r['counterfactual_usd']:.4f}",
                f"{r['saved_usd']:.4f}",
                _pct(r),
                f"{r['input_tokens']:,}",
                f"{r['output_tokens']:,}",
                f"{r['unpriced_requests']:,}",
            )
        )
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return f"since {since} (whole UTC hours)\n" + "\n".join(line.rstrip() for line in lines)
