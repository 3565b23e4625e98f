from greet import main


def test_default_greeting(capsys):
    assert main(["Ada"]) == 0
    assert capsys.readouterr().out == "Hello, Ada!\n"


def test_other_greeting(capsys):
    main(["Ada", "--greeting", "Hi"])
    assert capsys.readouterr().out == "Hi, Ada!\n"
