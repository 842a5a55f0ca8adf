"""What a calibration prints and writes: the table of measured points, the suggestion, the JSON."""

from __future__ import annotations

import math

from .search import PASS, Search, Suggestion


def result_dict(search: Search, suggestion: Suggestion, *, endpoint: str, model: str, extra: dict | None = None) -> dict:
    slo = search.slo
    chosen = suggestion.chosen
    points = []
    for point, outcome, phase in zip(search.points, search.verdicts, search.phases, strict=True):
        points.append({**point.to_dict(), "verdict": outcome, "phase": phase,
                       "chosen": point is chosen, "knee": point is suggestion.knee})
    return {
        "targetTokensPerSecondPerReplica": suggestion.target_tokens_per_second,
        "targetQueueDepthPerReplica": suggestion.target_queue_depth,
        "slo": {"ttftSeconds": slo.ttft_s, "itlSeconds": slo.itl_s, "percentile": slo.percentile},
        "endpoint": endpoint,
        "model": model,
        "chosenRate": None if chosen is None else chosen.rate,
        "kneeRate": None if suggestion.knee is None else suggestion.knee.rate,
        "maxTokensPerSecond": round(suggestion.capacity_tokens_per_second, 2),
        "stopReason": search.stop_reason,
        **(extra or {}),
        "points": points,
    }


def table(search: Search, suggestion: Suggestion) -> str:
    """The measured points in the order they were measured, as plain text."""
    p = search.slo.percentile
    head = ("step", "phase", "rate/s", "tok/s", f"TTFT p{p:g}", "TTFT p50", f"ITL p{p:g}", "done/arr",
            "queue", "batch", "errors", "verdict")
    rows = [head]
    for i, (point, outcome, phase) in enumerate(zip(search.points, search.verdicts, search.phases, strict=True)):
        mark = " <- chosen" if point is suggestion.chosen else ""
        mark += " (knee)" if point is suggestion.knee else ""
        rows.append((
            str(i + 1), phase, f"{point.rate:.3g}", f"{point.tokens_per_second:,.0f}", _s(point.ttft_s),
            _s(point.ttft_p50_s), "-" if point.itl_s is None else f"{point.itl_s * 1000:.1f} ms",
            f"{point.backlog_ratio:.2f}", f"{point.waiting:g}",
            "-" if point.running is None else f"{point.running:.1f}", f"{point.errors}/{point.requests}",
            ("pass" if outcome == PASS else outcome) + (", cut short" if point.cut_short else "") + mark,
        ))
    widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
    lines = ["  ".join(cell.rjust(w) if 1 < c < len(head) - 1 else cell.ljust(w)
                       for c, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary(search: Search, suggestion: Suggestion) -> str:
    slo = search.slo
    target = f"TTFT p{slo.percentile:g} <= {slo.ttft_s:g} s" + (
        f", ITL p{slo.percentile:g} <= {slo.itl_s * 1000:g} ms" if slo.itl_s is not None else "")
    if suggestion.chosen is None:
        return f"No measured rate meets {target} ({search.stop_reason})."
    chosen = suggestion.chosen
    lines = [
        f"SLO: {target}. Highest rate that meets it: {chosen.rate:.3g} req/s "
        f"({chosen.tokens_per_second:,.0f} generated tok/s, TTFT p{slo.percentile:g} {_s(chosen.ttft_s)}, "
        f"queue p90 {chosen.waiting:g} from the {chosen.queue_source}'s view).",
        f"Most tok/s any step delivered: {suggestion.capacity_tokens_per_second:,.0f}."
        + (f" Knee of the curve: {suggestion.knee.rate:.3g} req/s." if suggestion.knee is not None else ""),
        "",
        "Suggested autoscaling settings (per replica):",
        f"  targetTokensPerSecondPerReplica: {_number(suggestion.target_tokens_per_second)}",
        f"  targetQueueDepthPerReplica: {_number(suggestion.target_queue_depth)}",
    ]
    return "\n".join(lines)


def _s(value: float) -> str:
    return f"{value:.3f} s" if math.isfinite(value) else "inf"


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
