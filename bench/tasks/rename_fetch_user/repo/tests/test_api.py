from api import get_user


def test_known_user():
    assert get_user(1) == (200, {"id": 1, "name": "Ada Lovelace"})


def test_unknown_user():
    status, body = get_user(99)
    assert status == 404
