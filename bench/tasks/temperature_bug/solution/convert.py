"""Temperature conversions used by the weather report."""


def c_to_f(c: float) -> float:
    """Celsius to Fahrenheit."""
    return c * 9 / 5 + 32


def f_to_c(f: float) -> float:
    """Fahrenheit to Celsius."""
    return (f - 32) * 5 / 9
