"""The jedi-backed Python providers on a small package: exact records for every import form and hole kind."""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

import pytest

from repocomplete.context_engine import python_imports, typed_holes
from repocomplete.context_engine.python_imports import import_context

# A cold jedi can spend the default inference budget on its first file; tests want every type.
typed_hole_context = functools.partial(typed_holes.typed_hole_context, infer_budget_ms=None)

FILES = {
    "shop/__init__.py": '''"""The shop package."""
from .models import Inventory, Item, Store

__all__ = ["Inventory", "Item", "Store"]
''',
    "shop/models.py": '''"""Items, stores and inventories."""
from dataclasses import dataclass

DEFAULT_CITY = "Berlin"


class Store:
    """A physical store.

    It has an address.
    """

    def __init__(self, name: str, city: str = DEFAULT_CITY) -> None:
        self.name = name
        self.city = city


@dataclass
class Item:
    """A thing for sale."""

    sku: str
    price: float = 0.0

    def total(self, count: int) -> float:
        """Price of `count` units."""
        return self.price * count

    def _cents(self) -> int:
        return round(self.price * 100)


class Inventory:
    """Counts of items in one store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.counts: dict[str, int] = {}

    def restock(self, item: Item, count: int = 1) -> None:
        """Add `count` units of `item`."""
        self.counts[item.sku] = self.counts.get(item.sku, 0) + count

    @property
    def size(self) -> int:
        return len(self.counts)
''',
    "shop/util/__init__.py": "",
    "shop/util/helpers.py": '''"""Helpers for prices."""
import json

from ..models import Item

__all__ = ["fmt_price", "parse_sku"]


def fmt_price(item: Item, currency: str = "EUR") -> str:
    """Format the price of an item."""
    return f"{item.price} {currency}"


def parse_sku(
    text: str,
    strict: bool = False,
) -> str:
    return text.strip()


async def fetch_item(sku: str) -> Item:
    """Load an item."""
    return Item(sku)


def unexported():
    return json.dumps({})
''',
}

STORE = '''class Store:
    """A physical store."""
    name: str
    city: str
    def __init__(self, name: str, city: str = DEFAULT_CITY) -> None: ...'''
ITEM = '''@dataclass
class Item:
    """A thing for sale."""
    sku: str
    price: float = 0.0
    def total(self, count: int) -> float: ...'''
INVENTORY = '''class Inventory:
    """Counts of items in one store."""
    store: Store
    counts: dict[str, int]
    def __init__(self, store: Store) -> None: ...
    def restock(self, item: Item, count: int = 1) -> None: ...
    @property
    def size(self) -> int: ...'''
MODELS_MODULE = '''"""Items, stores and inventories."""
DEFAULT_CITY = "Berlin"
class Store:
    """A physical store."""
    def __init__(self, name: str, city: str = DEFAULT_CITY) -> None: ...
@dataclass
class Item:
    """A thing for sale."""
class Inventory:
    """Counts of items in one store."""
    def __init__(self, store: Store) -> None: ...'''
FMT_PRICE = '''def fmt_price(item: Item, currency: str = "EUR") -> str:
    """Format the price of an item."""'''
PARSE_SKU = "def parse_sku(text: str, strict: bool = False) -> str: ..."  # written over four lines


@pytest.fixture
def root(tmp_path: Path, monkeypatch) -> Path:
    for rel, content in FILES.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(content)
    return tmp_path


def rows(records):
    return [(r.path, r.start_line, r.end_line, r.score, r.kind, r.why) for r in records]


def at_cursor(marked: str) -> tuple[str, int, int]:
    """The text without its `|` marker, and the marker's 1-based (line, col)."""
    before = marked[: marked.index("|")]
    line = before.count("\n") + 1
    return marked.replace("|", "", 1), line, len(before) - (before.rfind("\n") + 1) + 1


# -- imports -----------------------------------------------------------------------------------------------

MAIN = '''import json
import shop.models as m
from shop import Item
from shop.models import Inventory as Inv, Store
import shop.util.helpers
import requests


def stock(inv: Inv, items: list[Item]) -> Inv:
    for item in items:
        inv.restock(item)
    extra = Item("x", 1.0)
    inv.restock(extra, 2)
    print(shop.util.helpers.fmt_price(extra))
    return Inv(Store("b"))
'''


def test_absolute_aliased_reexported_and_module_imports(root):
    records = import_context(root, root / "main.py", MAIN)
    assert rows(records) == [
        # `m` is used nowhere yet: imported for the code being written, it comes first
        ("shop/models.py", 1, 46, 5.0, "imports", "imported module `shop.models` as `m` (line 2), not used yet"),
        ("shop/models.py", 33, 46, 4.0, "imports", "imported as `Inv` from shop.models (line 4)"),
        ("shop/models.py", 18, 30, 3.0, "imports", "imported as `Item` from shop (line 3)"),  # via shop/__init__
        ("shop/models.py", 7, 15, 2.0, "imports", "imported as `Store` from shop.models (line 4)"),
        ("shop/util/helpers.py", 1, 27, 2.0, "imports", "imported module `shop.util.helpers` (line 5)"),
    ]
    assert [r.text for r in records] == [
        MODELS_MODULE,
        INVENTORY,
        ITEM,
        STORE,
        '"""Helpers for prices."""\n' + FMT_PRICE.split("\n")[0] + " ...\n" + PARSE_SKU
        + "\nasync def fetch_item(sku: str) -> Item: ...\ndef unexported(): ...",
    ]


def test_relative_imports_star_with_all_and_new_file(root):
    service = '''from .models import Item as It
from . import models
from .util.helpers import *


def price(x: It) -> str:
    return fmt_price(x) + fmt_price(x)
'''
    assert not (root / "shop/service.py").exists()
    records = import_context(root, root / "shop/service.py", service)
    assert rows(records) == [
        ("shop/models.py", 1, 46, 3.5, "imports", "imported as `models` from . (line 2), not used yet"),
        ("shop/util/helpers.py", 9, 11, 2.5, "imports",
         "imported as `fmt_price` by `from .util.helpers import *` (line 3)"),
        ("shop/models.py", 18, 30, 2.0, "imports", "imported as `It` from .models (line 1)"),
        # __all__ leaves out `unexported` and the module's own import of Item
        ("shop/util/helpers.py", 14, 18, 0.5, "imports",
         "imported as `parse_sku` by `from .util.helpers import *` (line 3)"),
    ]
    assert [r.text for r in records] == [MODELS_MODULE, FMT_PRICE, ITEM, PARSE_SKU]


def test_star_without_all_is_public_names_in_the_project_and_bounded(root, monkeypatch):
    text = "from shop.models import *\n\nInventory(Store('a'))\n"
    records = import_context(root, root / "main.py", text)
    # `dataclass` is a public name of shop.models too, but it resolves into the standard library.
    assert rows(records) == [
        ("shop/models.py", 7, 15, 1.5, "imports", "imported as `Store` by `from shop.models import *` (line 1)"),
        ("shop/models.py", 33, 46, 1.5, "imports", "imported as `Inventory` by `from shop.models import *` (line 1)"),
        ("shop/models.py", 4, 4, 0.5, "imports", "imported as `DEFAULT_CITY` by `from shop.models import *` (line 1)"),
        ("shop/models.py", 18, 30, 0.5, "imports", "imported as `Item` by `from shop.models import *` (line 1)"),
    ]
    assert records[2].text == 'DEFAULT_CITY = "Berlin"'
    monkeypatch.setattr(python_imports, "MAX_STAR_NAMES", 2)  # dataclass, DEFAULT_CITY
    assert [r.why for r in import_context(root, root / "main.py", text)] == [
        "imported as `DEFAULT_CITY` by `from shop.models import *` (line 1)"
    ]


def test_relative_star_of_a_package_follows_its_reexports(root):
    records = import_context(root, root / "shop/util/tool.py", "from .. import *\n")
    assert rows(records) == [
        ("shop/models.py", 33, 46, 0.5, "imports", "imported as `Inventory` by `from .. import *` (line 1)"),
        ("shop/models.py", 18, 30, 0.5, "imports", "imported as `Item` by `from .. import *` (line 1)"),
        ("shop/models.py", 7, 15, 0.5, "imports", "imported as `Store` by `from .. import *` (line 1)"),
    ]


def test_package_imported_whole_shows_its_reexports(root):
    (record,) = import_context(root, root / "main.py", "import shop\n\nshop.Item('a')\n")
    assert rows([record]) == [("shop/__init__.py", 1, 4, 2.0, "imports", "imported module `shop` (line 1)")]
    assert record.text == '"""The shop package."""\nfrom .models import Inventory, Item, Store'


def test_names_outside_the_project_are_skipped(root):
    text = ("import json\nfrom os import path\nfrom jedi import Script\nimport requests\n"
            "from shop.models import dataclass\n")
    assert import_context(root, root / "main.py", text) == []


def test_unsaved_buffer_overrides_the_file_on_disk(root):
    (root / "main.py").write_text("from shop.models import Store\n")
    records = import_context(root, root / "main.py", "from shop.models import Inventory\n")
    assert rows(records) == [
        ("shop/models.py", 33, 46, 2.0, "imports", "imported as `Inventory` from shop.models (line 1), not used yet")]


def test_imports_survive_syntax_errors_and_half_typed_imports(root):
    text = "from shop import Store\nfrom shop.models import (\n\ndef broken(:\n    Store(\n"
    records = import_context(root, root / "main.py", text)
    assert rows(records) == [("shop/models.py", 7, 15, 2.0, "imports", "imported as `Store` from shop (line 1)")]


def test_a_name_imported_and_not_used_yet_comes_first_unless_the_file_reexports_many(root):
    text = "from shop.models import Inventory, Item, Store\n\n\ndef f(inv: Inventory, x: Item):\n    inv.restock(x)\n"
    assert [(r.why, r.score) for r in import_context(root, root / "main.py", text)] == [
        ("imported as `Store` from shop.models (line 1), not used yet", 3.0),  # imported for the line being written
        ("imported as `Inventory` from shop.models (line 1)", 2.0),
        ("imported as `Item` from shop.models (line 1)", 2.0)]
    # under `if TYPE_CHECKING:` a name is for annotations (often strings): not first
    body = text[text.index("\n\n\ndef"):]
    typing = ("from typing import TYPE_CHECKING\nfrom shop.models import Inventory, Item\nif TYPE_CHECKING:\n"
              "    from shop.models import Store\n" + body)
    records = import_context(root, root / "main.py", typing)
    assert "imported as `Store` from shop.models (line 4)" in [r.why for r in records]
    assert not any("not used yet" in r.why for r in records)
    # a file importing more names than MAX_UNUSED_FIRST without using them re-exports them: none first
    reexports = "from shop.models import Inventory, Item, Store\nfrom shop.util.helpers import fmt_price, parse_sku\n"
    assert all(r.score == 1.0 for r in import_context(root, root / "main.py", reexports))


def test_names_a_block_imports_above_the_cursor_come_first_however_many_the_file_reexports(root):
    """`if __name__ == "__main__":` or a function importing a class just above the cursor imports it for the code
    being written there, even where the file imports (and uses, further down) more names than MAX_UNUSED_FIRST."""
    text = ("from shop.models import Inventory, Item\nfrom shop.util.helpers import fmt_price, parse_sku\n\n"
            "Item('a'), Item('b'), Inventory, fmt_price, parse_sku\n\n"
            "if __name__ == '__main__':\n"
            "    from shop.models import Store\n"
            "    from shop.util import helpers\n"
            "    helpers.fmt_price(1)\n"
            "    \n"  # the cursor, in the block, after its imports
            "    Store('x')\n")
    records = import_context(root, root / "main.py", text, cursor=(10, 4))
    assert (records[0].why, records[0].score) == (
        "imported as `Store` from shop.models (line 7), in the cursor's block, not used yet", 4.0)
    assert all("not used yet" not in r.why for r in records[1:])  # `helpers` is used since; the others are global
    # Elsewhere (the cursor before the block, or no cursor): as before, the most used first.
    for cursor in [(5, 0), None]:
        records = import_context(root, root / "main.py", text, cursor=cursor)
        assert not any("not used yet" in r.why for r in records), cursor
        assert records[0].score == 3.0 and "`Item`" in records[0].why  # (used twice)


def test_names_the_function_around_the_cursor_uses_come_first(root):
    """rich's `Traceback.__rich_console__` calls `loop_last` once, and the file annotates with `RenderResult`
    everywhere: the function being written uses what it already uses."""
    text = ("from shop.models import Inventory, Item, Store\n\n\n"
            "def a(x: Item) -> Item:\n    return Item(x)\n\n\n"
            "def b(x: Item) -> Item:\n    return Item(x)\n\n\n"
            "def c(inv: Inventory):\n    s = Store('a')\n    \n    inv.restock(s)\n")
    ranked = import_context(root, root / "main.py", text, cursor=(14, 4))  # in `c`, after its first line
    assert [(r.why, r.score) for r in ranked] == [
        ("imported as `Inventory` from shop.models (line 1), used 1x around the cursor", 2.0 + 8.0),
        ("imported as `Store` from shop.models (line 1), used 1x around the cursor", 2.0 + 8.0),
        ("imported as `Item` from shop.models (line 1)", 7.0)]  # six uses, none in `c`
    in_a = import_context(root, root / "main.py", text, cursor=(5, 4))
    assert [r.why for r in in_a][0] == "imported as `Item` from shop.models (line 1), used 3x around the cursor"
    # At the module's level, or with no cursor: the file's uses alone.
    for cursor in [(3, 0), None]:
        assert [r.why for r in import_context(root, root / "main.py", text, cursor=cursor)] == [
            "imported as `Item` from shop.models (line 1)", "imported as `Inventory` from shop.models (line 1)",
            "imported as `Store` from shop.models (line 1)"], cursor


def test_limit(root):
    assert len(import_context(root, root / "main.py", MAIN, limit=2)) == 2


# -- typed holes -------------------------------------------------------------------------------------------

APP = '''from .models import Inventory, Item, Store
from .util.helpers import fmt_price


class Shop:
    """Sells items."""

    def __init__(self, inv: Inventory, owner) -> None:
        self.inv = inv
        self.owner = owner
        self.sold: list[Item] = []

    def sell(self, item: Item, n: int = 1) -> str:
        total = item.total(n)
        label = fmt_price(item)
'''
SCOPE = ("# in scope: item: Item, n: int, total: float, label: str, self.inv: Inventory, self.owner, "
         "self.sold: list[Item]")
ITEM_BINDING = (ITEM, "shop/models.py", 18, 30, 6.0, "typed_holes", "type of `item`")
INVENTORY_BINDING = (INVENTORY, "shop/models.py", 33, 46, 5.96, "typed_holes", "type of `self.inv`")


def holes(root, marked: str, **kw):
    text, line, col = at_cursor(marked)
    records = typed_hole_context(root, root / "shop/app.py", text, line, col, **kw)
    return [(r.text, r.path, r.start_line, r.end_line, r.score, r.kind, r.why) for r in records]


def hole(text: str, line: int = 16):
    return (text, "shop/app.py", line, line, 10.0, "typed_holes", "the hole at the cursor")


def test_annotated_assignment_expects_its_annotation(root):
    assert holes(root, APP + "        new: Store = |") == [
        hole("# expected type: Store (annotation of `new`)\n" + SCOPE),
        (STORE, "shop/models.py", 7, 15, 9.0, "typed_holes", "expected type of `new`"),
        ITEM_BINDING,
        INVENTORY_BINDING,
    ]
    # a generic annotation: the project classes inside it
    assert holes(root, APP + "        by_sku: dict[str, Store] = {|")[:2] == [
        hole("# expected type: dict[str, Store] (annotation of `by_sku`)\n" + SCOPE),
        (STORE, "shop/models.py", 7, 15, 9.0, "typed_holes", "expected type of `by_sku`"),
    ]


def test_call_argument_in_an_unclosed_call(root):
    assert holes(root, APP + "        self.inv.restock(item, |") == [
        hole("# expected type: int (parameter `count` of `restock`)\n"
             "# signature: restock(item: Item, count: int=1) -> None\n" + SCOPE),
        ITEM_BINDING,  # int is no project type: no record for it
        INVENTORY_BINDING,
    ]


def test_call_argument_annotation_resolved_in_the_callee_file(root):
    assert holes(root, APP + "        self.inv.restock(|)\n        return label\n") == [
        hole("# expected type: Item (parameter `item` of `restock`)\n"
             "# signature: restock(item: Item, count: int=1) -> None\n" + SCOPE),
        (ITEM, "shop/models.py", 18, 30, 9.0, "typed_holes", "expected type of parameter `item`"),
        INVENTORY_BINDING,
    ]
    # fmt_price lives in shop/util/helpers.py, which imports Item relatively
    assert holes(root, APP + "        fmt_price(|")[:2] == [
        hole("# expected type: Item (parameter `item` of `fmt_price`)\n"
             '# signature: fmt_price(item: Item, currency: str="EUR") -> str\n' + SCOPE),
        (ITEM, "shop/models.py", 18, 30, 9.0, "typed_holes", "expected type of parameter `item`"),
    ]
    assert holes(root, APP + "        Store('a', city=|)")[0] == hole(
        "# expected type: str (parameter `city` of `Store`)\n"
        "# signature: Store(name: str, city: str=DEFAULT_CITY)\n" + SCOPE)


def test_return_expects_the_return_annotation(root):
    text = APP + "        return |\n\n    def stock(self) -> Inventory:\n        return |"
    assert holes(root, text.replace("|", "", 1)) == [
        hole("# expected type: Inventory (return type of `stock`)\n# in scope: self.inv: Inventory, self.owner, "
             "self.sold: list[Item]", line=19),
        (INVENTORY, "shop/models.py", 33, 46, 9.0, "typed_holes", "expected return type of `stock`"),
        (ITEM, "shop/models.py", 18, 30, 5.98, "typed_holes", "type of `self.sold`"),
    ]
    assert holes(root, APP + "        return |")[0] == hole("# expected type: str (return type of `sell`)\n" + SCOPE)


def test_bindings_are_params_locals_before_the_cursor_and_self_attributes(root):
    text = '''from shop.models import Inventory, Item


class Report:
    def __init__(self, inv: Inventory) -> None:
        self.inv = inv
        self._seen = 0

    def build(self, items: list[Item], *names, limit=3, **opts):
        rows = [row for row in items]
        for it in items:
            pass

        def helper(inner):
            hidden = 1
        with open("x") as fh:
            first = it.total(2)
        later = |rows
        after = 5
'''
    records = typed_hole_context(root, root / "report.py", *at_cursor(text))
    assert rows(records) == [
        ("report.py", 18, 18, 10.0, "typed_holes", "the hole at the cursor"),
        ("shop/models.py", 18, 30, 6.0, "typed_holes", "type of `items`"),
        ("shop/models.py", 33, 46, 5.91, "typed_holes", "type of `self.inv`"),
    ]
    assert records[0].text == (
        "# in scope: items: list[Item], *names, limit, **opts, rows: List[Item], it: Item, helper(inner), "
        "fh: TextIOWrapper, first: float, self.inv: Inventory, self._seen: int"
    )  # (`fh`: `open()`'s TextIOWrapper, whose `__enter__` returns Self; jedi alone said the declaring `_IOBase`)


def test_module_level_bindings(root):
    text = "from shop import Store\nDEFAULT = Store('x')\ncount = 3\ndef f(): pass\nx: Store = |"
    assert rows(typed_hole_context(root, root / "mod.py", *at_cursor(text))) == [
        ("mod.py", 5, 5, 10.0, "typed_holes", "the hole at the cursor"),
        ("shop/models.py", 7, 15, 9.0, "typed_holes", "expected type of `x`"),
    ]
    (first, _) = typed_hole_context(root, root / "mod.py", *at_cursor(text))
    assert first.text == "# expected type: Store (annotation of `x`)\n# in scope: DEFAULT: Store, count: int"
    assert typed_hole_context(root, root / "mod.py", *at_cursor("|import json\n")) == []


def test_receiver_after_a_dot(root):
    assert holes(root, APP + "        self.inv.|") == [
        hole("# receiver `self.inv`: Inventory\n# members: counts, restock, size, store\n" + SCOPE),
        (INVENTORY, "shop/models.py", 33, 46, 8.0, "typed_holes", "type of `self.inv`"),
        ITEM_BINDING,
    ]
    assert holes(root, APP + "        self.inv.re|")[0] == hole(
        "# receiver `self.inv`: Inventory\n# members: restock\n" + SCOPE)
    assert holes(root, APP + "        Item('a', 2.0).t|")[:2] == [
        hole("# receiver `Item('a', 2.0)`: Item\n# members: total\n" + SCOPE),
        (ITEM, "shop/models.py", 18, 30, 8.0, "typed_holes", "type of `Item('a', 2.0)`"),
    ]


def test_type_definitions_come_from_the_project_only(root):
    text = "from shop import Store\n\n\ndef f(name: str, store: Store) -> int:\n    name.st|"
    assert rows(typed_hole_context(root, root / "f.py", *at_cursor(text))) == [
        ("f.py", 5, 5, 10.0, "typed_holes", "the hole at the cursor"),
        ("shop/models.py", 7, 15, 5.99, "typed_holes", "type of `store`"),  # nothing for str
    ]
    (first, _) = typed_hole_context(root, root / "f.py", *at_cursor(text))
    assert first.text == "# receiver `name`: str\n# members: startswith, strip\n# in scope: name: str, store: Store"
    # a float literal and a dot inside a string are no receivers
    assert typed_hole_context(root, root / "f.py", *at_cursor(text.replace("name.st|", "x = 1.|")))[0].text == (
        "# in scope: name: str, store: Store")
    assert typed_hole_context(root, root / "f.py", *at_cursor(text.replace("name.st|", "x = 'a.|'")))[0].text == (
        "# in scope: name: str, store: Store")


def test_hole_in_a_file_with_a_syntax_error_elsewhere(root):
    broken = APP.replace('class Shop:', 'def broken(:\n    pass\n\n\nclass Shop:')
    assert holes(root, broken + "        self.inv.restock(item, |") == [
        hole("# expected type: int (parameter `count` of `restock`)\n"
             "# signature: restock(item: Item, count: int=1) -> None\n" + SCOPE, line=20),
        ITEM_BINDING,
        INVENTORY_BINDING,
    ]


def test_unsaved_buffer_is_what_the_hole_sees(root):
    (root / "shop/app.py").write_text("def sell():\n    return 1\n")
    assert holes(root, APP + "        new: Store = |")[0] == hole(
        "# expected type: Store (annotation of `new`)\n" + SCOPE)


def test_hole_limit(root):
    assert [r[-1] for r in holes(root, APP + "        new: Store = |", limit=2)] == [
        "the hole at the cursor", "expected type of `new`"]


def test_imports_outside_the_project_are_never_followed(root, monkeypatch):
    asked = []
    goto = python_imports._goto

    def spy(a, leaf):
        asked.append(leaf.value)
        return goto(a, leaf)

    monkeypatch.setattr(python_imports, "_goto", spy)
    text = "import json\nfrom os import path\nfrom jedi import Script\nimport shop.models\nfrom .x import y\n"
    records = import_context(root, root / "main.py", text)
    assert asked == ["models", "y"]  # json, os and jedi are not in the project: jedi never resolves them
    assert [r.path for r in records] == ["shop/models.py"]


# -- bounded work on huge and hostile buffers --------------------------------------------------------------------


def test_a_huge_buffer_reaches_jedi_as_a_view_and_records_keep_its_lines(root):
    from repocomplete.context_engine.engine import slow_provider
    from repocomplete.context_engine.jedi_support import BufferView

    filler = "".join(f"def f{i}(a, b):\n    return a + b * {i}\n\n\n" for i in range(8000))  # ~310 KB
    text, line, col = at_cursor("from shop.models import Store\n\n\n" + filler + "def g(s: Store):\n    s.|\n")
    view = BufferView.of(text, line, col)
    assert view.lines is not None and len(view.text) < 40_000
    assert view.text.split("\n")[view.line - 1][: view.col - 1] == "    s."
    records = slow_provider("typed_holes", str(root), "big.py", text, line, col, None)
    assert records[0].why == "the hole at the cursor" and records[0].text.startswith("# receiver `s`: Store")
    assert (records[0].path, records[0].start_line) == ("big.py", line)  # the buffer's line, not the view's
    imports = slow_provider("imports", str(root), "big.py", text, line, col, None)
    assert [(r.path, r.why) for r in imports] == [
        ("shop/models.py", "imported as `Store` from shop.models (line 1), used 1x around the cursor")]


def test_a_large_module_is_analysed_whole_so_its_own_classes_resolve(root):
    """rich's console.py (101 KB): `PagerContext` keeps `self._console: "Console"`, a class defined 200 lines on;
    cut to a view, the buffer lost it and the hole had no type for the receiver."""
    from repocomplete.context_engine.engine import slow_provider
    from repocomplete.context_engine.jedi_support import BufferView

    filler = "".join(f"def f{i}(a, b):\n    return a + b * {i}\n\n\n" for i in range(3000))  # ~115 KB
    code = ("class Pager:\n    def __init__(self, console: \"Console\"):\n        self._console = console\n\n"
            "    def close(self):\n        self._console.|\n\n\n" + filler
            + "class Console:\n    def _exit_buffer(self):\n        pass\n")
    text, line, col = at_cursor(code)
    assert len(text) > 100_000 and BufferView.of(text, line, col).lines is None
    records = slow_provider("typed_holes", str(root), "console.py", text, line, col, None)
    assert records[0].text.startswith("# receiver `self._console`: Console")
    stub = next(r for r in records if r.why == "type of `self._console`")
    assert stub.text.startswith("class Console:") and stub.path == "console.py"
    # code that leaves brackets open by the hundred is still cut to a view past 100 KB
    assert BufferView.of(text + "(" * 200, line, col).lines is not None


def test_hostile_buffers_cost_jedi_little():
    import time

    from helpers import hostile_files
    from repocomplete.context_engine.engine import slow_provider

    for name, text in hostile_files().items():
        if not name.endswith(".py"):
            continue
        lines = text.split("\n")
        for line, col in ((1, 1), (len(lines) // 2 or 1, 50), (1, len(lines[0]))):
            col = min(col, len(lines[line - 1]) + 1)
            t0 = time.monotonic()
            for kind in ("imports", "typed_holes"):
                slow_provider(kind, "/nonexistent-root", name, text, line, col, 120.0)
            assert time.monotonic() - t0 < 10, (name, line, col)  # unbounded: minutes


# -- focused summaries ------------------------------------------------------------------------------------------


def _classdef(source: str):
    import parso

    return next(n for n in parso.parse(source).iter_classdefs())


BIG = "class Big(Base):\n    \"\"\"Many members.\"\"\"\n    size: int = 0\n\n    def __init__(self, n):\n        self.n = n\n" + "".join(
    f"\n    def m{i}(self, x):\n        return x\n" for i in range(60))


def test_a_focused_class_summary_shows_the_members_the_file_uses_and_names_the_rest():
    from repocomplete.context_engine.python_stubs import FOCUS_STUB_LINES, MAX_OTHER_NAMES, class_stub, focus_names

    buffer = "a = 1\n" * 100 + "big.m3(1)\n" + "b = 2\n" * 100 + "x = big.m21(2)\nbig.\n"
    focus = focus_names(buffer, line=203)
    assert focus == {"m3": 1.0, "m21": 2.0}  # near the cursor weighs double
    stub = class_stub(_classdef(BIG), focus)
    lines = stub.split("\n")
    assert lines[:2] == ["class Big(Base):", '    """Many members."""']
    members = lines[2:]
    assert len(members) <= FOCUS_STUB_LINES + 1
    assert "    def __init__(self, n): ..." in members
    assert "    def m21(self, x): ..." in members and "    def m3(self, x): ..." in members
    assert members.index("    def m3(self, x): ...") < members.index("    def m21(self, x): ...")  # source order
    also = members[-1]
    assert "    def m0(self, x): ..." in members  # the room left goes to members in source order
    assert also.startswith("    # also: ") and "m29" in also and ", m21," not in also  # the rest, by name
    names = also[len("    # also: "):].split(" (+")[0].split(", ")
    assert "(+" not in also  # every other member by name: one left out is one the model cannot name
    shown = {m.split("(")[0].split()[-1] for m in members if m.startswith("    def ")}
    assert set(names) | shown >= {f"m{i}" for i in range(60)}
    # past MAX_OTHER_NAMES, the rest is counted
    huge = "class Huge:\n" + "".join(f"    def m{i}(self, x): ...\n" for i in range(MAX_OTHER_NAMES + 20))
    assert class_stub(_classdef(huge), focus).split("\n")[-1].endswith(f" (+{20 - FOCUS_STUB_LINES})")
    # Without focus: the whole summary, as before (capped at MAX_STUB_LINES).
    whole = class_stub(_classdef(BIG))
    assert "def m40" not in whole and "# also" not in whole and "more" in whole.split("\n")[-1]
    # A small class is shown whole either way.
    small = "class S:\n    def a(self): ...\n    def b(self): ...\n"
    assert class_stub(_classdef(small), focus) == class_stub(_classdef(small))


def test_a_summary_s_short_form_is_its_header_and_member_names_the_used_ones_first():
    import parso

    from repocomplete.context_engine.python_stubs import (
        MAX_OTHER_NAMES, class_stub, class_stub_and_names, module_stub_and_names,
    )

    focus = {"m21": 2.0, "m3": 1.0}
    # (signatures as long as real ones: a short form is only made where it takes half the summary or less)
    big = BIG.replace("(self, x):", "(self, value: int, other: Optional[str] = None) -> Dict[str, int]:")
    stub, short = class_stub_and_names(_classdef(big), focus)
    assert stub == class_stub(_classdef(big), focus)
    head, members = short.split("\n")
    assert head == "class Big(Base):"
    names = members[len("    # members: "):].split(" (+")[0].split(", ")
    assert members.startswith("    # members: m21, m3, size, n, __init__, m0, m1, ")
    assert len(names) == 63 and "(+" not in members  # every member's name
    signature = "(self, value: int, other: Optional[str] = None) -> Dict[str, int]: ..."
    huge = "class Huge:\n" + "".join(f"    def m{i}{signature}\n" for i in range(MAX_OTHER_NAMES + 5))
    assert class_stub_and_names(_classdef(huge))[1].endswith(f", m{MAX_OTHER_NAMES - 1} (+5)")
    # A decorated class keeps its `class` line; a class whose summary is already short has no short form.
    decorated = "@dataclass\nclass P:\n" + "".join(f"    field_{i}: int = {i}\n" for i in range(30))
    assert class_stub_and_names(_classdef(decorated))[1].split("\n")[0] == "class P:"
    assert class_stub_and_names(_classdef("class S:\n    def a(self): ...\n"))[1] == ""
    # A module: its public names, no header.
    module = parso.parse('"""Helpers."""\nLIMIT = 3\n\n\ndef load(path):\n    pass\n\n\nclass Reader:\n'
                         '    """Reads."""\n\n    def __init__(self, path):\n        self.path = path\n\n\n'
                         'def _private():\n    pass\n')
    stub, short = module_stub_and_names(module, False, {"load": 1.0})
    assert "def load(path): ..." in stub and short == "# names: load, LIMIT, Reader"


def test_long_signatures_are_summarised_on_one_line_names_and_short_defaults_first():
    """A signature fits on one line as written; a long one loses its blanks, then its annotations and long defaults
    (a call needs the names), keeping `*`, `/`, stars, `async` and a short return annotation."""
    import parso

    from repocomplete.context_engine.python_stubs import MAX_SIGNATURE_CHARS, function_stub

    def stub(source: str) -> str:
        return function_stub(next(parso.parse(source).iter_funcdefs()))

    short = "def f(a: int, b: str = 'x') -> int:\n    pass\n"
    assert stub(short) == "def f(a: int, b: str = 'x') -> int: ..."
    wrapped = "def f(\n    a: int,\n    b: str = 'x',\n) -> int:\n    pass\n"
    assert stub(wrapped) == "def f(a: int, b: str = 'x') -> int: ..."
    params = ", ".join(f"option_{i}: Optional[Dict[str, int]] = None" for i in range(6))
    long = (f"async def configure(self, path, /, *sources: str, {params}, mode: str = 'a-rather-long-default', "
            f"**extra: Any) -> Dict[str, Tuple[int, int, int, int, int]]:\n    pass\n")
    one = stub(long)
    assert one == ("async def configure(self, path, /, *sources, "
                   + ", ".join(f"option_{i}=None" for i in range(6)) + ", mode=..., **extra): ...")
    kw_only = "def g(self, first: 'VeryLongTypeName', *, second: 'AnotherLongTypeName' = None, third: int = 3) -> 'Table':\n    pass\n"
    assert len(kw_only.split("\n")[0]) > MAX_SIGNATURE_CHARS
    assert stub(kw_only) == "def g(self, first, *, second=None, third=3) -> 'Table': ..."


def test_the_receiver_s_class_is_summarised_for_the_members_used_near_the_cursor(root):
    """typed holes: the receiver's class stub keeps the members the buffer uses."""
    many = "".join(f"\n    def op{i}(self):\n        return {i}\n" for i in range(25))
    (root / "shop" / "ops.py").write_text(f"class Ops:\n    def __init__(self):\n        self.v = 1\n{many}")
    text = "from shop.ops import Ops\n\n\ndef f(o: Ops):\n    o.op17()\n    o.\n"
    records = typed_hole_context(root, root / "app.py", text, 6, 7)
    stub = next(r for r in records if r.path == "shop/ops.py").text
    assert "def op17(self): ..." in stub and "# also: " in stub and "def op24" not in stub


def test_a_class_s_project_bases_follow_it_as_stubs(root):
    """`self.run()` in a subclass is an inherited member: the bases' stubs (from their own files, aliased and
    generic forms too) follow the class's, each scoring below the class it came from; outside bases are skipped."""
    (root / "shop" / "base.py").write_text(
        "from typing import Generic, TypeVar\nT = TypeVar('T')\n\n\n"
        "class Root:\n    def run(self) -> None: ...\n\n\n"
        "class Command(Root, Generic[T]):\n    def finalize(self, name: str) -> 'Command': ...\n")
    (root / "shop" / "cmds.py").write_text(
        "import shop.base as b\nfrom collections import OrderedDict\n\n\n"
        "class Build(b.Command[int], OrderedDict, metaclass=type):\n    def go(self):\n        pass\n")
    text = "from shop.cmds import Build\n\n\ndef f(cmd: Build):\n    cmd.|"
    records = typed_hole_context(root, root / "app.py", *at_cursor(text))
    by_path = [(r.path, r.text.split("\n")[0], r.score, r.why) for r in records[1:]]
    assert by_path[:3] == [
        ("shop/cmds.py", "class Build(b.Command[int], OrderedDict, metaclass=type):", 8.0, "type of `cmd`"),
        ("shop/base.py", "class Command(Root, Generic[T]):", 6.5, "base class of `Build` (type of `cmd`)"),
        ("shop/base.py", "class Root:", 5.0, "base class of `Command` (base class of `Build` (type of `cmd`))"),
    ]


def test_a_private_assignment_imported_by_name_is_shown(root):
    # rich's segment.py imports `_is_single_cell_widths: Callable[[str], bool] = ...` from .cells: a private name, but
    # one the file asked for by name, so its line is what the model needs (module summaries still leave it out).
    (root / "shop/limits.py").write_text('"""Limits."""\n_MAX_ITEMS: int = 50\nPUBLIC = 1\n')
    text = "from shop.limits import _MAX_ITEMS\n\nif len(items) > _MAX_ITEMS:\n    pass\n"
    (record,) = import_context(root, root / "main.py", text)
    assert rows([record]) == [
        ("shop/limits.py", 2, 2, 2.0, "imports", "imported as `_MAX_ITEMS` from shop.limits (line 1)")]
    assert record.text == "_MAX_ITEMS: int = 50"
    (record,) = import_context(root, root / "main.py", "import shop.limits\n\nshop.limits.PUBLIC\n")
    assert "_MAX_ITEMS" not in record.text and "PUBLIC = 1" in record.text


def test_the_types_of_attribute_chains_the_function_reaches_into(root):
    # markdown-it-py's `state.md.normalizeLink(...)`: `state` is a binding (its class summary shows `md`), but the
    # members the line needs are `md`'s class's.
    text = '''from shop.models import Inventory


def audit(inv: Inventory, other) -> str:
    city = inv.store.city
    name = other.owner.name
    |
'''
    records = typed_hole_context(root, root / "audit.py", *at_cursor(text))
    assert rows(records) == [
        ("audit.py", 7, 7, 10.0, "typed_holes", "the hole at the cursor"),
        ("shop/models.py", 33, 46, 6.0, "typed_holes", "type of `inv`"),
        ("shop/models.py", 7, 15, 5.49, "typed_holes", "type of `inv.store`"),  # `other.owner`: unknown, no record
    ]
    assert records[2].text == STORE


def test_a_private_method_the_file_reaches_is_in_the_focused_summary():
    from repocomplete.context_engine.python_stubs import class_stub, focus_names

    source = ("class Console:\n    def print(self, text): ...\n    def _enter_buffer(self): ...\n"
              "    def _exit_buffer(self): ...\n    def __secret(self): ...\n")
    buffer = "def close(pager):\n    pager._console._exit_buffer()\n    pager.__secret()\n"
    focused = class_stub(_classdef(source), focus_names(buffer, line=3))
    assert "    def _exit_buffer(self): ..." in focused.split("\n")
    assert "_enter_buffer" not in focused and "__secret" not in focused  # not reached; name-mangled
    assert "_exit_buffer" not in class_stub(_classdef(source))  # without focus: the public members only


def test_a_truncated_parse_cache_is_a_miss_and_is_written_whole_again(root, tmp_path, monkeypatch):
    """A pickle of the parse cache cut short (a process killed while writing it; before, parso wrote in place and a
    jedi worker could read a half-written one) is parsed again: the receiver's type still comes."""
    import jedi
    import parso.cache

    from repocomplete.context_engine.jedi_support import use_cache_dir

    monkeypatch.setattr(jedi.settings, "cache_directory", jedi.settings.cache_directory)
    use_cache_dir(tmp_path / "jedi")
    parso.cache.parser_cache.clear()
    whole = holes(root, APP + "        self.inv.|")
    assert whole[0][0].startswith("# receiver `self.inv`: Inventory")
    pickles = sorted((tmp_path / "jedi").rglob("*.pkl"))
    assert pickles
    for p in pickles:
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    parso.cache.parser_cache.clear()  # the next parse reads the pickles
    assert holes(root, APP + "        self.inv.|") == whole
    for p in pickles:  # parsed again, each pickle was written again whole
        assert pickle.loads(p.read_bytes()).node is not None, p
        assert not list(p.parent.glob(".*.tmp"))


def test_a_parse_cache_pickle_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    import parso.cache

    from repocomplete.context_engine import jedi_support

    grammar = parso.load_grammar()
    source = tmp_path / "m.py"
    source.write_text("x = 1\n")
    cache = tmp_path / "cache"
    grammar.parse(path=str(source), cache=True, cache_path=cache)
    [saved] = cache.rglob("*.pkl")
    before = saved.read_bytes()
    assert saved.stat().st_mode & 0o777 == 0o600

    def torn(item, f, protocol=None):  # a disk that fills up half way
        f.write(before[: len(before) // 2])
        raise OSError("no space left on device")

    monkeypatch.setattr(jedi_support.pickle, "dump", torn)
    source.write_text("x = 2\n")
    parso.cache.parser_cache.clear()
    with pytest.raises(OSError):
        grammar.parse(path=str(source), cache=True, cache_path=cache)
    assert saved.read_bytes() == before  # the last whole pickle stays; no half of the new one anywhere
    assert list(saved.parent.iterdir()) == [saved]


def test_a_forward_reference_annotation_names_its_class(root):
    """`self._console: "Console"` (a class further down the file) and `Optional["Item"]`: the names inside the
    string resolve through jedi's inference of the binding; goto on the annotation found nothing and the hole had no
    summary of the class (rich's `PagerContext` reaching `self._console._exit_buffer()`)."""
    text = '''import shop.models
from typing import Optional


class Pager:
    def __init__(self, console: "Console", item: Optional["shop.models.Item"] = None) -> None:
        self._console: "Console" = console
        |

    def show(self, extra: "Console") -> None:
        self._console._exit_buffer()


class Console:
    def _exit_buffer(self) -> None: ...
'''
    records = typed_hole_context(root, root / "pager.py", *at_cursor(text))
    assert records[0].text == ('# in scope: console: "Console", item: Optional["shop.models.Item"], '
                               'self._console: "Console"')
    assert rows(records)[1:] == [("pager.py", 14, 15, 6.0, "typed_holes", "type of `console`"),
                                 ("shop/models.py", 18, 30, 5.99, "typed_holes", "type of `item`")]
    assert records[1].text == "class Console:\n    def _exit_buffer(self) -> None: ..."  # (the file reaches it)
    show = text.replace("        |\n", "").replace("_exit_buffer()\n", "_exit_buffer()\n        |\n", 1)
    records = typed_hole_context(root, root / "pager.py", *at_cursor(show))
    assert records[0].text == '# in scope: extra: "Console", self._console: "Console"'
    assert {(r.path, r.why) for r in records[1:]} == {("pager.py", "type of `extra`")}  # (one summary of the class)


# -- one jedi inference state per file inside a gate ------------------------------------------------------------------


def _cart_members(root, text, gate):
    from repocomplete.context_engine.facts import analyse
    from repocomplete.context_engine.jedi_support import gated

    with gated(gate):
        return analyse(root, root / "shop/app.py", text, text.index("|"), "deref").names


CART = "from shop.models import Item\n\n\nclass Cart(Item):\n    def add(self):\n        self.|\n"


def test_scripts_of_a_file_share_one_inference_state_inside_a_gate_only(root):
    from repocomplete.context_engine.gate import Gate
    from repocomplete.context_engine.jedi_support import Analysis, gated

    gate = Gate(root)
    with gated(gate):
        first = Analysis.open(root, root / "shop/app.py", "x = 1\n")
        second = Analysis.open(root, root / "shop/app.py", "x = 2\n")
        other = Analysis.open(root, root / "shop/models.py", "y = 1\n")
    assert second.script._inference_state is first.script._inference_state
    assert other.script._inference_state is not first.script._inference_state  # another file, another state
    assert second.tree.get_code() == "x = 2\n"  # the new buffer, parsed anew
    plain = [Analysis.open(root, root / "shop/app.py", "x = 1\n") for _ in range(2)]
    assert plain[0].script._inference_state is not plain[1].script._inference_state  # no gate: jedi's own


def test_a_shared_state_sees_the_buffer_s_edits_and_files_changed_on_disk(root):
    """The members of the buffer's own class follow its text, a base class edited on disk is read again, and the
    answers equal a fresh state's."""
    from repocomplete.context_engine.gate import Gate

    gate = Gate(root)
    before = _cart_members(root, CART, gate)
    assert {"add", "total", "sku"} <= set(before) and "remove" not in before
    edited = CART.replace("    def add(self):", "    def remove(self):\n        pass\n\n    def add(self):")
    assert "remove" in _cart_members(root, edited, gate)
    models = root / "shop/models.py"
    models.write_text(models.read_text().replace("    def _cents(self)", "    def refund(self) -> None:\n"
                                                 "        pass\n\n    def _cents(self)"))
    after = _cart_members(root, CART, gate)
    assert "refund" in after and "refund" not in before
    assert after == _cart_members(root, CART, Gate(root))  # a fresh state's


def test_a_shared_state_is_dropped_after_a_failure_and_after_its_reuses(root, monkeypatch):
    from repocomplete.context_engine import jedi_support
    from repocomplete.context_engine.gate import Gate
    from repocomplete.context_engine.jedi_support import Analysis, gated, taint

    gate = Gate(root)
    with gated(gate):
        state = Analysis.open(root, root / "shop/app.py", "x = 1\n").script._inference_state
        taint()  # an inference failed: jedi may have cached the defaults it set against recursion
        fresh = Analysis.open(root, root / "shop/app.py", "x = 1\n").script._inference_state
    assert fresh is not state
    with pytest.raises(RuntimeError), gated(gate):
        Analysis.open(root, root / "shop/app.py", "x = 1\n")
        raise RuntimeError("a failure out of the block")
    with gated(gate):
        again = Analysis.open(root, root / "shop/app.py", "x = 1\n").script._inference_state
    assert again is not fresh
    monkeypatch.setattr(jedi_support, "STATE_REUSES", 2)
    with gated(gate):
        taint()
        states = [Analysis.open(root, root / "shop/app.py", "x = 1\n").script._inference_state for _ in range(3)]
    assert states[0] is states[1] and states[2] is not states[1]
