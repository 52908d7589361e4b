"""Small per-run images drawn with Pillow alone: cheap enough to log with every run.

The report draws its figures with seaborn; a run's own artifacts must not pay for importing the
plotting stack (seconds) in a run that trains in seconds, so they are drawn pixel by pixel here.

Owns: the per-run confusion-matrix PNG (`confusion_png`), drawn with Pillow and numpy. Must not:
import matplotlib, seaborn or any module of the suite, nor log anything: `suite.tracking` logs
the PNG as a run artifact.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CELL = 34  # pixels per matrix entry
MARGIN = 46  # room for the axis labels


def confusion_png(matrix: np.ndarray, title: str = "") -> bytes:
    """A confusion matrix (rows: true class, columns: predicted) as a PNG heatmap.

    Each row is shaded by its share of that class's images (white 0, dark blue 1) and every
    entry shows its count, so both the rates and the raw numbers read off the picture.
    """
    counts = np.asarray(matrix, dtype=np.int64)
    n = counts.shape[0]
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = MARGIN + n * CELL + 8
    image = Image.new("RGB", (size, size + 18), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    top = MARGIN + 18
    for i in range(n):
        for j in range(n):
            shade = float(rates[i, j])
            colour = tuple(int(255 - shade * (255 - c)) for c in (8, 48, 107))
            x, y = MARGIN + j * CELL, top + i * CELL
            draw.rectangle([x, y, x + CELL - 1, y + CELL - 1], fill=colour, outline=(220, 220, 220))
            text = str(counts[i, j])
            ink = "white" if shade > 0.5 else "black"
            w = draw.textlength(text, font=font)
            draw.text((x + (CELL - w) / 2, y + CELL / 2 - 5), text, fill=ink, font=font)
        draw.text((MARGIN - 14, top + i * CELL + CELL / 2 - 5), str(i), fill="black", font=font)
        draw.text((MARGIN + i * CELL + CELL / 2 - 3, top - 14), str(i), fill="black", font=font)
    draw.text((MARGIN, top - 30), "predicted class ->", fill="black", font=font)
    draw.text((2, top - 14), "true", fill="black", font=font)
    if title:
        draw.text((4, 2), title, fill="black", font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
