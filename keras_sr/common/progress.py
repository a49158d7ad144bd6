"""How long jobs print durations and ETAs (dependency-free; both sides of the boundary use it)."""
import math


def format_duration(seconds):
    """A duration for a progress line: "42s", "3m05s" or "1h02m"; "?" when unknown (inf, NaN).

    Args:
        seconds: non-negative float.
    """
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
