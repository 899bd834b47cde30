; Definitions and references for TypeScript (tree-sitter-typescript 0.23+). The same file serves .ts and .tsx;
; tsx-tags.scm adds the JSX references that only the tsx grammar knows.
; @definition.<kind> / @name.definition.<kind>, @parent (the enclosing class or interface's name), @body (where the
; header ends when the definition has no `body` field).

(function_declaration name: (identifier) @name.definition.function) @definition.function

(generator_function_declaration name: (identifier) @name.definition.function) @definition.function

(function_signature name: (identifier) @name.definition.function) @definition.function

(class_declaration name: (type_identifier) @name.definition.class) @definition.class

(abstract_class_declaration name: (type_identifier) @name.definition.class) @definition.class

(interface_declaration name: (type_identifier) @name.definition.interface) @definition.interface

(type_alias_declaration name: (type_identifier) @name.definition.type) @definition.type

(enum_declaration name: (identifier) @name.definition.enum) @definition.enum

([(class_declaration name: (type_identifier) @parent body: (class_body
    [(method_definition
       name: [(property_identifier) (private_property_identifier)] @name.definition.method)
     (method_signature name: (property_identifier) @name.definition.method)
     (abstract_method_signature name: (property_identifier) @name.definition.method)] @definition.method))
  (abstract_class_declaration name: (type_identifier) @parent body: (class_body
    [(method_definition
       name: [(property_identifier) (private_property_identifier)] @name.definition.method)
     (method_signature name: (property_identifier) @name.definition.method)
     (abstract_method_signature name: (property_identifier) @name.definition.method)] @definition.method))])

(interface_declaration
  name: (type_identifier) @parent
  body: (interface_body
    (method_signature name: (property_identifier) @name.definition.method) @definition.method))

; const f = (a: T) => ..., let g = function () {...}
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
    (variable_declarator name: (identifier) @name.definition.constant)) @definition.constant
  (#match? @name.definition.constant "^_*[A-Z][A-Z0-9_]*$"))

(program
  (export_statement
    declaration: (lexical_declaration
      (variable_declarator name: (identifier) @name.definition.constant)) @definition.constant)
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

(extends_clause value: (identifier) @name.reference.class)

(arguments (identifier) @name.reference.name)

(type_identifier) @name.reference.type

(decorator (identifier) @name.reference.call)
