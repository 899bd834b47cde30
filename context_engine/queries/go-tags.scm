; Definitions and references for Go (tree-sitter-go 0.23+).
; @definition.<kind> / @name.definition.<kind>, @parent (a method's receiver type), @body (where the header ends
; when the definition has no `body` field). A lone `type X ...` is defined by its whole declaration, so that its
; header reads "type X struct"; inside a `type ( ... )` group each spec stands alone.

(function_declaration name: (identifier) @name.definition.function) @definition.function

(method_declaration
  receiver: (parameter_list
    (parameter_declaration
      type: [(type_identifier) @parent
             (pointer_type (type_identifier) @parent)
             (generic_type type: (type_identifier) @parent)
             (pointer_type (generic_type type: (type_identifier) @parent))]))
  name: (field_identifier) @name.definition.method) @definition.method

; type X struct {...} / type X interface {...} / type X int, alone and in groups
((type_declaration
   (type_spec
     name: (type_identifier) @name.definition.struct
     type: (struct_type (field_declaration_list) @body))) @definition.struct
  (#not-match? @definition.struct "^type\\s*\\("))

(type_declaration "("
  (type_spec
    name: (type_identifier) @name.definition.struct
    type: (struct_type (field_declaration_list) @body)) @definition.struct)

((type_declaration
   (type_spec
     name: (type_identifier) @name.definition.interface
     type: (interface_type "{" @body))) @definition.interface
  (#not-match? @definition.interface "^type\\s*\\("))

(type_declaration "("
  (type_spec
    name: (type_identifier) @name.definition.interface
    type: (interface_type "{" @body)) @definition.interface)

((type_declaration
   [(type_spec
      name: (type_identifier) @name.definition.type
      type: [(type_identifier) (qualified_type) (generic_type) (pointer_type) (slice_type) (array_type)
             (map_type) (channel_type) (function_type)])
    (type_alias name: (type_identifier) @name.definition.type)]) @definition.type
  (#not-match? @definition.type "^type\\s*\\("))

(type_declaration "("
  [(type_spec
     name: (type_identifier) @name.definition.type
     type: [(type_identifier) (qualified_type) (generic_type) (pointer_type) (slice_type) (array_type)
            (map_type) (channel_type) (function_type)])
   (type_alias name: (type_identifier) @name.definition.type)] @definition.type)

; package-level const and var, alone and in groups
(source_file
  (const_declaration (const_spec name: (identifier) @name.definition.constant)) @definition.constant
  (#not-match? @definition.constant "^const\\s*\\("))

(source_file
  (const_declaration "(" (const_spec name: (identifier) @name.definition.constant) @definition.constant))

(source_file
  (var_declaration (var_spec name: (identifier) @name.definition.variable)) @definition.variable
  (#not-match? @definition.variable "^var\\s*\\("))

(source_file
  (var_declaration (var_spec_list (var_spec name: (identifier) @name.definition.variable) @definition.variable)))

; Closures: definitions inside them are locals.
(func_literal) @local.scope

; -- references -------------------------------------------------------------------------------------------------

(call_expression function: (identifier) @name.reference.call)

(selector_expression field: (field_identifier) @name.reference.attribute)

(selector_expression operand: (identifier) @name.reference.name)

(type_identifier) @name.reference.type

(argument_list (identifier) @name.reference.name)
