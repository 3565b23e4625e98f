import pytest
from config import load_config
from errors import ConfigError
from serve import main


def test_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value)


def test_invalid_json(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text('{"port": 80,,}')
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("port", ["80", 0, 65536, -1, 8.5])
def test_bad_port(tmp_path, port):
    path = tmp_path / "settings.json"
    path.write_text('{"port": %s}' % ('"80"' if port == "80" else port))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value)


def test_good_files_still_load(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text('{"port": 65535, "host": "0.0.0.0"}')
    assert load_config(path) == {"host": "0.0.0.0", "port": 65535, "debug": False}
    path.write_text('{"port": 1}')
    assert load_config(path)["port"] == 1
    path.write_text("{}")
    assert load_config(path)["port"] == 8000


def test_serve_reports_the_error(tmp_path, capsys):
    assert main([str(tmp_path / "missing.json")]) == 2
    assert str(tmp_path / "missing.json") in capsys.readouterr().err
