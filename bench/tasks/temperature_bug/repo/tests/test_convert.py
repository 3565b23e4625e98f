from convert import c_to_f


def test_boiling_point_in_fahrenheit():
    assert c_to_f(100) == 212
