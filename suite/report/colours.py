"""One qualitative palette for every figure of a report: a colour per cell, or per setting value.

Twelve colours of distinct hues, chosen so no two are shades of one another: the pairwise
CIEDE2000 distance is at least 16 (red and brown, pink and purple are the closest pairs;
most pairs are above 25). The first seven (a typical study's cells) stay at least 12 apart
under simulated deuteranopia and protanopia too; those are Okabe and Ito's colour-blind-safe
set without its yellow and vermilion, whose orange neighbours read as shades of its orange.
Then come tab10's red, grey, purple and brown, and a yellow-green and a dark olive that fill
the largest gaps left. Beyond twelve, hues evenly spaced around the colour wheel (husl):
distinct hues still, but neighbours get close (the report says so).

Owns: the palette (`PALETTE`) and the colours of n things (`colours`). Must not know cells,
runs or figures: `figures.palette` gives each cell its colour, and `extra` colours setting
values with the same function.
"""

from __future__ import annotations

import seaborn as sns
from matplotlib.typing import ColorType

PALETTE = (
    "#0072b2",  # blue (Okabe & Ito)
    "#e69f00",  # orange (Okabe & Ito)
    "#009e73",  # bluish green (Okabe & Ito)
    "#cc79a7",  # reddish purple (Okabe & Ito)
    "#000000",  # black (Okabe & Ito)
    "#56b4e9",  # sky blue (Okabe & Ito)
    "#d62728",  # red (tab10)
    "#7f7f7f",  # grey (tab10)
    "#9467bd",  # purple (tab10)
    "#8c564b",  # brown (tab10)
    "#aacc33",  # yellow-green
    "#335500",  # dark olive
)


def colours(n: int) -> list[ColorType]:
    """`n` colours: the first `n` of `PALETTE`, or `n` evenly spaced hues beyond 12."""
    if n <= len(PALETTE):
        return list(PALETTE[:n])
    return list(sns.color_palette("husl", n))
