import pytest
from convert import c_to_f, f_to_c
from report import line


def test_f_to_c():
    assert f_to_c(212) == pytest.approx(100.0)
    assert f_to_c(32) == pytest.approx(0.0)
    assert f_to_c(-40) == pytest.approx(-40.0)


def test_round_trip():
    for c in (-10.0, 0.0, 21.5, 37.0):
        assert f_to_c(c_to_f(c)) == pytest.approx(c)


def test_report_uses_celsius():
    assert line("Oslo", [50.0, 32.0]) == "Oslo: high 10 C, low 0 C"
