"""Tree-sitter parsing: exact definitions, imports and identifiers for each language, and error recovery."""

from __future__ import annotations

import time

import pytest

from repocomplete.context_engine.errors import ParseTimeout
from repocomplete.context_engine.parsing import language_for, parse_source
from repocomplete.context_engine.records import Definition, Import


def defs(symbols, *fields):
    return [tuple(getattr(d, f) for f in fields) for d in symbols.definitions]


# -- Python ---------------------------------------------------------------------------------------------------------

PYTHON = '''\
"""Inventory models."""
import os.path
import numpy as np, json
from ..core import (Base as CoreBase, registry)
from . import utils
from typing import *

MAX_ITEMS: int = 100
default_name = "item"
type ItemId = int


# Sums prices.
# Second line.
def total(items: list["Item"]) -> float:  # hot path
    return sum(item.price for item in items)


@registry.register
class Item(CoreBase):
    """One thing on a shelf.

    Longer description.
    """

    count: int = 0

    @property
    def price(self) -> float:
        return self.base * TAX

    async def fetch(
        self,
        session: Session,
        *,
        retries: int = 3,
    ) -> "Item":
        """Fetch the item.

        Args:
            session: where from.
        """
        def helper():
            return 1
        return await session.get(Item, self.id)

    class Meta:
        ordering = ["name"]

        def describe(cls):
            return str(cls)
'''


def test_python_definitions():
    symbols = parse_source("shop/models.py", PYTHON)
    assert symbols.language == "python"
    assert symbols.has_errors is False
    assert symbols.definitions == [
        Definition("MAX_ITEMS", "constant", "shop/models.py", 8, 8, "MAX_ITEMS: int = 100"),
        Definition("default_name", "variable", "shop/models.py", 9, 9, 'default_name = "item"'),
        Definition("ItemId", "type", "shop/models.py", 10, 10, "type ItemId = int"),
        Definition("total", "function", "shop/models.py", 15, 16, 'def total(items: list["Item"]) -> float:',
                   doc="Sums prices.\nSecond line."),
        Definition("Item", "class", "shop/models.py", 20, 51, "class Item(CoreBase):", doc="One thing on a shelf."),
        Definition("price", "method", "shop/models.py", 29, 30, "def price(self) -> float:", parent="Item"),
        Definition("fetch", "method", "shop/models.py", 32, 45,
                   "async def fetch(\n        self,\n        session: Session,\n        *,\n"
                   '        retries: int = 3,\n    ) -> "Item":',
                   doc="Fetch the item.", parent="Item"),
        Definition("Meta", "class", "shop/models.py", 47, 51, "class Meta:", parent="Item"),
        Definition("describe", "method", "shop/models.py", 50, 51, "def describe(cls):", parent="Meta"),
    ]


def test_python_imports():
    symbols = parse_source("shop/models.py", PYTHON)
    assert symbols.imports == [
        Import("os.path", line=2),
        Import("numpy", alias="np", line=3),
        Import("json", line=3),
        Import("core", names=(("Base", "CoreBase"), ("registry", "registry")), level=2, line=4),
        Import("", names=(("utils", "utils"),), level=1, line=5),
        Import("typing", names=(("*", "*"),), line=6),
    ]


def test_python_identifiers_are_references_in_order():
    symbols = parse_source("shop/models.py", PYTHON)
    assert symbols.identifiers == [
        "int", "int", "list", "float", "sum", "item", "price", "registry", "register", "CoreBase", "int", "property",
        "float", "self", "base", "TAX", "Session", "int", "session", "get", "Item", "self", "id", "str", "cls",
    ]
    # Names at their definition sites are not references.
    assert "total" not in symbols.identifiers and "Meta" not in symbols.identifiers


def test_python_syntax_error_keeps_the_definitions_around_it():
    text = (
        "def before(a):\n"
        "    return a\n"
        "\n"
        "class Model:\n"
        "    def forward(self, x):\n"
        "        y = self.layer(\n"
        "        return y\n"
        "\n"
        "    def after(self):\n"
        "        return 1\n"
        "\n"
        "def tail():\n"
        "    pass\n"
    )
    symbols = parse_source("m.py", text)
    assert symbols.has_errors is True
    assert defs(symbols, "name", "kind", "start_line", "end_line", "signature", "parent") == [
        ("before", "function", 1, 2, "def before(a):", ""),
        ("Model", "class", 4, 10, "class Model:", ""),
        ("forward", "method", 5, 7, "def forward(self, x):", "Model"),
        ("after", "method", 9, 10, "def after(self):", "Model"),
        ("tail", "function", 12, 13, "def tail():", ""),
    ]


def test_python_incomplete_attribute_while_typing():
    text = "class A:\n    def f(self):\n        return self.\n\n    def g(self):\n        pass\n\ndef h():\n    pass\n"
    symbols = parse_source("m.py", text)
    assert symbols.has_errors is True
    assert defs(symbols, "name", "kind", "start_line", "end_line", "signature", "parent") == [
        ("A", "class", 1, 6, "class A:", ""),
        ("f", "method", 2, 3, "def f(self):", "A"),
        ("g", "method", 5, 6, "def g(self):", "A"),
        ("h", "function", 8, 9, "def h():", ""),
    ]


@pytest.mark.parametrize(
    "path, text, expected",
    [
        (
            "m.ts",
            "export function a(x: number) {\n  return x;\n}\n\nexport function b(y: string) {\n  const z = y.\n}\n\n"
            "export class C {\n  m() {}\n}\n",
            [("a", "function", 1, 3), ("b", "function", 5, 7), ("C", "class", 9, 11), ("m", "method", 10, 10)],
        ),
        (
            "m.go",
            "package m\n\nfunc A() {}\n\nfunc B() {\n\tx := \n}\n\nfunc C() {}\n",
            [("A", "function", 3, 3), ("B", "function", 5, 7), ("C", "function", 9, 9)],
        ),
    ],
)
def test_syntax_error_recovery_in_other_languages(path, text, expected):
    symbols = parse_source(path, text)
    assert symbols.has_errors is True
    assert defs(symbols, "name", "kind", "start_line", "end_line") == expected


def test_python_non_ascii_text_keeps_offsets_right():
    text = (
        'GREETING = "héllo wörld"\n\ndef grüß(name: Straße) -> str:\n    """Grüße."""\n    return Ünïcode(name)\n'
    )
    symbols = parse_source("u.py", text)
    assert defs(symbols, "name", "kind", "signature", "doc") == [
        ("GREETING", "constant", 'GREETING = "héllo wörld"', ""),
        ("grüß", "function", "def grüß(name: Straße) -> str:", "Grüße."),
    ]
    assert symbols.identifiers == ["Straße", "str", "Ünïcode", "name"]


# -- JavaScript -----------------------------------------------------------------------------------------------------

JAVASCRIPT = """\
import React, { useState as useLocalState, useEffect } from 'react';
import * as path from "node:path";
import './styles.css';
const fs = require('fs');
const { join, resolve: res } = require('path');

export const MAX_RETRIES = 3;

/**
 * Loads a file.
 * @param {string} name
 */
export async function load(name, options) {
  function local() {}
  return fs.readFileSync(join(name));
}

// A list that remembers.
class Cache extends Base {
  #store = new Map();

  get(key) {
    return this.#store.get(key);
  }

  async *entries() {}
}

export const render = (props) => <Widget {...props} />;
items.forEach(function (item) { function hidden() {} });
"""


def test_javascript():
    symbols = parse_source("src/cache.jsx", JAVASCRIPT)
    assert symbols.language == "javascript" and symbols.has_errors is False
    assert symbols.definitions == [
        Definition("MAX_RETRIES", "constant", "src/cache.jsx", 7, 7, "const MAX_RETRIES = 3"),
        Definition("load", "function", "src/cache.jsx", 13, 16, "async function load(name, options)",
                   doc="Loads a file."),
        Definition("Cache", "class", "src/cache.jsx", 19, 27, "class Cache extends Base", doc="A list that remembers."),
        Definition("get", "method", "src/cache.jsx", 22, 24, "get(key)", parent="Cache"),
        Definition("entries", "method", "src/cache.jsx", 26, 26, "async *entries()", parent="Cache"),
        Definition("render", "function", "src/cache.jsx", 29, 29, "const render = (props) =>"),
    ]
    assert symbols.imports == [
        Import("react", line=1,
               names=(("default", "React"), ("useState", "useLocalState"), ("useEffect", "useEffect"))),
        Import("node:path", alias="path", line=2),
        Import("./styles.css", line=3),
        Import("fs", alias="fs", line=4),
        Import("path", names=(("join", "join"), ("resolve", "res")), line=5),
    ]
    assert symbols.identifiers == [
        "require", "require", "fs", "readFileSync", "join", "name", "Base", "Map", "get", "key", "Widget",
        "items", "forEach",
    ]


# -- TypeScript -----------------------------------------------------------------------------------------------------

TYPESCRIPT = """\
import type { Request } from './http';
import express = require('express');
import def, * as utils from '../utils';

/** A shape's outline. */
export interface Shape extends Base {
  area(scale: number): number;
  name: string;
}

export type Point = { x: number; y: number };

export enum Color { Red, Green }

@Injectable()
export class Circle implements Shape {
  constructor(private r: number) {}

  // Area of the circle.
  area(scale: number): number {
    return Math.PI * this.r * scale;
  }
}

export abstract class Repo<T> {
  abstract find(id: string): Promise<T>;
}

export function handler(req: Request): Response {
  return new Response(req.body);
}
"""


def test_typescript():
    symbols = parse_source("src/shapes.ts", TYPESCRIPT)
    assert symbols.language == "typescript" and symbols.has_errors is False
    assert symbols.definitions == [
        Definition("Shape", "interface", "src/shapes.ts", 6, 9, "interface Shape extends Base",
                   doc="A shape's outline."),
        Definition("area", "method", "src/shapes.ts", 7, 7, "area(scale: number): number", parent="Shape"),
        Definition("Point", "type", "src/shapes.ts", 11, 11, "type Point = { x: number; y: number }"),
        Definition("Color", "enum", "src/shapes.ts", 13, 13, "enum Color"),
        Definition("Circle", "class", "src/shapes.ts", 16, 23, "class Circle implements Shape"),
        Definition("constructor", "method", "src/shapes.ts", 17, 17, "constructor(private r: number)", parent="Circle"),
        Definition("area", "method", "src/shapes.ts", 20, 22, "area(scale: number): number",
                   doc="Area of the circle.", parent="Circle"),
        Definition("Repo", "class", "src/shapes.ts", 25, 27, "abstract class Repo<T>"),
        Definition("find", "method", "src/shapes.ts", 26, 26, "abstract find(id: string): Promise<T>", parent="Repo"),
        Definition("handler", "function", "src/shapes.ts", 29, 31, "function handler(req: Request): Response"),
    ]
    assert symbols.imports == [
        Import("./http", names=(("Request", "Request"),), line=1),
        Import("express", alias="express", line=2),
        Import("../utils", names=(("default", "def"),), alias="utils", line=3),
    ]
    assert symbols.identifiers == [
        "Base", "Injectable", "Shape", "Math", "PI", "r", "T", "Promise", "T", "Request", "Response", "Response",
        "req", "body",
    ]


def test_tsx_adds_jsx_references():
    symbols = parse_source("App.tsx", "export const App = (p: Props) => <Layout><Button onClick={go} /></Layout>;\n")
    assert defs(symbols, "name", "kind", "signature") == [("App", "function", "const App = (p: Props) =>")]
    assert symbols.identifiers == ["Props", "Layout", "Button"]


# -- Go -------------------------------------------------------------------------------------------------------------

GO = """\
package server

import "fmt"
import (
	ctx "context"
	_ "net/http/pprof"
	. "strings"
	"os"
)

// MaxConns caps connections.
const MaxConns = 64

var (
	debug   bool
	verbose = false
)

// Server serves requests.
//
// It is safe for concurrent use.
type Server struct {
	Addr string
}

type (
	// Handler handles one request.
	Handler interface {
		Serve(c ctx.Context) error
	}
	ID int
)

// Run starts the server.
func (s *Server) Run(c ctx.Context) error {
	go func() { fmt.Println(s.Addr) }()
	return nil
}

func New[T any](addr string) *Server {
	return &Server{Addr: addr}
}
"""


def test_go():
    symbols = parse_source("server/server.go", GO)
    assert symbols.language == "go" and symbols.has_errors is False
    assert defs(symbols, "name", "kind", "start_line", "end_line", "signature", "doc", "parent") == [
        ("MaxConns", "constant", 12, 12, "const MaxConns = 64", "MaxConns caps connections.", ""),
        ("debug", "variable", 15, 15, "debug   bool", "", ""),
        ("verbose", "variable", 16, 16, "verbose = false", "", ""),
        ("Server", "struct", 22, 24, "type Server struct", "Server serves requests.", ""),
        ("Handler", "interface", 28, 30, "Handler interface", "Handler handles one request.", ""),
        ("ID", "type", 31, 31, "ID int", "", ""),
        ("Run", "method", 35, 38, "func (s *Server) Run(c ctx.Context) error", "Run starts the server.", "Server"),
        ("New", "function", 40, 42, "func New[T any](addr string) *Server", "", ""),
    ]
    assert symbols.imports == [
        Import("fmt", line=3),
        Import("context", alias="ctx", line=5),
        Import("net/http/pprof", alias="_", line=6),
        Import("strings", names=(("*", "*"),), line=7),
        Import("os", line=8),
    ]
    assert symbols.identifiers == [
        "bool", "string", "Context", "error", "int", "Server", "Context", "error", "fmt", "Println", "s", "Addr",
        "any", "string", "Server", "Server",
    ]


# -- Java -----------------------------------------------------------------------------------------------------------

JAVA = """\
package com.shop;

import java.util.List;
import static java.lang.Math.max;
import com.shop.util.*;

/**
 * A box of items.
 *
 * @param <T> the item type
 */
@Entity
public class Box<T> extends Base implements Sized {
    public static final int LIMIT = 10;
    private List<T> items;

    /** Makes an empty box. */
    public Box() { super(); }

    @Override
    public int size() {
        return items.size();
    }

    interface Visitor { void visit(T item); }

    enum State { OPEN, CLOSED }
}
"""


def test_java():
    symbols = parse_source("src/com/shop/Box.java", JAVA)
    assert symbols.language == "java" and symbols.has_errors is False
    assert defs(symbols, "name", "kind", "start_line", "end_line", "signature", "doc", "parent") == [
        ("Box", "class", 13, 28, "public class Box<T> extends Base implements Sized", "A box of items.", ""),
        ("LIMIT", "constant", 14, 14, "public static final int LIMIT = 10", "", "Box"),
        ("Box", "method", 18, 18, "public Box()", "Makes an empty box.", "Box"),
        ("size", "method", 21, 23, "public int size()", "", "Box"),
        ("Visitor", "interface", 25, 25, "interface Visitor", "", "Box"),
        ("visit", "method", 25, 25, "void visit(T item)", "", "Visitor"),
        ("State", "enum", 27, 27, "enum State", "", "Box"),
    ]
    assert symbols.imports == [
        Import("java.util.List", line=3),
        Import("java.lang.Math", names=(("max", "max"),), line=4),
        Import("com.shop.util", names=(("*", "*"),), line=5),
    ]
    assert symbols.identifiers == ["Entity", "T", "Base", "Sized", "List", "T", "Override", "items", "size", "T"]


# -- Rust -----------------------------------------------------------------------------------------------------------

RUST = """\
use std::io;
use std::fmt as f;
use crate::model::{Item, Store as Db};
use super::prelude::*;

/// A 2D point.
/// Used everywhere.
#[derive(Debug, Clone)]
pub struct Point<T> {
    x: T,
}

pub enum Shape { Dot, Line(Point<f64>) }

/// Things with an area.
pub trait Area {
    fn area(&self) -> f64;
}

impl<T> Area for Point<T> {
    /// Always zero.
    fn area(&self) -> f64 {
        let sq = |v: f64| v * v;
        fn inner() {}
        0.0
    }
}

pub const ORIGIN: Point<i32> = Point { x: 0 };

pub fn parse(&self, s: &str) -> Result<T> {
    io::stdin().read_line(s);
    todo!()
}
"""


def test_rust():
    symbols = parse_source("src/geo.rs", RUST)
    assert symbols.language == "rust" and symbols.has_errors is False
    assert defs(symbols, "name", "kind", "start_line", "end_line", "signature", "doc", "parent") == [
        ("Point", "struct", 9, 11, "pub struct Point<T>", "A 2D point.\nUsed everywhere.", ""),
        ("Shape", "enum", 13, 13, "pub enum Shape", "", ""),
        ("Area", "trait", 16, 18, "pub trait Area", "Things with an area.", ""),
        ("area", "method", 17, 17, "fn area(&self) -> f64", "", "Area"),
        ("area", "method", 22, 26, "fn area(&self) -> f64", "Always zero.", "Point"),
        ("ORIGIN", "constant", 29, 29, "pub const ORIGIN: Point<i32> = Point { x: 0 }", "", ""),
        ("parse", "function", 31, 34, "pub fn parse(&self, s: &str) -> Result<T>", "", ""),
    ]
    assert symbols.imports == [
        Import("std::io", line=1),
        Import("std::fmt", alias="f", line=2),
        Import("crate::model", names=(("Item", "Item"), ("Store", "Db")), line=3),
        Import("super::prelude", names=(("*", "*"),), line=4),
    ]
    assert symbols.identifiers == [
        "std", "std", "T", "T", "Point", "T", "Area", "Point", "T", "Point", "Point", "Result", "T", "io", "stdin",
        "read_line", "s", "todo",
    ]


# -- languages ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, language",
    [
        ("a.py", "python"), ("stubs/a.pyi", "python"), ("a.js", "javascript"), ("a.jsx", "javascript"),
        ("a.mjs", "javascript"), ("a.cjs", "javascript"), ("a.ts", "typescript"), ("A.TSX", "typescript"),
        ("main.go", "go"), ("A.java", "java"), ("lib.rs", "rust"), ("README.md", None), ("Makefile", None),
        ("a.c", None),
    ],
)
def test_language_for(path, language):
    assert language_for(path) == language


def test_unsupported_file_parses_to_none():
    assert parse_source("notes.txt", "def f(): pass\n") is None
    assert parse_source("style.css", "a { color: red }") is None


def test_empty_file():
    symbols = parse_source("empty.py", "")
    assert (symbols.definitions, symbols.imports, symbols.identifiers, symbols.has_errors) == ([], [], [], False)


def test_threads_share_compiled_queries_but_not_parsers():
    from concurrent.futures import ThreadPoolExecutor

    sources = [("a.py", PYTHON), ("b.go", GO), ("c.rs", RUST), ("d.ts", TYPESCRIPT)] * 8
    expected = [parse_source(path, text) for path, text in sources]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda item: parse_source(*item), sources)) == expected


# -- bounded work -----------------------------------------------------------------------------------------------------


def test_hostile_files_parse_within_a_bound():
    from helpers import hostile_files

    for name, text in hostile_files().items():
        t0 = time.monotonic()
        try:
            parse_source(name, text)
        except ParseTimeout:
            pass  # also within the bound: the index skips the file
        assert time.monotonic() - t0 < 10, name  # unbounded, 200 KB of `(` took minutes


def test_definitions_outside_a_run_of_unclosed_brackets_are_kept():
    text = "class Kept:\n    def run(self):\n        return 1\n\n\nvalue = " + "(" * 50_000
    t0 = time.monotonic()
    symbols = parse_source("m.py", text)
    assert time.monotonic() - t0 < 10
    assert defs(symbols, "name", "kind") == [("Kept", "class"), ("run", "method")]
    assert symbols.has_errors


def test_a_parse_past_its_budget_raises():
    with pytest.raises(ParseTimeout):
        parse_source("m.py", "x = 1\n" * 100_000, budget_s=0)
    assert parse_source("m.py", PYTHON).definitions  # the parser is left ready for the next file


@pytest.mark.parametrize("suffix", [".py", ".ts"])
def test_a_large_file_parsed_again_after_edits_gives_what_a_fresh_parse_gives(monkeypatch, suffix):
    """Large files are re-parsed incrementally from their last tree; edits anywhere (inserted, deleted and
    replaced text, broken syntax, non-ASCII) must give exactly the symbols of a parse from scratch."""
    import collections
    import random

    from repocomplete.context_engine import parsing

    if suffix == ".py":
        unit = "class C{i}(Base):\n    def m{i}(self, x: int) -> 'C{i}':\n        return helper{i}(x, self.v)\n\n"
    else:
        unit = "export class C{i} extends Base {{\n  m{i}(x: number): C{i} {{ return helper{i}(x, this.v); }}\n}}\n"
    text = "".join(unit.format(i=i) for i in range(400))
    assert len(text.encode()) >= parsing.INCREMENTAL_MIN_BYTES
    path = f"big{suffix}"
    rng = random.Random(3)
    seen_incremental = 0
    real_parse = parsing._parse

    def spy(parser, src, budget_s, old_tree=None):
        nonlocal seen_incremental
        seen_incremental += old_tree is not None
        return real_parse(parser, src, budget_s, old_tree)

    monkeypatch.setattr(parsing, "_parse", spy)
    parse_source(path, text)
    for step in range(25):
        i = rng.randrange(len(text))
        j = min(len(text), i + rng.randrange(0, 40))
        text = text[:i] + rng.choice(["", "(", "zé_", "\n    def added(self): pass\n", "}{", "x = 1\n"]) + text[j:]
        got = parse_source(path, text)
        with monkeypatch.context() as m:
            m.setattr(parsing, "_trees", collections.OrderedDict())
            fresh = parse_source(path, text)
        assert got == fresh, step
    assert seen_incremental >= 25
