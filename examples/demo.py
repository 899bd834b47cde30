"""A small inventory module: the file `make demo` completes in."""

from dataclasses import dataclass


@dataclass
class Item:
    name: str
    price: float
    quantity: int = 0

    def total(self) -> float:
        return self.price * self.quantity


def inventory_value(items: list[Item]) -> float:
    """The value of all items together."""
    return sum(item.total() for item in items)


def cheapest(items: list[Item]) -> Item:
    """The item with the lowest price."""
    return min(items, key=lambda item: item.price)


def most_valuable(items: list[Item]) -> Item:
    """The item whose stock is worth the most."""
    
