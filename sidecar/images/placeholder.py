"""The ``mock`` images backend: a deterministic SVG that shows the prompt.

The same prompt, size and index give the same bytes. The prompt is XML-escaped, and the
SVG carries no script, so a prompt like ``<script>`` is shown as text, never run.
"""

from __future__ import annotations

import hashlib
import textwrap
from xml.sax.saxutils import escape


def render(prompt: str, width: int, height: int, index: int = 0, count: int = 1) -> bytes:
    digest = hashlib.sha256(f"{width}x{height}:{index}:{prompt}".encode()).hexdigest()
    background, accent = f"#{digest[:6]}", f"#{digest[6:12]}"
    font = max(10, min(width, height) // 24)
    per_line = max(8, int(width / (font * 0.6)) - 2)
    lines = textwrap.wrap(prompt, per_line)[: max(1, (height // (font + 6)) - 3)] or [""]
    label = f"{width}x{height}" + (f" · {index + 1}/{count}" if count > 1 else "")
    text = "".join(f'<tspan x="{font}" dy="{font + 6}">{escape(line)}</tspan>' for line in lines)
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img">'
        f"<title>{escape(prompt[:200])}</title>"
        f'<rect width="100%" height="100%" fill="{background}"/>'
        f'<rect x="{font // 2}" y="{font // 2}" width="{width - font}" height="{height - font}" '
        f'fill="none" stroke="{accent}" stroke-width="{max(2, font // 6)}"/>'
        f'<text font-family="sans-serif" font-size="{font}" fill="#ffffff" '
        f'stroke="#000000" stroke-width="0.5" y="{font}">{text}</text>'
        f'<text x="{font}" y="{height - font}" font-family="monospace" '
        f'font-size="{max(8, font // 2)}" fill="#ffffff">{escape(label)}</text>'
        "</svg>"
    )
    return svg.encode()
