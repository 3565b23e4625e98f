from fizz import fizzbuzz


def test_one_is_itself():
    assert fizzbuzz(1) == "1"
