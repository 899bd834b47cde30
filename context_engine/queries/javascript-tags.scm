; Definitions and references for JavaScript (tree-sitter-javascript 0.23+, JSX included).
; @definition.<kind> / @name.definition.<kind>, @parent (the enclosing class's name), @body (where the header ends
; when the definition has no `body` field). Doc comments are the comments right above, found by the parser.

(function_declaration name: (identifier) @name.definition.function) @definition.function

(generator_function_declaration name: (identifier) @name.definition.function) @definition.function

(class_declaration name: (identifier) @name.definition.class) @definition.class

(class_declaration
  name: (identifier) @parent
  body: (class_body
    (method_definition
      name: [(property_identifier) (private_property_identifier)] @name.definition.method) @definition.method))

; const f = (a) => ..., let g = function () {...}
([(lexical_declaration
   (variable_declarator
     name: (identifier) @name.definition.function
     value: [(arrow_function body: (_) @body) (function_expression body: (_) @body)]))
  (variable_declaration
   (variable_declarator
     name: (identifier) @name.definition.function
     value: [(arrow_function body: (_) @body) (function_expression body: (_) @body)]))] @definition.function)

; const MAX_SIZE = 10 at the top of a module
(program
  (lexical_declaration
    (variable_declarator
      name: (identifier) @name.definition.constant
      value: (_) @_value)) @definition.constant
  (#match? @name.definition.constant "^_*[A-Z][A-Z0-9_]*$"))

(program
  (export_statement
    declaration: (lexical_declaration
      (variable_declarator
        name: (identifier) @name.definition.constant
        value: (_) @_value)) @definition.constant)
  (#match? @name.definition.constant "^_*[A-Z][A-Z0-9_]*$"))

; Function bodies that are no definition of their own (callbacks, object methods): definitions inside them are
; locals and are dropped.
(arrow_function) @local.scope
(function_expression) @local.scope
(object (method_definition) @local.scope)

; -- references -------------------------------------------------------------------------------------------------

(call_expression function: (identifier) @name.reference.call)

(new_expression constructor: (identifier) @name.reference.class)

(member_expression property: (property_identifier) @name.reference.attribute)

(member_expression object: (identifier) @name.reference.name)

(class_heritage (identifier) @name.reference.class)

(arguments (identifier) @name.reference.name)

(jsx_opening_element name: (identifier) @name.reference.class)

(jsx_self_closing_element name: (identifier) @name.reference.class)

(decorator (identifier) @name.reference.call)
