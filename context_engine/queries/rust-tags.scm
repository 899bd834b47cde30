; Definitions and references for Rust (tree-sitter-rust 0.23+).
; @definition.<kind> / @name.definition.<kind>, @parent (the impl's self type or the trait, for members).
; Attributes (#[derive]) stay out of the header; doc comments (///) are the comments right above.

(function_item name: (identifier) @name.definition.function) @definition.function

(function_signature_item name: (identifier) @name.definition.function) @definition.function

(struct_item name: (type_identifier) @name.definition.struct) @definition.struct

(union_item name: (type_identifier) @name.definition.struct) @definition.struct

(enum_item name: (type_identifier) @name.definition.enum) @definition.enum

(trait_item name: (type_identifier) @name.definition.trait) @definition.trait

(type_item name: (type_identifier) @name.definition.type) @definition.type

(mod_item name: (identifier) @name.definition.module) @definition.module

(const_item name: (identifier) @name.definition.constant) @definition.constant

(static_item name: (identifier) @name.definition.constant) @definition.constant

; Methods, with the type (or trait) they belong to.
(impl_item
  type: [(type_identifier) @parent
         (generic_type type: (type_identifier) @parent)
         (scoped_type_identifier name: (type_identifier) @parent)
         (generic_type type: (scoped_type_identifier name: (type_identifier) @parent))]
  body: (declaration_list
    [(function_item name: (identifier) @name.definition.method) @definition.method
     (const_item name: (identifier) @name.definition.constant) @definition.constant
     (type_item name: (type_identifier) @name.definition.type) @definition.type]))

(trait_item
  name: (type_identifier) @parent
  body: (declaration_list
    [(function_item name: (identifier) @name.definition.method) @definition.method
     (function_signature_item name: (identifier) @name.definition.method) @definition.method]))

; Closures: definitions inside them are locals.
(closure_expression) @local.scope

; -- references -------------------------------------------------------------------------------------------------

(call_expression function: (identifier) @name.reference.call)

(call_expression function: (scoped_identifier name: (identifier) @name.reference.call))

(generic_function function: (identifier) @name.reference.call)

(field_expression field: (field_identifier) @name.reference.attribute)

(scoped_identifier path: (identifier) @name.reference.name)

(scoped_type_identifier path: (identifier) @name.reference.name)

(type_identifier) @name.reference.type

(macro_invocation macro: (identifier) @name.reference.macro)

(arguments (identifier) @name.reference.name)
