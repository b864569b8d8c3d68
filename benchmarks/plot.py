"""An SVG chart of the ratios ``run.py`` measures: no plotting library needed.

One group of bars per protected variant: its throughput, p99 latency and CPU
per request, each as a ratio to the plain view of the same run, with a line
at 1.0 (the plain view) and a tick at each target the project set itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

#: The measures charted, and their colours.
MEASURES = (
    ("throughput", "#2b6cb0"),
    ("p99 latency", "#dd6b20"),
    ("CPU per request", "#718096"),
)


@dataclass(frozen=True)
class Row:
    """One protected variant: its label, its three ratios, and its targets
    (``None`` where the project set none), in the order of :data:`MEASURES`."""

    label: str
    ratios: tuple[float, float, float]
    targets: tuple[float | None, float | None, float | None]


def ratio_chart(title: str, rows: list[Row], *, scale_max: float = 2.0) -> str:
    """The chart, as an SVG document."""
    label_width, chart_width, bar, gap, group_gap = 250, 420, 11, 2, 16
    left, top = label_width + 10, 58
    group_height = len(MEASURES) * (bar + gap) + group_gap
    height = top + len(rows) * group_height + 40
    width = left + chart_width + 60

    def x(ratio: float) -> float:
        return left + min(ratio, scale_max) / scale_max * chart_width

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="20" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    legend_x = 10
    for name, colour in MEASURES:
        parts.append(
            f'<rect x="{legend_x}" y="32" width="12" height="12" fill="{colour}"/>'
            f'<text x="{legend_x + 16}" y="42">{escape(name)} vs plain</text>'
        )
        legend_x += 175
    parts.append(
        f'<line x1="{legend_x + 6}" y1="31" x2="{legend_x + 6}" y2="45" stroke="#c53030" '
        f'stroke-width="2"/><text x="{legend_x + 16}" y="42">target</text>'
    )
    for step in range(int(scale_max / 0.5) + 1):
        ratio = step * 0.5
        parts.append(
            f'<line x1="{x(ratio):.1f}" y1="{top - 6}" x2="{x(ratio):.1f}" '
            f'y2="{height - 34}" stroke="{"#000" if ratio == 1 else "#ddd"}"/>'
            f'<text x="{x(ratio):.1f}" y="{height - 20}" text-anchor="middle">{ratio:g}x</text>'
        )
    for index, row in enumerate(rows):
        y0 = top + index * group_height
        label_y = y0 + len(MEASURES) * (bar + gap) / 2 + 4
        label = escape(row.label)
        parts.append(f'<text x="{label_width}" y="{label_y:.1f}" text-anchor="end">{label}</text>')
        for number, ((_, colour), ratio, target) in enumerate(
            zip(MEASURES, row.ratios, row.targets, strict=True)
        ):
            y = y0 + number * (bar + gap)
            # The figure right of the bar, and of its target's tick.
            text_x = max(x(ratio), x(target) if target is not None else 0.0) + 4
            parts.append(
                f'<rect x="{left}" y="{y}" width="{x(ratio) - left:.1f}" height="{bar}" '
                f'fill="{colour}"/><text x="{text_x:.1f}" y="{y + bar - 1}" '
                f'font-size="10">{ratio:.2f}</text>'
            )
            if target is not None:
                parts.append(
                    f'<line x1="{x(target):.1f}" y1="{y - 1}" x2="{x(target):.1f}" '
                    f'y2="{y + bar + 1}" stroke="#c53030" stroke-width="2"/>'
                )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
