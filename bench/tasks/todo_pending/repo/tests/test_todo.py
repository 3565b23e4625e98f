import pytest
from todo import TodoList


def test_add_and_complete():
    todos = TodoList()
    i = todos.add("buy milk")
    todos.complete(i)
    assert todos.items[i].done
    assert len(todos) == 1


def test_empty_title_is_refused():
    with pytest.raises(ValueError):
        TodoList().add("  ")
