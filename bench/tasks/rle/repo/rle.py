"""Run-length encoding for the sensor log archiver: long runs of one reading compress well."""


def encode(text: str) -> str:
    raise NotImplementedError


def decode(text: str) -> str:
    raise NotImplementedError
