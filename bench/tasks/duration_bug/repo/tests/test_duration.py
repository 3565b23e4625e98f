from duration import format_duration, parse_duration


def test_single_part():
    assert parse_duration("45s") == 45


def test_format():
    assert format_duration(5400) == "1h30m"
