import subprocess
import sys
from pathlib import Path

from linecount import main

TOOL = Path(__file__).resolve().parent.parent / "linecount.py"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_words_of_one_file(tmp_path, capsys):
    a = write(tmp_path, "a.txt", "the cat\n  sat on\tthe mat\n")
    assert main(["--words", str(a)]) == 0
    assert capsys.readouterr().out == f"6 {a}\n"


def test_words_with_total(tmp_path, capsys):
    a = write(tmp_path, "a.txt", "one two three\n")
    b = write(tmp_path, "b.txt", "four\nfive\n\n")
    assert main([str(a), str(b), "--words"]) == 0
    assert capsys.readouterr().out == f"3 {a}\n2 {b}\n5 total\n"


def test_lines_are_still_the_default(tmp_path, capsys):
    a = write(tmp_path, "a.txt", "one two\nthree\n")
    main([str(a)])
    assert capsys.readouterr().out == f"2 {a}\n"


def test_from_the_command_line(tmp_path):
    a = write(tmp_path, "a.txt", "a b c d\n")
    done = subprocess.run([sys.executable, str(TOOL), "--words", str(a)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == f"4 {a}\n"
