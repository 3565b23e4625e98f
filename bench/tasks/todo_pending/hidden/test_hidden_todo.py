from todo import TodoList


def filled() -> TodoList:
    todos = TodoList()
    for title in ("buy milk", "call mum", "fix bike", "pay rent"):
        todos.add(title)
    todos.complete(1)
    todos.complete(3)
    return todos


def test_pending_keeps_order():
    assert filled().pending() == ["buy milk", "fix bike"]
    assert TodoList().pending() == []


def test_clear_done_removes_done_items():
    todos = filled()
    assert todos.clear_done() == 2
    assert [item.title for item in todos.items] == ["buy milk", "fix bike"]
    assert todos.clear_done() == 0
    assert todos.pending() == ["buy milk", "fix bike"]
