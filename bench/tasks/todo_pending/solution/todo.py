"""A to-do list kept in memory by the notes app."""

from dataclasses import dataclass, field


@dataclass
class Item:
    title: str
    done: bool = False


@dataclass
class TodoList:
    items: list[Item] = field(default_factory=list)

    def add(self, title: str) -> int:
        """Add an item; returns its index."""
        if not title.strip():
            raise ValueError("a to-do item needs a title")
        self.items.append(Item(title.strip()))
        return len(self.items) - 1

    def complete(self, index: int) -> None:
        self.items[index].done = True

    def __len__(self) -> int:
        return len(self.items)

    def pending(self) -> list[str]:
        return [item.title for item in self.items if not item.done]

    def clear_done(self) -> int:
        before = len(self.items)
        self.items = [item for item in self.items if not item.done]
        return before - len(self.items)
