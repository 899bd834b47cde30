; Imports for TypeScript: ES modules (`import type` too), `import x = require()`
; and CommonJS require. One Import per @import node:
;   @import.module (quotes are stripped), @import.alias (namespace or require binding),
;   @import.name + @import.local (one imported name; a default import sets its name with #set!)

(import_statement source: (string (string_fragment) @import.module)) @import

(import_statement
  (import_clause (identifier) @import.local)
  (#set! import.name "default")) @import

(import_statement (import_clause (namespace_import (identifier) @import.alias))) @import

(import_statement
  (import_clause
    (named_imports
      (import_specifier
        name: (_) @import.name
        alias: (_)? @import.local)))) @import

; const x = require('m'); const {a, b: c} = require('m')
((variable_declarator
   name: (identifier) @import.alias
   value: (call_expression
     function: (identifier) @_require
     arguments: (arguments . (string (string_fragment) @import.module) .))) @import
  (#eq? @_require "require"))

((variable_declarator
   name: (object_pattern
     [(shorthand_property_identifier_pattern) @import.name
      (pair_pattern key: (property_identifier) @import.name value: (identifier) @import.local)])
   value: (call_expression
     function: (identifier) @_require
     arguments: (arguments . (string (string_fragment) @import.module) .))) @import
  (#eq? @_require "require"))

; import fs = require('fs')
(import_statement
  (import_require_clause
    (identifier) @import.alias
    source: (string (string_fragment) @import.module))) @import
