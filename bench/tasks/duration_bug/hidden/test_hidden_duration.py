from duration import format_duration, parse_duration


def test_every_part_counts():
    assert parse_duration("1h30m") == 5400
    assert parse_duration("1h1m1s") == 3661
    assert parse_duration("2h5s") == 7205
    assert parse_duration("2h") == 7200
    assert parse_duration("90m") == 5400


def test_round_trip():
    for seconds in (1, 59, 61, 3600, 3661, 86399):
        assert parse_duration(format_duration(seconds)) == seconds
