import subprocess
import sys
from pathlib import Path

from greet import main

GREET = Path(__file__).resolve().parent.parent / "greet.py"


def test_shout(capsys):
    assert main(["Ada", "--shout"]) == 0
    assert capsys.readouterr().out == "HELLO, ADA!\n"


def test_shout_with_greeting(capsys):
    main(["--shout", "Bob", "--greeting", "Hi"])
    assert capsys.readouterr().out == "HI, BOB!\n"


def test_without_shout_unchanged(capsys):
    main(["Ada"])
    assert capsys.readouterr().out == "Hello, Ada!\n"


def test_from_the_command_line():
    done = subprocess.run([sys.executable, str(GREET), "Ada", "--shout"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout == "HELLO, ADA!\n"
