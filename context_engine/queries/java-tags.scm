; Definitions and references for Java (tree-sitter-java 0.23+).
; @definition.<kind> / @name.definition.<kind>, @parent (the enclosing type's name for members).
; Annotations stay out of the header (the parser skips them); Javadoc is the comment right above.

(class_declaration name: (identifier) @name.definition.class) @definition.class

(record_declaration name: (identifier) @name.definition.class) @definition.class

(interface_declaration name: (identifier) @name.definition.interface) @definition.interface

(annotation_type_declaration name: (identifier) @name.definition.interface) @definition.interface

(enum_declaration name: (identifier) @name.definition.enum) @definition.enum

(method_declaration name: (identifier) @name.definition.method) @definition.method

(constructor_declaration name: (identifier) @name.definition.method) @definition.method

; Members with the type that holds them.
([(class_declaration name: (identifier) @parent body: (class_body
    [(method_declaration name: (identifier) @name.definition.method) @definition.method
     (constructor_declaration name: (identifier) @name.definition.method) @definition.method
     (class_declaration name: (identifier) @name.definition.class) @definition.class
     (record_declaration name: (identifier) @name.definition.class) @definition.class
     (interface_declaration name: (identifier) @name.definition.interface) @definition.interface
     (enum_declaration name: (identifier) @name.definition.enum) @definition.enum]))
  (record_declaration name: (identifier) @parent body: (class_body
    [(method_declaration name: (identifier) @name.definition.method) @definition.method
     (constructor_declaration name: (identifier) @name.definition.method) @definition.method
     (compact_constructor_declaration name: (identifier) @name.definition.method) @definition.method]))
  (interface_declaration name: (identifier) @parent body: (interface_body
    [(method_declaration name: (identifier) @name.definition.method) @definition.method
     (class_declaration name: (identifier) @name.definition.class) @definition.class
     (interface_declaration name: (identifier) @name.definition.interface) @definition.interface
     (enum_declaration name: (identifier) @name.definition.enum) @definition.enum]))
  (enum_declaration name: (identifier) @parent body: (enum_body (enum_body_declarations
    [(method_declaration name: (identifier) @name.definition.method) @definition.method
     (constructor_declaration name: (identifier) @name.definition.method) @definition.method])))])

; static final fields are constants; interface fields are implicitly so
((class_declaration
   name: (identifier) @parent
   body: (class_body
     (field_declaration
       (modifiers) @_modifiers
       declarator: (variable_declarator name: (identifier) @name.definition.constant)) @definition.constant))
  (#match? @_modifiers "static")
  (#match? @_modifiers "final"))

(interface_declaration
  name: (identifier) @parent
  body: (interface_body
    (constant_declaration
      declarator: (variable_declarator name: (identifier) @name.definition.constant)) @definition.constant))

; Lambdas and anonymous classes: definitions inside them are locals.
(lambda_expression) @local.scope
(object_creation_expression (class_body) @local.scope)

; -- references -------------------------------------------------------------------------------------------------

(method_invocation name: (identifier) @name.reference.call)

(method_invocation object: (identifier) @name.reference.name)

(field_access field: (identifier) @name.reference.attribute)

(field_access object: (identifier) @name.reference.name)

(type_identifier) @name.reference.type

(argument_list (identifier) @name.reference.name)

(marker_annotation name: (identifier) @name.reference.annotation)

(annotation name: (identifier) @name.reference.annotation)

(method_reference (identifier) @name.reference.call)
