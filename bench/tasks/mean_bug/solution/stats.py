def mean(xs: list[float]) -> float:
    if not xs:
        raise ValueError("mean of an empty list")
    return sum(xs) / len(xs)
