import api
import db
import report


def test_new_name_works():
    assert db.fetch_user(3)["name"] == "Grace Hopper"
    assert db.fetch_user(42) is None


def test_old_name_is_gone_everywhere():
    for module in (db, api, report):
        assert not hasattr(module, "fetch_usr"), module.__name__


def test_callers_still_work():
    assert api.get_user(2) == (200, {"id": 2, "name": "Alan Turing"})
    assert api.get_user(7)[0] == 404
    assert report.summary() == "2 active: Ada Lovelace, Grace Hopper"
