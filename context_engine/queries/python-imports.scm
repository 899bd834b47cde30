; Import statements for Python. One Import per @import node; the matches that share it fill in its parts:
;   @import.module   the module as written ("a.b"); @import.level the relative dots ("..")
;   @import.alias    the module's local name (`import a as b`)
;   @import.name + @import.local   one imported name and its local name (the local defaults to the name)
;   @import.wildcard `*`

; import a.b, c.d as e
(import_statement name: (dotted_name) @import.module @import)

(import_statement
  name: (aliased_import
    name: (dotted_name) @import.module
    alias: (identifier) @import.alias) @import)

; from .x import y as z, w
(import_from_statement module_name: (dotted_name) @import.module) @import

(import_from_statement
  module_name: (relative_import
    (import_prefix) @import.level
    (dotted_name)? @import.module)) @import

(import_from_statement name: (dotted_name) @import.name) @import

(import_from_statement
  name: (aliased_import
    name: (dotted_name) @import.name
    alias: (identifier) @import.local)) @import

(import_from_statement (wildcard_import) @import.wildcard) @import
