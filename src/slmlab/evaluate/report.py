"""Self-contained HTML reports: inline SVG charts and tables, no scripts, no network."""

from __future__ import annotations

from html import escape
from pathlib import Path

from slmlab.io import atomic_write_text

BASIN_COLOURS = {"CREATIVE": "#4c9a2a", "SEMANTIC_LOOP": "#e0a100", "TOKEN_COLLAPSE": "#c0392b", "UNKNOWN": "#95a5a6"}
SERIES_COLOURS = ["#2c7fb8", "#d95f0e", "#7570b3", "#1b9e77"]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:960px;color:#222}
h1{font-size:1.6rem} h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0} td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left} table.text td,table.text th{text-align:left}
.note{color:#555;font-size:.9rem} svg{background:#fff;border:1px solid #eee;margin:.5rem 0}
"""


def x_ticks(x0: float, x1: float, integers: bool) -> list[tuple[float, str]]:
    """Five (value, label) ticks from x0 to x1. On an integer axis (steps, rounds) only whole numbers,
    each drawn at its own value, so a label never names a point beside it."""
    ticks = [x0 + (x1 - x0) * i / 4 for i in range(5)]
    if integers:
        return [(float(v), str(v)) for v in sorted({round(t) for t in ticks})]
    return [(t, f"{t:.3g}") for t in ticks]


def line_chart(series: dict[str, list[tuple[float, float]]], title: str, width: int = 880, height: int = 260,
               markers: list[tuple[float, str, str]] | None = None, scatter: tuple[str, ...] = ()) -> str:
    """Lines over a shared x axis (e.g. loss by step), with axis ticks and a legend.

    ``markers`` are (x, label, colour) events drawn as dashed vertical lines, so a curve shows
    *when* something happened; ``scatter`` names series drawn as dots, for disjoint point sets
    (e.g. rolled-back steps) that a line would wrongly join.
    """
    pts = [p for s in series.values() for p in s]
    if not pts:
        return f"<p class='note'>{escape(title)}: no data</p>"
    markers = markers or []
    xs = [p[0] for p in pts] + [m[0] for m in markers]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    left, right, top, bottom = 56, 16, 28, 32
    sx = lambda x: left + (x - x0) / (x1 - x0) * (width - left - right)  # noqa: E731
    sy = lambda y: height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)  # noqa: E731
    parts = [f"<svg width='{width}' height='{height}' role='img' aria-label='{escape(title)}'>",
             f"<text x='{left}' y='18' font-size='14' font-weight='bold'>{escape(title)}</text>"]
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        parts.append(f"<line x1='{left}' x2='{width - right}' y1='{sy(yv):.1f}' y2='{sy(yv):.1f}' stroke='#eee'/>"
                     f"<text x='{left - 6}' y='{sy(yv) + 4:.1f}' font-size='11' text-anchor='end'>{yv:.3g}</text>")
    for xv, label in x_ticks(x0, x1, all(float(x).is_integer() for x in xs)):
        parts.append(f"<text x='{sx(xv):.1f}' y='{height - 12}' font-size='11' text-anchor='middle'>{label}</text>")
    # The legend's left edge leaves room for its longest name (about 7 px a character at 12 px).
    legend_x = width - right - max(160, 7 * (max(len(name) for name in series) + 2))
    for k, (name, s) in enumerate(series.items()):
        colour = SERIES_COLOURS[k % len(SERIES_COLOURS)]
        if name in scatter:
            parts.extend(f"<circle cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='2.5' fill='{colour}'/>" for x, y in s)
        else:
            coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s)
            parts.append(f"<polyline fill='none' stroke='{colour}' stroke-width='1.8' points='{coords}'/>")
        if len(s) == 1 and name not in scatter:
            parts.append(f"<circle cx='{sx(s[0][0]):.1f}' cy='{sy(s[0][1]):.1f}' r='3' fill='{colour}'/>")
        parts.append(f"<text x='{legend_x}' y='{top + 14 * k + 4}' font-size='12' fill='{colour}'>— {escape(name)}</text>")
    for x, label, colour in markers:
        mx = sx(x)
        parts.append(f"<line class='marker' x1='{mx:.1f}' x2='{mx:.1f}' y1='{top}' y2='{height - bottom}' stroke='{colour}' "
                     f"stroke-width='1' stroke-dasharray='3,3' opacity='.8'><title>{escape(label)} @ {x:g}</title></line>"
                     f"<text x='{mx + 3:.1f}' y='{top + 2}' font-size='8' fill='{colour}' transform='rotate(90 {mx + 3:.1f} {top + 2})'>"
                     f"{escape(label[:8])}</text>")
    parts.append("</svg>")
    return "".join(parts)


def stacked_bars(dists: dict[str, dict[str, float]], title: str, width: int = 880) -> str:
    """One horizontal 100% bar per row (e.g. basin distribution before / after)."""
    row_h, left, top = 26, 220, 30
    height = top + row_h * len(dists) + 30
    parts = [f"<svg width='{width}' height='{height}' role='img' aria-label='{escape(title)}'>",
             f"<text x='8' y='18' font-size='14' font-weight='bold'>{escape(title)}</text>"]
    span = width - left - 16
    for i, (name, dist) in enumerate(dists.items()):
        y = top + i * row_h
        parts.append(f"<text x='{left - 8}' y='{y + 16}' font-size='12' text-anchor='end'>{escape(name)}</text>")
        x = float(left)
        for basin, colour in BASIN_COLOURS.items():
            w = dist.get(basin, 0.0) * span
            if w > 0:
                parts.append(f"<rect x='{x:.1f}' y='{y}' width='{w:.1f}' height='{row_h - 6}' fill='{colour}'>"
                             f"<title>{basin}: {dist.get(basin, 0):.0%}</title></rect>")
                if w > 34:
                    parts.append(f"<text x='{x + w / 2:.1f}' y='{y + 15}' font-size='11' fill='#fff' text-anchor='middle'>{dist[basin]:.0%}</text>")
            x += w
    ly = top + row_h * len(dists) + 14
    for k, (basin, colour) in enumerate(BASIN_COLOURS.items()):
        parts.append(f"<rect x='{left + k * 160}' y='{ly - 10}' width='12' height='12' fill='{colour}'/>"
                     f"<text x='{left + k * 160 + 16}' y='{ly}' font-size='12'>{basin}</text>")
    parts.append("</svg>")
    return "".join(parts)


def table(header: list[str], rows: list[list[object]], *, text: bool = False) -> str:
    """An HTML table of escaped cells; numbers align right, ``text=True`` aligns every column left (prose cells)."""
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    attrs = ' class="text"' if text else ""
    return f"<table{attrs}><tr>{head}</tr>{body}</table>"


def page(title: str, sections: list[str]) -> str:
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{escape(title)}</h1>{''.join(sections)}</body></html>\n")


def write_report(path: str | Path, title: str, sections: list[str]) -> Path:
    path = Path(path)
    atomic_write_text(path, page(title, sections))
    return path
