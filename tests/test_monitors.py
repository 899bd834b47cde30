"""Monitor-guided decoding: the analysis' facts, where each monitor triggers and what it allows, the token mask over
the real embedded tokenizer, the engine's combination with token healing, the yield rule, and a tiny random model
forced to a valid member through the whole pipeline."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import replace

import pytest
import torch

from helpers import write_tree
from repocomplete.context_engine.config import ContextConfig
from repocomplete.context_engine.errors import InputError
from repocomplete.context_engine.facts import Facts, Param, Signature, analyse, check_identifiers
from repocomplete.lsp_server.config import Settings, apply, resolve
from repocomplete.model_runtime.config import RuntimeConfig
from repocomplete.model_runtime.engine import CompletionRequest, Engine
from repocomplete.model_runtime.errors import ConfigError, RemoteError
from repocomplete.model_runtime.healing import VocabIndex
from repocomplete.model_runtime.monitor import MIN_SWAP_MASS, MONITOR_KINDS, Constraint, Guide, NameMask
from repocomplete.model_runtime.templates import PromptParts
from repocomplete.monitors import (ScanState, Session, monitors_text, parse_monitors, scan, scan_head,
                                   site_at)
from repocomplete.pipeline import Completer, CompletionOptions

CLIENT = '''\
class Base:
    def close(self):
        pass


class Client(Base):
    def __init__(self, url):
        self.url = url
        self.timeout = 3

    def fetch(self, path, *, retries=2, verbose=False):
        return path


def make_client(url, secure=True):
    return Client(url)


def anything(**options):
    return options
'''
MAIN = '''\
import os
from pkg.client import Client, make_client


def run(u):
    client = Client(u)
    CURSOR
'''


@pytest.fixture
def project(tmp_path):
    return write_tree(tmp_path / "proj", {"pkg/__init__.py": "", "pkg/client.py": CLIENT, "main.py": MAIN,
                                          ".git/HEAD": "ref: refs/heads/main\n"})


def buffer(line: str) -> tuple[str, int]:
    text = MAIN.replace("CURSOR", line)
    return text, text.index(line) + len(line)


# -- the analysis ----------------------------------------------------------------------------------------------------


def test_facts_members_are_the_inferred_types_with_inherited_ones(project):
    text, offset = buffer("client.")
    facts = analyse(project, project / "main.py", text, offset, "deref")
    assert facts.what == "Client"
    assert set(facts.members_shown) == {"close", "fetch", "timeout", "url"}
    assert "__init__" in facts.names  # dunders are allowed, only not shown


def test_facts_unknown_receiver_is_unknown(project):
    text, offset = buffer("u.")
    assert analyse(project, project / "main.py", text, offset, "deref").names is None
    text, offset = buffer("x = 1.")  # a float, not a member
    assert analyse(project, project / "main.py", text, offset, "deref").names is None


def test_facts_a_standard_class_has_the_members_its_compiled_base_gives_it(tmp_path, monkeypatch):
    # jedi alone lists `socket.socket` without what `_socket.socket` gives it: `send` would look invented
    root = write_tree(tmp_path / "proj", {".git/HEAD": "ref: refs/heads/main\n",
                                          "lib/socket.py": "class socket:\n    def only(self): ...\n"})
    text = "import socket\n\nsend, receive = socket.socketpair()\nsend.\n"
    facts = analyse(root, root / "main.py", text, len(text) - 1, "deref")
    assert {"send", "recv", "setblocking", "sendfile", "close"} <= set(facts.names)
    assert check_identifiers(root, root / "main.py", text.replace("send.\n", "send.send(b'')\n"), len(text) - 6,
                             len(text) + 8) == (2, [])
    # a function a loaded library patched into a standard class is not the class's (transformers: `warning_once`)
    import logging

    monkeypatch.setattr(logging.Logger, "patched_in", lambda self: None, raising=False)
    text = "import logging\n\nlogging.getLogger().\n"
    names = analyse(root, root / "main.py", text, len(text) - 1, "deref").names
    assert "warning" in names and "patched_in" not in names
    # a project's module named like a standard one is the project's: its class gets no standard members
    text = "import socket\n\nsocket.socket().\n"
    facts = analyse(root / "lib", root / "lib" / "main.py", text, len(text) - 1, "deref")
    assert "only" in facts.names and "send" not in facts.names


SELF_TYPED = '''\
from typing import Self
import typing_extensions


class Resource:
    async def __aenter__(self) -> Self:
        return self

    def __enter__(self) -> "Self":
        return self

    def copy(self) -> typing_extensions.Self: ...

    @classmethod
    def make(cls) -> Self: ...


class Process(Resource):
    pid = 0
'''


@pytest.mark.parametrize("line", ["with Process() as p:\n        p.", "async with Process() as p:\n        p.",
                                  "Process().copy().", "Process.make()."])
def test_facts_a_method_returning_self_gives_the_callers_class(tmp_path, line):
    # jedi alone reads `-> Self` as the declaring class (`Resource`): `pid` would look invented
    root = write_tree(tmp_path / "proj", {"res.py": SELF_TYPED, ".git/HEAD": "ref: refs/heads/main\n"})
    text = "from res import Process\n\n\nasync def run():\n    " + line + "\n"
    facts = analyse(root, root / "main.py", text, text.index(line) + len(line), "deref")
    assert facts.what == "Process"
    assert "pid" in facts.names


def test_facts_call_parameters_and_scope_and_imports(project):
    text, offset = buffer("client.fetch(")
    facts = analyse(project, project / "main.py", text, offset, "args")
    assert facts.signatures == (Signature("fetch", (Param("path", "POSITIONAL_OR_KEYWORD", required=True),
                                                    Param("retries", "KEYWORD_ONLY"),
                                                    Param("verbose", "KEYWORD_ONLY"))),)
    assert (facts.signatures[0].positional, facts.signatures[0].keywords) == (1, ("path", "retries", "verbose"))
    text, offset = buffer("Client(")
    assert analyse(project, project / "main.py", text, offset, "args").signatures == (
        Signature("Client", (Param("url", "POSITIONAL_OR_KEYWORD", required=True),), "class"),)
    text, offset = buffer("x = ")
    names = set(analyse(project, project / "main.py", text, offset, "scope").names)
    assert {"client", "u", "run", "os", "Client", "make_client", "len", "None"} <= names
    assert "fetch" not in names
    text, offset = buffer("client.fetch(u, ")  # inside a call: still the names in scope, not `retries=`
    names = set(analyse(project, project / "main.py", text, offset, "scope").names)
    assert {"client", "u", "len"} <= names and not any(n.endswith("=") for n in names)
    text = "from pkg.client import \n"
    names = set(analyse(project, project / "other.py", text, len(text) - 1, "imports").names)
    assert {"Base", "Client", "make_client", "anything"} <= names
    text = "import pkg.\n"
    assert analyse(project, project / "other.py", text, len(text) - 1, "imports").names == ("client",)


def test_facts_a_call_left_open_before_more_code_has_its_signature(tmp_path):
    """anyio's `await self.aclose(` with the class's next method after it: the parser reads the method into the
    call and jedi finds no callee, unless the call is closed where its arguments start."""
    root = write_tree(tmp_path / "p", {"m.py": (
        "class Resource:\n"
        "    async def __aexit__(self, exc_type):\n"
        "        await self.aclose(\n\n"
        "    @staticmethod\n"
        "    async def aclose() -> None:\n"
        "        pass\n")})
    text = (root / "m.py").read_text()
    offset = text.index("aclose(") + len("aclose(")
    facts = analyse(root, root / "m.py", text, offset, "args")
    assert facts.signatures == (Signature("aclose", ()),)


def test_the_analyst_settles_what_it_was_asked_and_may_forget_it(project):
    from concurrent.futures import ThreadPoolExecutor

    from repocomplete.context_engine.facts import Analyst

    text, offset = buffer("client.")
    with ThreadPoolExecutor(1) as pool:
        analyst = Analyst(project, pool)
        future = analyst.submit("deref", "main.py", text, offset)
        analyst.settle()
        assert future.done() and future.result().what == "Client"
        assert analyst.submit("deref", "main.py", text, offset) is future  # kept: answered from the cache
        analyst.settle(forget=True)
        again = analyst.submit("deref", "main.py", text, offset)
        assert again is not future  # forgotten: asked anew
        assert analyst.facts("deref", "main.py", text, offset, None).what == "Client"


def test_the_analyst_does_not_wait_for_an_answer_not_expected_in_time(project, monkeypatch):
    """Where the latest answers of a kind on a file all took longer than the wait has left, the asker does not wait
    (the wait would be spent for nothing); the answer, when it comes, is cached; with a quick history it waits."""
    import threading
    import time
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from repocomplete.context_engine import facts as facts_module
    from repocomplete.context_engine.facts import Analyst

    release = threading.Event()
    real = facts_module.facts_provider

    def slow(*args):
        release.wait(5)
        return real(*args)

    monkeypatch.setattr(facts_module, "facts_provider", slow)
    with ThreadPoolExecutor(1) as pool:
        analyst = Analyst(project, pool)
        assert analyst.expected_s("deref", "main.py") is None
        analyst._took[("main.py", "deref")] = deque([0.5, 0.8])  # answers slower than the wait
        text, offset = buffer("client.")
        t0 = time.perf_counter()
        assert analyst.facts("deref", "main.py", text, offset, 0.2) is None
        assert time.perf_counter() - t0 < 0.1  # not the 0.2 s wait
        release.set()
        assert analyst.facts("deref", "main.py", text, offset, None).what == "Client"  # cached, answered
        assert analyst.expected_s("deref", "main.py") < 0.5  # its time joined the history
        release.clear()
        threading.Timer(0.05, release.set).start()
        analyst._took[("main.py", "deref")].extend([0.01] * 5)  # a quick worker: the wait is worth it
        text, offset = buffer("client.fetch(u).")
        assert analyst.facts("deref", "main.py", text, offset, 5.0) is not None


def test_every_keystroke_on_a_line_asks_the_one_scope_question(project):
    """The names in scope are asked where the line's statement starts, the line a placeholder: typing on the line
    finds the first keystroke's answer (a line below asks anew)."""
    from concurrent.futures import ThreadPoolExecutor

    from repocomplete.context_engine.facts import Analyst

    with ThreadPoolExecutor(1) as pool:
        analyst = Analyst(project, pool)
        futures = []
        for typed in ("res", "result = cl", "result = client.fetch(u, ret"):
            text, offset = buffer(typed)
            at = offset - len(typed.split(" ")[-1].split("(")[-1])
            futures.append(analyst.submit("scope", "main.py", text, at))
        assert futures[1] is futures[0] and futures[2] is futures[0]
        assert {"client", "u", "make_client"} <= set(futures[0].result().names)
        text, offset = buffer("result = 1\n    ")
        assert analyst.submit("scope", "main.py", text, offset) is not futures[0]


def test_facts_a_parameter_is_required_where_it_has_no_default(tmp_path):
    root = write_tree(tmp_path / "p", {"m.py": (
        "from typing import Literal\n\n\n"
        "def f(a, b: int = 3, /, c: Literal['x=y'] = 'x=y', *args, d: dict[str, int], e=None, **kw):\n"
        "    pass\n\n\nf(")}, )
    text = (root / "m.py").read_text()
    (sig,) = analyse(root, root / "m.py", text, len(text), "args").signatures
    assert [(p.name, p.required) for p in sig.params] == [
        ("a", True), ("b", False), ("c", False), ("args", False), ("d", True), ("e", False), ("kw", False)]
    assert sig.missing(0, set()) == ("a", "d")
    assert sig.missing(1, {"d"}) == ()


def test_check_identifiers_finds_invented_members_and_keywords(project):
    line = "client.fetch(u, retries=1).upper() + client.invented(verbose=True) + unknown_name"
    text, offset = buffer(line)
    offset -= len(line)
    checked, invalid = check_identifiers(project, project / "main.py", text, offset, offset + len(line))
    assert sorted(invalid) == ["invented", "unknown_name"]  # `.upper()` of an unknown return type is not checked,
    assert checked == 7  # client, fetch, u, retries, client, invented, unknown_name (not `verbose=` of an unknown callee)
    line = "client.brand_new = client.url"  # an assignment defines the attribute: not checked
    text, offset = buffer(line)
    assert check_identifiers(project, project / "main.py", text, offset - len(line), offset) == (3, [])


def test_check_identifiers_takes_a_block_header_s_own_names_as_definitions(project):
    """A prediction that opens a block (`for x in xs:`, `def name():`) at the end of its statement: the names it
    defines are not reads, though the text after it (the rest of the file) gives the block no body."""
    for line, expected in (("for c in client.url:", (2, [])), ("def close_scope(timeout):", (0, [])),
                           ("with make_client(u) as other:", (2, [])), ("for c in missing_name:", (1, ["missing_name"])),
                           ("if client.invented:", (2, ["invented"]))):
        text, offset = buffer(line)
        text += "\n\ndef later():\n    return 1\n"  # dedented code follows, as in a real file
        assert check_identifiers(project, project / "main.py", text, offset - len(line), offset) == expected, line


# -- where monitors trigger ------------------------------------------------------------------------------------------


def site(text: str, start: int = 0):
    p = len(text)
    while p > 0 and (text[p - 1].isalnum() or text[p - 1] == "_"):
        p -= 1
    return site_at(text, scan(ScanState(line_start=start, pos=start), text, p))


def test_scanning_knows_the_strings_from_the_text_s_start():
    docstring = 'def f():\n    """Example:\n\n    x = obj.\n    """\n'
    text = docstring + "    if self.keywords:\n        x = self."
    assert site_at(text, scan_head(text, len(text))).kind == "deref"
    assert site(text, text.index("x = obj.")) is None  # from inside the docstring the quotes would be inverted
    inside = 'def g():\n    s = """\n    client.'
    assert site_at(inside, scan_head(inside, len(inside))) is None
    # code in a string (a source handed to `compile`) looks like top-level code: only the string's start tells
    code = 'if True:\n    source = """\nimport queue\nfrom x import y\n"""\n\n    def run(self):\n        self.q.'
    assert site_at(code, scan_head(code, len(code))).kind == "deref"
    # the head's scan is kept: the same head with another line after it is scanned from where it ends
    typed = code + "get()\n        client."
    assert site_at(typed, scan_head(typed, len(typed))).kind == "deref"
    assert site_at(inside + "x", scan_head(inside + "x", len(inside) + 1)) is None


def test_a_new_line_scans_on_from_the_kept_head_above(monkeypatch):
    import repocomplete.monitors as m

    monkeypatch.setattr(m, "_HEADS", m.OrderedDict())
    code = 'x = """\nimport os\n"""\n\ndef run(client):\n    '
    first = code + "total = client."
    m.scan_head(first, len(first))
    starts = []
    real = m.scan
    monkeypatch.setattr(m, "scan", lambda state, text, upto: starts.append(state.pos) or real(state, text, upto))
    second = code + "total = client.fetch()\n    other = client."  # Enter, and a line below
    state = m.scan_head(second, len(second))
    assert starts[0] == code.rindex("\n") + 1  # from the head kept for the line above, not from the start
    fresh = real(ScanState(), second, len(second))
    assert (state.quote, state.brackets, state.line_start) == (fresh.quote, fresh.brackets, fresh.line_start)
    assert site_at(second, state).kind == "deref"


@pytest.mark.parametrize("text, kind, partial", [
    ("x = client.", "deref", ""),
    ("x = client.fe", "deref", "fe"),
    ("x = self.items[0].", "deref", ""),
    ("    self.console.", "deref", ""),
    ("x = f(a).na", "deref", "na"),
    ("return ", "scope", ""),
    ("return cl", "scope", "cl"),
    ("x = a + ", "scope", ""),
    ("x = ", "scope", ""),
    ("y = [a, ", "scope", ""),
    ("for x in ", "scope", ""),
    ("f(a, ", "args", ""),
    ("f(a, ve", "args", "ve"),
    ("f(", "args", ""),
    ("from pkg.client import ", "imports", ""),
    ("from pkg.client import (Client, ", "imports", ""),
    ("import pkg.", "imports", ""),
    ("from pkg.", "imports", ""),
])
def test_sites(text, kind, partial):
    s = site(text)
    assert s is not None and (s.kind, s.partial) == (kind, partial)


def test_a_keyword_s_site_is_after_its_space_to_come():
    """The tokenizer writes `return` and then ` value` (the space and the name in one token): the name's site is
    after the space still to come, and a token glued to the keyword (`return` + `_code`) is free."""
    for text in ("return", "    x = a if", "y = not", "raise", "for x in", "f(a) or"):
        s = site(text)
        assert (s.kind, s.partial, s.start, s.skip_space, s.glued) == ("scope", "", len(text) + 1, True, True), text
    for text in ("if", "    while", "return_", "lambda x: x if", "x = 'return", "# return", "import"):
        assert site(text) is None, text
    assert site("obj.return").kind == "deref"
    assert not site("return ").glued  # the space is written: an ordinary site


@pytest.mark.parametrize("text", [
    "", "x", "client", "    na",  # statement starts: an assignment target may be defined
    "def f(", "def f(a, ", "class C(", "for ", "for a, ", "with open(f) as ", "lambda x: ", "x = lambda a: a + ",
    "y = [", "y = (", "y = {",  # the first element: a comprehension may bind it
    "if ", "while ",  # a walrus may define it
    "a, ", "global ", "import ", "del ",
    "x = 1.", "x = ...", "x = 'client.", "# client.", 'x = """\nclient.', "x = client. ",
    "from pkg.client import Client as ",
    "    self.", "    cls.na",  # `self.name = ...` may define the attribute
])
def test_places_that_define_or_are_not_code_stay_silent(text):
    assert site(text) is None


# -- what each monitor allows (a scripted analysis) -------------------------------------------------------------------


class FakeAnalyst:
    def __init__(self, facts: dict):
        self.facts_by_kind = facts
        self.asked = []

    def submit(self, kind, rel, text, offset):
        future = Future()
        future.set_result(self.facts(kind, rel, text, offset, None))
        return future

    def facts(self, kind, rel, text, offset, wait_s):
        self.asked.append((kind, text[:offset]))
        return self.facts_by_kind.get(kind, Facts(kind))


SCOPE = Facts("scope", ("Client", "client", "len", "make_client", "os", "u"))
FETCH = Facts("args", None, "fetch", (Signature("fetch", (Param("path", "POSITIONAL_OR_KEYWORD"),
                                                         Param("retries", "KEYWORD_ONLY"),
                                                         Param("verbose", "KEYWORD_ONLY"))),))


def constraint(kind: str, before: str, generated: str = "", facts: dict | None = None, suffix: str = "\n"):
    analyst = FakeAnalyst(facts or {"scope": SCOPE, "args": FETCH,
                                    "deref": Facts("deref", ("close", "fetch", "url"), "Client"),
                                    "imports": Facts("imports", ("Base", "Client"), "from pkg.client import")})
    session = Session(analyst, "main.py", before + suffix, len(before), ("deref", "scope", "args", "imports"), None)
    session.window_prefix_len = len(before)
    return session.constraint(kind, before, generated)


def test_deref_allows_the_receivers_members():
    c = constraint("deref", "    x = client.")
    assert (c.names, c.partial, c.free_other, c.what) == (("close", "fetch", "url"), "", False, "Client")
    c = constraint("deref", "    x = client", ".fe")  # the dot and part of the name generated
    assert (c.names, c.partial, c.start) == (("close", "fetch", "url"), "fe", len("    x = client."))
    assert constraint("deref", "    x = client", ".fetch(") is None  # the name is complete: free again
    assert constraint("deref", "    x = client.", facts={"scope": SCOPE}) is None  # unknown type: silent


def test_scope_allows_bound_names_keywords_and_names_already_written():
    c = constraint("scope", "    x = [y for y in client.items if ")
    assert set(c.names) == set(SCOPE.names) | {"False", "None", "True", "await", "lambda", "not", "yield",
                                               "x", "y", "for", "in", "client", "items", "if"}
    assert not c.skip_space  # the space is written: the name's own tokens follow
    assert constraint("scope", "    x =").skip_space  # `=` then a space-led token (` client`)
    assert constraint("scope", "    x = ", "le").partial == "le"
    assert constraint("scope", "    ") is None


def test_args_allows_unused_keywords_and_no_extra_positionals():
    before = "    client.fetch(u, "
    c = constraint("args", before)
    assert c.names == ("retries", "verbose")  # `path` was given by position: only keywords are left
    assert c.assign == ("retries", "verbose")  # ... written as keywords: `retries=`
    c = constraint("args", "    client.fetch(u, verbose=True, ")
    assert c.names == ("retries",)
    c = constraint("args", "    make_client(u, ", facts={"scope": SCOPE, "args": Facts("args", None, "make_client", (
        Signature("make_client", (Param("url", "POSITIONAL_OR_KEYWORD"), Param("secure", "POSITIONAL_OR_KEYWORD"))),))})
    assert set(c.names) >= {"secure", "client", "len"}  # a positional slot is left: names in scope too
    assert c.assign == ("secure",)  # no name `secure` is bound: it is the keyword, `secure=`
    assert "url" not in c.names  # given by position
    assert constraint("args", "    client.fetch(") is None  # the first argument may be a generator expression
    assert constraint("args", "    client.fetch(*paths, ") is None  # unpacking: the count is unknown
    kwargs = {"scope": SCOPE, "args": Facts("args", None, "anything", (
        Signature("anything", (Param("options", "VAR_KEYWORD"),)),))}
    assert constraint("args", "    anything(a=1, ", facts=kwargs) is None  # **options: any keyword


def test_args_is_silent_where_the_signatures_do_not_describe_the_call():
    func = Signature("lru_cache", (Param("func", "POSITIONAL_ONLY"),))
    # jedi lists two of lru_cache's overloads, not the keyword-only one (`maxsize`, `typed`): no `typed` refused
    overloads = {"scope": SCOPE, "args": Facts("args", None, "lru_cache", (func, func))}
    assert constraint("args", "    lru_cache(maxsize=None, ", facts=overloads) is None
    one = {"scope": SCOPE, "args": Facts("args", None, "lru_cache", (func,))}
    assert constraint("args", "    lru_cache(maxsize=None, ", facts=one) is None  # `maxsize` is none of its keywords
    assert constraint("args", "    client.fetch(u, v, ") is None  # fetch takes one argument by position
    assert constraint("args", "    client.fetch(u, ").names == ("retries", "verbose")


RUN_SYNC = {"scope": SCOPE, "args": Facts("args", None, "run_sync", (Signature("run_sync", (
    Param("func", "POSITIONAL_OR_KEYWORD", required=True), Param("args", "VAR_POSITIONAL"),
    Param("limiter", "KEYWORD_ONLY"))),))}


def missing(before: str, generated: str = "", facts: dict | None = None) -> Constraint | None:
    analyst = FakeAnalyst(facts or RUN_SYNC)
    session = Session(analyst, "main.py", before + "\n", len(before), ("args",), None)
    session.window_prefix_len = len(before)
    return session.missing_argument(before, generated)


def test_a_call_is_not_closed_while_a_required_parameter_is_missing():
    c = missing("    await to_thread.run_sync", "(")
    assert (c.monitor, c.start, c.what) == ("args", len("    await to_thread.run_sync("), "`run_sync` needs `func`")
    assert missing("    await to_thread.run_sync(").start == c.start
    assert missing("    run_sync(limiter=lim").what == "`run_sync` needs `func`"  # a keyword is not the positional
    assert missing("    run_sync(f") is None  # the argument being written passes `func`
    assert missing("    run_sync(func=f, limiter=lim") is None
    assert missing("    run_sync(g(x), ") is None
    assert missing("    run_sync(*calls") is None  # unpacking: the count is unknown
    assert missing("    run_sync(other=1") is None  # a keyword it does not take: not this call's signature
    assert missing("def run_sync(") is None  # parameters, not arguments
    assert missing("    x = (") is None and missing("    x = [") is None  # no call
    assert missing("    s = 'run_sync(") is None  # in a string
    assert missing("    run_sync(", facts={"scope": SCOPE}) is None  # unknown signature: silent
    two = Facts("args", None, "run_sync", RUN_SYNC["args"].signatures * 2)
    assert missing("    run_sync(", facts={"scope": SCOPE, "args": two}) is None  # overloads: jedi lists only some
    free = Facts("args", None, "close", (Signature("close", (Param("timeout", "POSITIONAL_OR_KEYWORD"),)),))
    assert missing("    client.close(", facts={"scope": SCOPE, "args": free}) is None


def test_the_guide_refuses_an_empty_call_or_a_close_while_an_argument_is_missing(vocab):
    from repocomplete.monitors import python_monitors

    before = "    await to_thread.run_sync"
    monitors = python_monitors(FakeAnalyst(RUN_SYNC), "main.py", before + "\n", len(before), ("scope", "args"), None)
    for m in monitors:
        m.session.window_prefix_len = len(before)
    token, guide = step_all(vocab, {"()": 6.0, "(": 3.0, "\n": 1.0}, monitors, before, "")
    assert token == "("
    (span,) = guide.spans.values()
    assert (span.monitor, span.redirected, span.what) == ("args", True, "`run_sync` needs `func`")
    token, _ = step_all(vocab, {")": 6.0, "self": 3.0}, monitors, before, "(")
    assert token == "self"
    token, guide = step_all(vocab, {"()": 6.0, "self": 3.0}, monitors, before, "(")  # an empty tuple: the same
    assert token == "self"
    # showContext lists the span even where no name follows (`run_sync("x")`)
    assert [(e["monitor"], e["start"], e["text"], e["what"], e["redirected"]) for e in guide.report('("x")', "")] == [
        ("args", 1, "", "`run_sync` needs `func`", True)]
    token, _ = step_all(vocab, {")": 6.0, "self": 3.0}, monitors, before, "(f")
    assert token == ")"  # `func` is passed
    # a single-line completion that would end after the `(` (the closing rule would write `)`): the end is refused
    ids = {t: i for i, t in enumerate(vocab.texts) if t}
    ends = torch.tensor([ids["\n"]])
    token, _ = step_all(vocab, {"\n": 6.0, ")": 5.0, "self": 3.0}, monitors, before, "(", ends=ends)
    assert token == "self"
    token, _ = step_all(vocab, {"\n": 6.0, "self": 3.0}, monitors, before, "(f", ends=ends)
    assert token == "\n"
    token, _ = step_all(vocab, {"\n": 6.0, "self": 3.0}, monitors, before, "(")  # multi-line: a line break is no end
    assert token == "\n"
    # where the signature needs nothing, an empty call stays the model's
    free = {"scope": SCOPE, "args": Facts("args", None, "close", (Signature("close", ()),))}
    monitors = python_monitors(FakeAnalyst(free), "main.py", "    client.close\n", 16, ("args",), None)
    monitors[0].session.window_prefix_len = 16
    assert step_all(vocab, {"()": 6.0, "(": 3.0}, monitors, "    client.close", "")[0] == "()"


def misplaced(before: str, generated: str = "", facts: dict | None = None) -> Constraint | None:
    analyst = FakeAnalyst(facts or {"scope": SCOPE, "args": FETCH})
    session = Session(analyst, "main.py", before + "\n", len(before), ("args",), None)
    session.window_prefix_len = len(before)
    return session.misplaced_keyword(before, generated)


def test_a_name_that_starts_an_argument_is_followed_by_an_equals_sign_only_if_it_is_a_keyword():
    c = misplaced("    client.fetch(", "client")
    assert (c.monitor, c.names, c.start, c.what) == ("args", (), len("    client.fetch("), "`fetch` takes no `client=`")
    assert misplaced("    client.fetch(u, client ").what == "`fetch` takes no `client=`"  # after a comma, spaces
    assert misplaced("    client.fetch(", "retries") is None  # its keyword
    assert misplaced("    client.fetch(path") is None  # a positional-or-keyword parameter is a keyword too
    assert misplaced("    client.fetch(u.timeout") is None  # a member is no keyword argument
    analyst = FakeAnalyst({"scope": SCOPE, "args": FETCH})  # the inner call's argument: its facts are asked
    session = Session(analyst, "main.py", "    client.fetch(len(client\n", 27, ("args",), None)
    session.window_prefix_len = 27
    assert session.misplaced_keyword("    client.fetch(len(client", "") is not None
    assert analyst.asked[-1] == ("args", "    client.fetch(len(")
    assert misplaced("    client.fetch(u + client") is None  # not where an argument starts
    assert misplaced("    x = (client") is None and misplaced("    client") is None  # no call
    assert misplaced("    s = 'client.fetch(client") is None  # in a string
    assert misplaced("def fetch(client") is None  # parameters, not arguments
    assert misplaced("    client.fetch(", "client", facts={"scope": SCOPE}) is None  # unknown signature: silent
    kwargs = {"scope": SCOPE, "args": Facts("args", None, "anything", (
        Signature("anything", (Param("options", "VAR_KEYWORD"),)),))}
    assert misplaced("    anything(client", facts=kwargs) is None  # **options: any keyword
    two = {"scope": SCOPE, "args": Facts("args", None, "fetch", FETCH.signatures * 2)}
    assert misplaced("    client.fetch(client", facts=two) is None  # overloads: jedi lists only some
    assert misplaced("    client.fetch(other=1, client") is None  # a keyword it does not take: not its signature
    assert misplaced("    client.fetch(*paths, client") is None  # unpacking


def test_the_guide_refuses_the_equals_sign_that_would_make_a_name_a_keyword_the_call_does_not_take(vocab):
    from repocomplete.monitors import python_monitors

    before = "    client.fetch("
    monitors = python_monitors(FakeAnalyst({"scope": SCOPE, "args": FETCH}), "main.py", before + "\n", len(before),
                               ("scope", "args"), None)
    for m in monitors:
        m.session.window_prefix_len = len(before)
    token, guide = step_all(vocab, {"=": 6.0, "_": 5.0, ")": 3.0, " =": 2.0}, monitors, before, "client")
    assert token == ")"  # neither `=` nor more of the name (`client_...`, another name)
    (span,) = guide.spans.values()
    assert (span.monitor, span.redirected, span.what) == ("args", True, "`fetch` takes no `client=`")
    assert [(e["start"], e["text"]) for e in guide.report("client)", "")] == [(0, "client")]
    # after a comma the args monitor constrains the name itself; where it yielded it (the model insisted on a name
    # it does not allow), the keyword rule yields too: the same span
    guide = Guide(monitors, NameMask.for_vocab(vocab), before)
    ids = {t: i for i, t in enumerate(vocab.texts) if t}
    logits = torch.full((len(vocab.texts),), -8.0)
    logits[ids[" margin"]] = 12.0
    assert vocab.texts[int(torch.argmax(guide.apply(logits.clone(), "u,")))] == " margin"
    [(key, span)] = guide.spans.items()
    assert key == ("args", len(before) + 2) and span.yielded  # the name the model insists on
    logits = torch.full((len(vocab.texts),), -8.0)
    logits[ids["="]], logits[ids[")"]] = 6.0, 3.0
    assert vocab.texts[int(torch.argmax(guide.apply(logits, "u, margin")))] == "="
    # one span at the name's start, the args monitor's (yielded), which the keyword rule shares
    assert set(guide.spans) == {key, ("args", len(before) + 3)} and all(s.yielded for s in guide.spans.values())
    assert step_all(vocab, {"=": 6.0, ")": 3.0}, monitors, before, "retries")[0] == "="  # its keyword
    assert step_all(vocab, {"==": 6.0, ")": 3.0}, monitors, before, "client")[0] == "=="  # a comparison
    # the model sure of its `=` (the other tokens under MIN_SWAP_MASS): the monitor yields
    token, guide = step_all(vocab, {"=": 12.0, ")": 3.0}, monitors, before, "client")
    assert token == "=" and [s.yielded for s in guide.spans.values()] == ["the allowed names are a guess"]


def test_the_keyword_rule_judges_the_token_the_arity_rule_leaves(vocab):
    """rich's `ConsoleOptions(options` then `))`: the arity rule refuses the close (required parameters are
    missing), and the model's next choice, `=`, would make `options` a keyword the dataclass does not take."""
    params = tuple(Param(name, "POSITIONAL_OR_KEYWORD", required=True) for name in ("host", "port"))
    before = "    connect("
    monitors = guided({"scope": SCOPE, "args": Facts("args", None, "connect", (Signature("connect", params),))},
                      before, ("scope", "args"))
    # The model would close the call, then make `options` a keyword: it has no argument to give for `port` (left
    # alone, rich's went on `options.max_width, options.max_height, ...` to the token limit). The arity rule yields,
    # the keyword rule stands: the close is the model's.
    token, guide = step_all(vocab, {")": 6.0, "=": 5.0, ",": 4.0}, monitors, before, "options")
    assert token == ")"
    assert sorted((s.what, s.yielded) for s in guide.spans.values()) == [
        ("`connect` needs `port`", "no argument the model would write"), ("`connect` takes no `options=`", "")]
    assert step_all(vocab, {")": 6.0, ",": 5.0, "=": 4.0}, monitors, before, "options")[0] == ","  # an argument
    assert step_all(vocab, {")": 6.0, "=": 5.0, ",": 4.0}, monitors, before, "host")[0] == "="  # its keyword
    assert step_all(vocab, {"=": 6.0, ",": 5.0, ")": 4.0}, monitors, before, "options")[0] == ","  # (as before)


CLOSE = Facts("args", None, "close", (Signature("close", ()),))


def test_a_call_that_takes_no_more_arguments_is_only_closed():
    """anyio's `await self.aclose(` went on `exc_type=exc_type)`, `self.receive_stream.receive(` went on
    `self.send_stream.extra_attributes)`: where the call's one signature has no parameter left, no argument may
    start, a keyword's name or an expression alike."""
    c = constraint("args", "    client.close(", facts={"scope": SCOPE, "args": CLOSE})
    assert (c.names, c.close, c.skip_space, c.what) == ((), True, True, "`close` takes no arguments")
    c = constraint("args", "    client.fetch(u, retries=2, verbose=True, ")
    assert (c.names, c.close, c.what) == ((), True, "`fetch` takes no more arguments")
    assert constraint("args", "    client.close(x", facts={"scope": SCOPE, "args": CLOSE}) is None  # the user's
    assert constraint("args", "    client.fetch(u, retries=2, ").close is False  # `verbose` is left
    made = Facts("args", None, "Point", (Signature("Point", (), "class"),))  # attrs' `@attr.s`: jedi sees no init
    assert constraint("args", "    Point(", facts={"scope": SCOPE, "args": made}) is None
    star = Facts("args", None, "run", (Signature("run", (Param("args", "VAR_POSITIONAL"),)),))
    assert constraint("args", "    run(a, ", facts={"scope": SCOPE, "args": star}).close is False  # `*args`: any


def test_the_guide_closes_a_call_that_takes_no_arguments(vocab):
    before = "        await self.aclose("
    monitors = guided({"scope": SCOPE, "args": CLOSE}, before, ("scope", "args"))
    token, guide = step_all(vocab, {"exc": 6.0, "0": 5.0, ")": 3.0, "):": 2.0}, monitors, before, "")
    assert token == ")"  # neither a name nor a number: the close, not a free token in the name's place
    (span,) = guide.spans.values()
    assert (span.monitor, span.redirected, span.what) == ("args", True, "`close` takes no arguments")
    assert step_all(vocab, {"exc": 6.0, "\n": 5.0, ")": 3.0}, monitors, before, "")[0] == "\n"  # over lines
    assert step_all(vocab, {")": 6.0, "exc": 5.0}, monitors, before, "")[0] == ")"  # the model's own close
    # the model sure of its argument (the close under MIN_SWAP_MASS): the monitor yields (jedi may not know the
    # callee's real signature: a metaclass's `__call__`)
    token, guide = step_all(vocab, {"exc": 14.0, ")": 2.0}, monitors, before, "")
    assert token == "exc" and [s.yielded for s in guide.spans.values()] == ["the allowed names are a guess"]


def test_a_call_closed_by_the_mask_ends_a_single_line_completion(vocab):
    """anyio's `aclose(`, closed where the model meant `exc_type=exc_type)`, went on `).close()`: after a close the
    model did not choose, a single-line completion (the closing rule's end tokens given) ends."""
    before = "        await self.aclose("
    monitors = guided({"scope": SCOPE, "args": CLOSE}, before, ("scope", "args"))
    ids = {t: i for i, t in enumerate(vocab.texts) if t}
    ends = torch.tensor([ids["\n"]])
    # the model's end is allowed: the closing rule makes it the close
    assert step_all(vocab, {"exc": 6.0, "\n": 5.0, ")": 3.0}, monitors, before, "", ends=ends)[0] == "\n"

    def steps(first: dict, ends=None) -> list[str]:
        """The tokens of two steps: `first`'s preferences, then `.` over a line break after the `)`."""
        guide = Guide(monitors, NameMask.for_vocab(vocab), before, ends=ends)
        out, generated = [], ""
        for prefs in (first, {".": 6.0, "\n": 1.0}, {".": 6.0, "\n": 1.0}):
            logits = torch.full((len(vocab.texts),), -8.0)
            for t, score in prefs.items():
                logits[ids[t]] = score
            out.append(vocab.texts[int(torch.argmax(guide.apply(logits, generated)))])
            generated = ")"
        return out

    assert steps({"exc": 6.0, ")": 3.0}, ends) == [")", "\n", "."]  # the close was the mask's: it ends (once)
    assert steps({")": 6.0, "exc": 3.0}, ends) == [")", ".", "."]  # the model's own close goes on as it likes
    assert steps({"exc": 6.0, ")": 3.0}) == [")", ".", "."]  # no end tokens (multi-line, or the line goes on)

def unbound(before: str, generated: str, token: str, scope: Facts = SCOPE):
    session = Session(FakeAnalyst({"scope": scope}), "main.py", before + "\n", len(before), ("scope",), None)
    session.window_prefix_len = len(before)
    return session.unbound_receiver(before, generated, token)


def test_self_and_cls_are_refused_where_nothing_binds_them():
    """rich's `Color.default(cls)` wrote `ColorTriplet(int(self.type...`: a call's first argument, where the scope
    monitor is silent (a generator expression may bind a new name there, never `self`)."""
    c = unbound("    return cls.make(int(", "", "self")
    assert (c.monitor, c.names, c.partial, c.start, c.skip_space, c.refuse, c.what) == (
        "scope", ("self",), "", len("    return cls.make(int("), True, True, "`self` is not bound here")
    assert unbound("    return cls.make(int(", "", " self").names == ("self",)  # with its space
    assert unbound("    return cls.make(int(", "se", "lf.").partial == "se"  # the rest of it
    assert unbound("    ", "", "self").names == ("self",)  # a statement's start (an assignment target elsewhere)
    assert unbound("    x = f(", "", "cls").names == ("cls",)
    bound = Facts("scope", ("cls", "self"))
    assert unbound("    return f(", "", "self", bound) is None  # a method's `self`
    assert unbound("    return f(", "", "self", Facts("scope")) is None  # the scope unknown: silent
    assert unbound("    return f(", "", "selfish") is None and unbound("    return f(", "", "se") is None
    assert unbound("    return f(x.", "", "self") is None  # a member
    assert unbound("    s = '", "", "self") is None and unbound("    # ", "", "self") is None
    assert unbound("    def g(", "", "self") is None and unbound("    f = lambda ", "", "self") is None  # parameters
    assert unbound("    return f(", "", "self") is not None
    assert unbound("    return f(se", "", "lf") is None  # the user began it
    assert unbound("    ", "def g(self):\n        return f(", "self") is None  # the completion bound it


def test_the_guide_refuses_an_unbound_self_and_keeps_the_rest(vocab):
    before = "        return cls.make(int("
    monitors = guided({"scope": SCOPE}, before, ("scope",))
    token, guide = step_all(vocab, {"self": 6.0, "cls": 5.0, "u": 2.0}, monitors, before, "")
    assert token == "u"  # `cls` is not bound in this scope either
    token, guide = step_all(vocab, {"self": 6.0, "u": 5.0}, monitors, before, "")
    (span,) = guide.spans.values()
    assert token == "u" and (span.monitor, span.redirected, span.what) == ("scope", True, "`self` is not bound here")
    assert step_all(vocab, {"lf": 6.0, "lect": 5.0}, monitors, before, "se")[0] == "lect"  # `select`: any other name
    assert step_all(vocab, {"x": 6.0, "self": 5.0}, monitors, before, "")[0] == "x"  # not asked: the model's own
    assert step_all(vocab, {"self": 6.0, ")": 5.0}, monitors, before, "")[0] == ")"  # in its place: not a name
    # the model sure of `self` (the rest under MIN_SWAP_MASS): the monitor yields
    token, guide = step_all(vocab, {"self": 14.0, "u": 2.0}, monitors, before, "")
    assert token == "self" and [s.yielded for s in guide.spans.values()] == ["the allowed names are a guess"]


def guided(facts: dict, before: str, kinds: tuple[str, ...]) -> list:
    """The monitors of a completion at the end of `before` (the analysis answering `facts`)."""
    from repocomplete.monitors import python_monitors

    monitors = python_monitors(FakeAnalyst(facts), "main.py", before + "\n", len(before), kinds, None)
    for m in monitors:
        m.session.window_prefix_len = len(before)
    return monitors


def step_all(vocab, prefs, monitors, before, generated, ends=None):
    ids = {t: i for i, t in enumerate(vocab.texts) if t}
    logits = torch.full((len(vocab.texts),), -8.0)
    for t, score in prefs.items():
        logits[ids[t]] = score
    guide = Guide(monitors, NameMask.for_vocab(vocab), before, ends=ends)
    return vocab.texts[int(torch.argmax(guide.apply(logits, generated)))], guide


def test_imports_allows_the_modules_names():
    c = constraint("imports", "from pkg.client import ")
    assert (c.names, c.free_other) == (("Base", "Client"), True)


def test_parse_monitors():
    assert parse_monitors("all") == ("deref", "scope", "args", "imports")
    assert parse_monitors("none") == () and parse_monitors(None) == ()
    assert parse_monitors("args, deref") == ("args", "deref")
    assert monitors_text(("deref", "scope", "args", "imports")) == "all" and monitors_text(()) == "none"
    with pytest.raises(ValueError, match="unknown monitors bogus"):
        parse_monitors("deref,bogus")


# -- the token mask over the real tokenizer -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vocab(tokenizer):
    return VocabIndex(tokenizer)


def _word(c):
    return c.isalnum() or c == "_"


def expected(texts, c: Constraint) -> set[int]:
    """The rule, written out token by token."""
    names = set(c.names)
    out = set()
    for i, t in enumerate(texts):
        s = t
        if not c.partial and c.skip_space:
            s = t.lstrip(" ")
        if not c.partial and (not s or not _word(s[0]) or s[0].isdigit()):
            if c.free_other:
                out.add(i)
            continue
        k = 0
        while k < len(s) and _word(s[k]):
            k += 1
        word = c.partial + s[:k]
        if k == len(s):
            if any(n.startswith(word) for n in names) and (s or word in names):
                out.add(i)
        elif word in names:
            out.add(i)
    return out


@pytest.mark.parametrize("c", [
    Constraint(("fetch", "fetch_all", "close"), "", 0, free_other=False),
    Constraint(("fetch", "fetch_all", "close"), "fe", 0),
    Constraint(("get", "get_item", "getattr"), "get", 0),  # a name that is a prefix of others
    Constraint(("client", "len", "None", "x2"), "", 0, skip_space=True),
    Constraint(("client", "len", "None", "x2"), "x", 0),  # a digit continues a name
])
def test_mask_is_the_rule_over_the_whole_vocabulary(vocab, c):
    mask = NameMask(vocab.texts).allowed(tuple_sorted(c))
    assert set(mask.nonzero().flatten().tolist()) == expected(vocab.texts, c)


def tuple_sorted(c: Constraint) -> Constraint:
    return Constraint(tuple(sorted(c.names)), c.partial, c.start, skip_space=c.skip_space, free_other=c.free_other)


def test_mask_after_a_keyword_allows_spaced_names_and_tokens_glued_to_the_keyword(vocab):
    names = NameMask.for_vocab(vocab)
    index = {t: i for i, t in enumerate(vocab.texts)}
    after_return = Constraint(("Client", "value"), "", 0, "scope", skip_space=True, free_glued=True)
    allowed = names.allowed(after_return)
    for text, ok in ((" value", True), (" Client", True), (" (", True), ("(", True), ("_", True), (" Current", False),
                     (" x", False)):
        assert bool(allowed[index[text]]) is ok, text
    assert not names.allowed(replace(after_return, free_glued=False))[index["_"]]


def test_mask_a_keyword_s_name_goes_on_with_its_equals_sign(vocab):
    names = NameMask.for_vocab(vocab)
    index = {t: i for i, t in enumerate(vocab.texts)}
    # `fill(self, link)`: `link` is no name in scope, so written whole it is the keyword and `=` follows
    c = Constraint(("link", "self", "size"), "link", 0, "args", skip_space=True, assign=("link",))
    allowed = names.allowed(c)
    assert [t for t in ("=", " =", "==", ")", ",", "(") if allowed[index[t]]] == ["=", " ="]
    assert allowed[index[")"]] != names.allowed(replace(c, assign=()))[index[")"]]  # a name in scope ends freely
    # on the way to the name nothing changes
    start = names.allowed(replace(c, partial=""))
    assert start[index[" link"]] and start[index[" self"]]


def test_mask_on_tokens_that_merge_dots_spaces_and_name_pieces(vocab, tokenizer):
    texts = vocab.texts
    ids = {t: i for i, t in enumerate(texts) if t}
    mask = NameMask(texts)
    after_dot = mask.allowed(Constraint(("fetch", "fetch_all"), "", 0, free_other=False))
    assert after_dot[ids["fetch"]] and not after_dot[ids[" fetch"]] and not after_dot[ids["."]]
    assert not after_dot[ids["("]] and not after_dot[ids["get"]]
    spaced = mask.allowed(Constraint(("fetch",), "", 0, skip_space=True))
    assert spaced[ids[" fetch"]] and spaced[ids[" "]] and spaced[ids["("]] and not spaced[ids[" get"]]
    done = mask.allowed(Constraint(("fetch", "fetch_all"), "fetch", 0))
    assert done[ids["("]] and done[ids["_"]] and done[ids["()"]] and not done[ids["er"]]
    # a token that completes a name and goes on (`__(`): allowed only where the name is complete before the `(`
    dunder = mask.allowed(Constraint(("__init__", "__init_subclass__"), "__init", 0))
    assert dunder[ids["__("]] and dunder[ids["_"]] and dunder[ids["__"]] and not dunder[ids["_("]]
    assert not dunder[ids["("]]  # `__init` is no name


# -- the engine: healing, yielding, a tiny model ---------------------------------------------------------------------


class Fixed:
    """A monitor that constrains the identifier at the end of before+generated once it starts at `at`."""

    def __init__(self, names, at: int, name="deref", free_other=False):
        self.names, self.at, self.name, self.free_other = tuple(sorted(names)), at, name, free_other

    def constraint(self, before, generated):
        text = before + generated
        if len(text) < self.at:
            return None
        partial = text[self.at:]
        if not all(_word(ch) for ch in partial):
            return None
        return Constraint(self.names, partial, self.at, self.name, free_other=self.free_other)


def test_monitor_forces_a_valid_member_and_combines_with_healing(tiny_loaded, tiny_config):
    engine = Engine(tiny_loaded, tiny_config.replace(token_healing=True, max_new_tokens=8))
    prefix = "client = Client()\nclient.fe"
    names = ["fetch_remote_configuration"]
    at = len("client = Client()\nclient.")
    result = engine.complete(CompletionRequest(PromptParts(prefix), monitors=[Fixed(names, at)]))
    assert result.healed  # healing backed off part of `.fe`, the monitor saw it regenerated
    assert "fetch_remote_configuration".startswith("fe" + result.text) and len(result.text) > 4
    assert result.monitor_spans and result.monitor_spans[0]["monitor"] == "deref"
    assert not result.monitor_spans[0]["yielded"]


def test_no_token_left_yields_instead_of_an_empty_completion(tiny_loaded, tiny_config):
    engine = Engine(tiny_loaded, tiny_config.replace(token_healing=True, max_new_tokens=6))
    prefix = "client = Client()\nclient.fe"
    plain = engine.complete(CompletionRequest(PromptParts(prefix)))
    at = len("client = Client()\nclient.")
    result = engine.complete(CompletionRequest(PromptParts(prefix), monitors=[Fixed(["close"], at)]))
    assert result.raw_text == plain.raw_text  # healing wants `fe`, the monitor `close`: it yields
    assert result.monitor_spans[0]["yielded"] == "no token left"


class Ahead(Fixed):
    """Fixed, recording the texts the engine tells it ahead of their steps, and the steps' texts."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.told, self.asked = [], []

    def ahead(self, before, generated):
        self.told.append(generated)

    def constraint(self, before, generated):
        self.asked.append(generated)
        return super().constraint(before, generated)


def test_each_step_s_text_is_told_ahead_before_the_model_runs_it(tiny_loaded, tiny_config):
    engine = Engine(tiny_loaded, tiny_config.replace(token_healing=False, max_new_tokens=5, speculative_tokens=0))
    monitor = Ahead([], 10**6)
    result = engine.complete(CompletionRequest(PromptParts("client = Client()\nclient."), monitors=[monitor]))
    assert result.generated_tokens >= 2
    # every step after the first was told its text ahead (the first is the prompt's: its analysis was prefetched;
    # the last token, which ended the completion, tells nothing)
    assert monitor.asked[0] == "" and monitor.told == monitor.asked[1:]


class Submits(FakeAnalyst):
    def __init__(self, facts):
        super().__init__(facts)
        self.submitted = []

    def submit(self, kind, rel, text, offset):
        self.submitted.append((kind, text[:offset]))
        return super().submit(kind, rel, text, offset)


def test_the_analysis_of_a_site_the_model_just_wrote_is_submitted_ahead():
    """`client.` written by the model: the question for its members goes to the worker before the model's next
    step, once, and the step asks the same question (the worker's cache answers it)."""
    from repocomplete.monitors import python_monitors

    before = "    x = client"
    analyst = Submits({"scope": SCOPE, "args": FETCH, "deref": Facts("deref", ("close", "fetch"), "Client")})
    monitors = python_monitors(analyst, "main.py", before + "\n", len(before), ("deref", "scope", "args"), None)
    for m in monitors:
        m.session.window_prefix_len = len(before)
    analyst.submitted.clear()  # (the cursor's own analysis, prefetched)
    for m in monitors:  # every monitor is told; the session submits once
        m.ahead(before, ".")
    assert analyst.submitted == [("deref", "    x = client.")]
    assert monitors[0].constraint(before, ".").names == ("close", "fetch")
    assert analyst.asked[-1] == ("deref", "    x = client.")  # the same question
    monitors[0].ahead(before, ".f")  # the same site: asked and answered, not submitted again
    monitors[0].ahead(before, ".fetch(")  # a call: its signature
    monitors[0].ahead(before, ".fetch(u, ")  # the same call's
    monitors[0].ahead(before, ".fetch(u, v")  # not a site
    assert analyst.submitted[1:] == [("args", "    x = client.fetch(")]


@pytest.fixture
def random_weights(monkeypatch):
    """A random model gives every name next to no weight: no swap would pass the guess rule (MIN_SWAP_MASS)."""
    monkeypatch.setattr("repocomplete.model_runtime.monitor.MIN_SWAP_MASS", 0.0)


def test_sampling_under_a_mask_never_sees_nan(tiny_loaded, tiny_config, random_weights):
    engine = Engine(tiny_loaded, tiny_config.replace(temperature=1.0, top_p=0.9, top_k=40, seed=1, max_new_tokens=6,
                                                      token_healing=False))
    result = engine.complete(CompletionRequest(PromptParts("client."), monitors=[Fixed(["url_for_the_request"], 7)]))
    word = leading_word(result.raw_text)
    assert word and "url_for_the_request".startswith(word)
    assert word == "url_for_the_request" or len(word) == len(result.raw_text)  # cut by max tokens only


def leading_word(text: str) -> str:
    word = ""
    for ch in text:
        if not _word(ch):
            break
        word += ch
    return word


def test_remote_backend_says_monitors_need_a_local_model():
    from repocomplete.model_runtime.remote import RemoteEngine

    with pytest.raises(ConfigError, match="monitors need a local model"):
        RuntimeConfig(endpoint="http://127.0.0.1:9", monitors=("deref",)).validate()
    remote = RemoteEngine(RuntimeConfig(endpoint="http://127.0.0.1:9"))
    with pytest.raises(RemoteError, match="monitors need a local model"):
        remote.complete(CompletionRequest(PromptParts("x."), monitors=[Fixed(["a"], 2)]))
    completer = Completer(remote, ContextConfig())
    with pytest.raises(InputError, match="monitors need a local model"):
        completer.monitor_kinds(CompletionOptions(monitors=("deref",)))
    assert completer.monitor_kinds(CompletionOptions()) == ()


def test_lsp_setting(tmp_path):
    settings, problems = apply(Settings(), {"monitors": "deref,bogus"})
    assert problems and "unknown monitors bogus" in problems[0]
    settings, problems = apply(Settings(), {"monitors": "deref, args"})
    assert not problems and settings.monitors == "deref,args"
    effective = resolve(RuntimeConfig(), ContextConfig(index_dir=tmp_path), settings)
    assert effective.options.monitors == ("deref", "args")
    context = ContextConfig(index_dir=tmp_path)
    # unset, or "auto" (VS Code's default, which it sends): every monitor with a local model, none with an endpoint
    auto, problems = apply(settings, {"monitors": "auto"})
    assert not problems and auto.monitors is None
    for s in (Settings(), auto):
        assert resolve(RuntimeConfig(), context, s).options.monitors == ("deref", "scope", "args", "imports")
        remote = resolve(RuntimeConfig(), context, s.replace(endpoint="http://127.0.0.1:1"))
        assert remote.options.monitors == () and remote.settings.monitors == "none"
        # the command line's, where it asked
        assert resolve(RuntimeConfig(monitors=("args",)), context, s).options.monitors == ("args",)
    assert resolve(RuntimeConfig(), context, Settings(monitors="none")).options.monitors == ()


def test_monitors_are_on_by_default_with_a_local_model_only():
    assert RuntimeConfig().active_monitors == ("deref", "scope", "args", "imports")
    assert RuntimeConfig(endpoint="http://127.0.0.1:1").active_monitors == ()
    RuntimeConfig(endpoint="http://127.0.0.1:1").validate()  # the default is no error with an endpoint
    with pytest.raises(ConfigError, match="monitors need a local model"):
        RuntimeConfig(endpoint="http://127.0.0.1:1", monitors=("deref",)).validate()
    assert parse_monitors("auto") is None and monitors_text(None) == "auto"
    assert "--monitors" not in RuntimeConfig().to_argv()
    argv = RuntimeConfig(monitors=()).to_argv()
    assert argv[argv.index("--monitors") + 1] == "none"


# -- the whole pipeline: jedi's answer steers a tiny random model ---------------------------------------------------


@pytest.fixture
def completer(tiny_loaded, tiny_config, tmp_path):
    # (no decoding time limit: the first question of a loaded machine's analysis may take seconds, and is waited for)
    engine = Engine(tiny_loaded, tiny_config.replace(token_healing=True, max_new_tokens=6, time_budget_s=120.0))
    completer = Completer(engine, ContextConfig(index_dir=tmp_path / "index", jedi_cache_dir=tmp_path / "jedi",
                                                monitor_wait_ms=None, slow_provider_deadline_ms=None,
                                                slow_provider_budget_ms=None))  # a loaded machine: jedi may be slow
    yield completer
    completer.close()


def test_pipeline_forces_a_member_of_the_inferred_type_and_leaves_unknown_receivers_alone(completer, project,
                                                                                          random_weights):
    path = str(project / "main.py")
    text, offset = buffer("client.")
    on = completer.complete(path, text, offset, CompletionOptions(context="infile", monitors=("deref",)))
    assert on.completion.healed == "."  # healing backed off the dot: the model re-writes it, then the member
    word = leading_word(on.completion.raw_text[1:])
    members = analyse(project, project / "main.py", text, offset, "deref").names
    assert word and any(m.startswith(word) for m in members), on.completion.raw_text
    assert on.completion.monitor_spans[0]["what"] == "Client"
    text, offset = buffer("u.")
    off = completer.complete(path, text, offset, CompletionOptions(context="infile", monitors=()))
    unknown = completer.complete(path, text, offset, CompletionOptions(context="infile", monitors=("deref",)))
    assert unknown.completion.raw_text == off.completion.raw_text
    assert unknown.completion.monitor_spans == []


def test_analysis_root_given_beats_the_files_repository(completer, project):
    inner = project / "pkg"
    analyst, rel = completer._analyst(str(inner / "client.py"), None)
    assert (analyst.root, rel) == (project.resolve(), "pkg/client.py")  # the repository (.git)
    completer.add_analysis_root(inner)
    analyst, rel = completer._analyst(str(inner / "client.py"), None)
    assert (analyst.root, rel) == (inner.resolve(), "client.py")
    completer.close_workspace(inner)  # and its jedi worker goes with it
    assert inner.resolve() not in completer._analysts


def test_a_one_shot_command_starts_the_analysis_before_the_model_loads(tiny_loaded, tiny_config, project, tmp_path):
    completer = Completer(None, ContextConfig(index_dir=tmp_path / "index"))  # no model yet
    try:
        text, offset = buffer("client.")
        completer.prefetch_analysis(str(project / "README.md"), text, offset, MONITOR_KINDS)  # not Python: nothing
        completer.prefetch_analysis(str(project / "main.py"), text, offset, ())  # monitors off: nothing
        assert not completer._analysts
        completer.prefetch_analysis(str(project / "main.py"), text, offset, MONITOR_KINDS)
        (analyst,) = completer._analysts.values()
        asked = sorted(kind for kind, *_ in analyst._results)
        assert asked == ["deref", "scope"]  # the receiver's members and the names in scope, cached for the request
        completer.model = Engine(tiny_loaded, tiny_config.replace(max_new_tokens=4))
        done = completer.complete(str(project / "main.py"), text, offset, CompletionOptions(context="infile"))
        assert done.completion.stop_reason  # and the model, set afterwards, completes with it
    finally:
        completer.close()


def test_files_of_many_projects_keep_few_analysis_processes(completer, tmp_path, monkeypatch):
    monkeypatch.setattr("repocomplete.pipeline.MAX_ANALYSTS", 2)
    roots = [write_tree(tmp_path / f"p{i}", {"m.py": "x = 1\n", ".git/HEAD": "ref: refs/heads/main\n"})
             for i in range(3)]
    first, _ = completer._analyst(str(roots[0] / "m.py"), None)
    completer._analyst(str(roots[1] / "m.py"), None)
    completer._analyst(str(roots[0] / "m.py"), None)  # used again: the most recent
    completer._analyst(str(roots[2] / "m.py"), None)
    assert list(completer._analysts) == [roots[0].resolve(), roots[2].resolve()]  # p1, least recently used, went
    assert completer._analyst(str(roots[0] / "m.py"), None)[0] is first
    # an analyst shut down under a completion still using it answers no facts instead of raising
    first.executor.shutdown(wait=False, cancel_futures=True)
    assert first.facts("scope", "m.py", "x = 1\n", 0, 1.0) is None


# -- when a mask would swap the model's name for something it never meant, the monitor yields ----------------------


def step(vocab, prefs: dict[str, float], monitor, before: str, generated: str, cursor: int | None = None):
    """One decode step of a `Guide` over logits where the named tokens have the given scores (the rest -8): the
    token the greedy choice takes after the monitors, and the guide."""
    ids = {t: i for i, t in enumerate(vocab.texts) if t}
    logits = torch.full((len(vocab.texts),), -8.0)
    for t, score in prefs.items():
        logits[ids[t]] = score
    guide = Guide([monitor], NameMask.for_vocab(vocab), before, cursor=cursor)
    return vocab.texts[int(torch.argmax(guide.apply(logits, generated)))], guide


def test_a_prefix_the_model_wrote_is_not_finished_into_a_name_it_never_meant(vocab):
    before = "    items.sort(key="
    scope = Fixed(["lambda", "len", "list"], len(before), name="scope", free_other=True)
    # the model wrote `l` (a prefix of allowed names) and ends it: `l` is its own name, not `lambda`
    token, guide = step(vocab, {")": 6.0, "ambda": 1.0, "en": 0.5}, scope, before, "l")
    assert token == ")"
    assert [s.yielded for s in guide.spans.values()] == ["the model's name is not allowed"]
    # `set` is a name, the model goes on with `_`: the mask would end it there (`set(`)
    token, guide = step(vocab, {"_": 6.0, "(": 2.0, "default": 0.5},
                        Fixed(["set", "setdefault"], len("md."), free_other=False), "md.", "set")
    assert token == "_" and [s.yielded for s in guide.spans.values()] == ["the model's name is not allowed"]
    # where the model and the mask both go on, the mask corrects a spelling: `is_code` + `block` -> `_block`
    token, _ = step(vocab, {"block": 6.0, "_": 1.0, "(": 0.5},
                    Fixed(["is_code_block"], len("state."), free_other=False), "state.", "is_code")
    assert token == "_"
    # the same where the valid continuations outweigh the model's choice: the mask finishes the name
    token, _ = step(vocab, {")": 3.0, "ambda": 2.6, "en": 2.5, "ist": 2.0}, scope, before, "l")
    assert token == "ambda"
    # typed by the user (before the cursor), the prefix is fixed: the name must start so
    token, _ = step(vocab, {")": 6.0, "ambda": 1.0, "en": 0.5}, scope, before + "l", "")
    assert token == "ambda"
    # healing regenerated the typed `l`: the cursor says it is the user's
    token, _ = step(vocab, {")": 6.0, "ambda": 1.0, "en": 0.5}, scope, before, "l", cursor=len(before) + 1)
    assert token == "ambda"


def test_a_name_the_mask_chose_is_finished_by_the_mask(vocab):
    before = "    x = client."
    deref = Fixed(["setdefault", "settings"], len(before))
    ids = {t: i for i, t in enumerate(vocab.texts) if t}
    guide = Guide([deref], NameMask.for_vocab(vocab), before)
    first = torch.full((len(vocab.texts),), -8.0)
    first[ids["foo"]], first[ids["set"]] = 6.0, 5.0
    assert vocab.texts[int(torch.argmax(guide.apply(first, "")))] == "set"  # `foo` is no member: swapped
    second = torch.full((len(vocab.texts),), -8.0)
    second[ids["("]], second[ids["tings"]] = 6.0, 1.0
    assert vocab.texts[int(torch.argmax(guide.apply(second, "set")))] == "tings"  # the mask's `set`: finished
    assert [s.yielded for s in guide.spans.values()] == [""]


def test_a_refused_name_is_not_replaced_by_a_newline(vocab):
    before = "    grid(padding=1, pad_edge=True, "
    args = Fixed(["collapse_padding", "expand"], len(before), name="args", free_other=True)
    # the model writes a keyword the call does not take; the best token left is a newline: the name is kept
    token, guide = step(vocab, {"foo": 6.0, "\n": 3.0, ")": 2.0, "expand": -2.0}, args, before, "")
    assert token == "foo"
    assert [s.yielded for s in guide.spans.values()] == ["no allowed name in the model's place"]
    # where an allowed name is the best token left, it replaces the model's
    token, _ = step(vocab, {"foo": 6.0, "\n": 3.0, "expand": 4.0}, args, before, "")
    assert token == "expand"
    # a model that ends the call itself is not the monitor's business
    token, _ = step(vocab, {")": 6.0, "foo": 3.0}, args, before, "")
    assert token == ")"


class AfterKeyword:
    """The scope site after `return` before its space: what `repocomplete.monitors` gives there."""

    name = "scope"

    def __init__(self, names, at: int):
        self.names, self.at = tuple(sorted(names)), at

    def constraint(self, before, generated):
        return Constraint(self.names, "", self.at, "scope", skip_space=True, free_glued=True) if not generated else None


def test_after_a_keyword_a_refused_name_is_swapped_for_a_name_not_a_glued_token_or_spaces(vocab):
    before = "    return"
    monitor = AfterKeyword(["Client", "value"], len(before) + 1)
    # ` Current` is not in scope; `s` (`returns`) is free but not a name in its place: ` value` is
    token, guide = step(vocab, {" Current": 6.0, "s": 4.0, " value": 3.0}, monitor, before, "")
    assert token == " value" and [s.redirected for s in guide.spans.values()] == [True]
    # nor for spaces alone (the name would follow two spaces)
    token, _ = step(vocab, {" Current": 6.0, " ": 5.0, "  ": 4.0, " value": 3.0}, monitor, before, "")
    assert token == " value"
    # the model's own glued token is its business
    token, _ = step(vocab, {"s": 6.0, " value": 3.0}, monitor, before, "")
    assert token == "s"


def test_a_swap_for_names_the_model_gives_little_weight_is_a_guess(vocab):
    before = "    token."
    deref = Fixed(["close", "content"], len(before))
    # the model writes `append` (no member); the members hold under MIN_SWAP_MASS of the probability: its name stays
    token, guide = step(vocab, {"append": 6.0, "content": -1.0, "close": -1.5}, deref, before, "")
    assert token == "append"
    assert [s.yielded for s in guide.spans.values()] == ["the allowed names are a guess"]
    assert guide.spans[("deref", len(before))].mass < MIN_SWAP_MASS
    token, guide = step(vocab, {"append": 6.0, "content": 2.0, "close": 1.5}, deref, before, "")
    assert token == "content" and MIN_SWAP_MASS < guide.spans[("deref", len(before))].mass < 0.1


def test_a_swap_never_makes_a_dunder_or_mangled_name_the_model_did_not_start(vocab):
    before = "        return self."
    deref = Fixed(["__class__", "__getattribute__", "_send", "close"], len(before))
    # `handle` is no member and `__` is the best allowed token: the swap goes to a name, not into a dunder
    token, guide = step(vocab, {"handle": 6.0, "__": 5.0, "close": 4.0}, deref, before, "")
    assert token == "close" and [s.redirected for s in guide.spans.values()] == [True]
    # where only dunders are left, the monitor yields: the model's name stays (`self.__getattribute__(request)` was
    # what the swap wrote), and `_` (a prefix of the dunders only) is no way round it
    token, guide = step(vocab, {"handle": 6.0, "__": 5.0, "_": 4.5},
                        Fixed(["__class__", "__getattribute__"], len(before)), before, "")
    assert token == "handle"
    assert [s.yielded for s in guide.spans.values()] == ["no allowed name in the model's place"]
    # the model wrote `_` (a private name): the swap does not make it `__`, it goes to the private member
    token, guide = step(vocab, {"handle": 6.0, "_": 5.0, "send": 4.0}, deref, before, "_")
    assert token == "send"
    # a dunder the model starts itself is its own: `__` is allowed and `class` finishes it
    token, _ = step(vocab, {"__": 6.0, "close": 4.0}, deref, before, "")
    assert token == "__"
    token, _ = step(vocab, {"class": 6.0, "close": 4.0}, deref, before, "__")
    assert token == "class"
