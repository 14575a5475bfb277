"""The colours HTML views share with the charts: probabilities as a red → yellow → green background,
and the cycle that tells neighbouring token pieces apart."""

from __future__ import annotations

# Pastel colours that keep black text readable; pieces cycle through them.
PIECE_COLOURS = ("#fde68a", "#bfdbfe", "#bbf7d0", "#fbcfe8", "#ddd6fe", "#fed7aa", "#a5f3fc", "#e5e7eb")

# A probability p ∈ [0, 1] is drawn at hue 120°·p in HSL (0° red, 60° yellow, 120° green), at a fixed
# saturation and lightness light enough for black text: the one interpolation every probability
# colour in the app uses.
HUE_AT_ONE = 120  # degrees: green
SATURATION = 85  # percent
LIGHTNESS = 82  # percent


def probability_colour(p: float) -> str:
    """CSS colour of a probability: hsl(120·p, 85%, 82%), p clipped to [0, 1]."""
    p = min(1.0, max(0.0, float(p)))
    return f"hsl({HUE_AT_ONE * p:.0f}, {SATURATION}%, {LIGHTNESS}%)"


def probability_gradient(n_stops: int = 5) -> str:
    """A CSS linear-gradient of `probability_colour` from p = 0 to p = 1, for legends."""
    stops = ", ".join(probability_colour(i / (n_stops - 1)) for i in range(n_stops))
    return f"linear-gradient(to right, {stops})"
