"""A tiny front end: `python cli.py "buy milk" "call mum"` adds items and prints the list."""

import sys

from todo import TodoList


def show(todos: TodoList) -> str:
    return "\n".join(f"[{'x' if item.done else ' '}] {item.title}" for item in todos.items)


if __name__ == "__main__":
    todos = TodoList()
    for title in sys.argv[1:]:
        todos.add(title)
    print(show(todos))
