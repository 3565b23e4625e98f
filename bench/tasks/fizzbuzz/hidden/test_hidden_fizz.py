from fizz import fizzbuzz


def test_fizzbuzz():
    assert [fizzbuzz(i) for i in range(1, 16)] == [
        "1", "2", "Fizz", "4", "Buzz", "Fizz", "7", "8", "Fizz", "Buzz", "11", "Fizz", "13",
        "14", "FizzBuzz"]
