from config import load_config


def test_defaults_fill_in(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text('{"debug": true}')
    assert load_config(path) == {"host": "127.0.0.1", "port": 8000, "debug": True}
