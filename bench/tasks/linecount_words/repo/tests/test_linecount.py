from linecount import main


def test_lines_of_two_files(tmp_path, capsys):
    a = tmp_path / "a.txt"
    b = tmp_path / "b.txt"
    a.write_text("one\ntwo\n")
    b.write_text("three\n")
    assert main([str(a), str(b)]) == 0
    assert capsys.readouterr().out == f"2 {a}\n1 {b}\n3 total\n"
