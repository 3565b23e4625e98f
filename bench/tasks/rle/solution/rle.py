"""Run-length encoding for the sensor log archiver: long runs of one reading compress well."""

import itertools
import re


def encode(text: str) -> str:
    return "".join(f"{len(list(run))}{char}" for char, run in itertools.groupby(text))


def decode(text: str) -> str:
    return "".join(char * int(count) for count, char in re.findall(r"(\d+)(\D)", text))
