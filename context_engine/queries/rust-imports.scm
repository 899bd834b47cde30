; Imports for Rust. `use std::io;` -> module "std::io"; `use crate::a::{b, c as d};` -> module "crate::a" with
; names b and c (as d); `use x::*;` -> module "x" and a wildcard; `use a::b as c;` -> module "a::b", alias "c".
; Nested groups (`use a::{b::{c, d}}`) are not read: their names are left out.

(use_declaration argument: [(identifier) (scoped_identifier) (crate) (self) (super)] @import.module) @import

(use_declaration argument: (use_as_clause path: (_) @import.module alias: (identifier) @import.alias)) @import

(use_declaration argument: (use_wildcard (_) @import.module) @import.wildcard) @import

(use_declaration
  argument: (scoped_use_list
    path: (_) @import.module
    list: (use_list [(identifier) (self) (scoped_identifier)] @import.name))) @import

(use_declaration
  argument: (scoped_use_list
    path: (_) @import.module
    list: (use_list (use_as_clause path: (_) @import.name alias: (identifier) @import.local)))) @import

(use_declaration
  argument: (scoped_use_list
    path: (_) @import.module
    list: (use_list (use_wildcard) @import.wildcard))) @import

(extern_crate_declaration name: (identifier) @import.module) @import

(extern_crate_declaration name: (identifier) @import.module alias: (identifier) @import.alias) @import
