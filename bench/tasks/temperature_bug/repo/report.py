"""A one-line weather report from readings in Fahrenheit."""

from convert import f_to_c


def line(city: str, readings_f: list[float]) -> str:
    high = max(readings_f)
    low = min(readings_f)
    return f"{city}: high {f_to_c(high):.0f} C, low {f_to_c(low):.0f} C"
