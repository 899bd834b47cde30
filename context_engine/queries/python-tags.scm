; Definitions and references for Python (tree-sitter-python 0.23+).
;
; Conventions (aider / tree-sitter tags): @definition.<kind> is the whole definition, @name.definition.<kind> its
; name. Extra captures read by context_engine.parsing:
;   @parent  the enclosing class's name, for members
;   @doc     the docstring (a string node)
; A definition matched by several patterns keeps the match that names its @parent, else the earliest pattern.
; Definitions inside function bodies are locals and are dropped by the parser.

; -- classes ----------------------------------------------------------------------------------------------------

(class_definition
  name: (identifier) @name.definition.class
  body: (block . (expression_statement . (string) @doc .)?)) @definition.class

(class_definition
  name: (identifier) @parent
  body: (block
    [(class_definition
       name: (identifier) @name.definition.class
       body: (block . (expression_statement . (string) @doc .)?)) @definition.class
     (decorated_definition
       definition: (class_definition
         name: (identifier) @name.definition.class
         body: (block . (expression_statement . (string) @doc .)?)) @definition.class)]))

; -- functions and methods --------------------------------------------------------------------------------------

(function_definition
  name: (identifier) @name.definition.function
  body: (block . (expression_statement . (string) @doc .)?)) @definition.function

(class_definition
  name: (identifier) @parent
  body: (block
    [(function_definition
       name: (identifier) @name.definition.method
       body: (block . (expression_statement . (string) @doc .)?)) @definition.method
     (decorated_definition
       definition: (function_definition
         name: (identifier) @name.definition.method
         body: (block . (expression_statement . (string) @doc .)?)) @definition.method)]))

; -- module-level names -----------------------------------------------------------------------------------------

(module
  (expression_statement
    (assignment left: (identifier) @name.definition.constant)) @definition.constant
  (#match? @name.definition.constant "^_*[A-Z][A-Z0-9_]*$"))

(module
  (expression_statement
    (assignment left: (identifier) @name.definition.variable)) @definition.variable
  (#not-match? @name.definition.variable "^_*[A-Z][A-Z0-9_]*$"))

(module
  (type_alias_statement left: (type (identifier) @name.definition.type)) @definition.type)

; -- references -------------------------------------------------------------------------------------------------

(call function: (identifier) @name.reference.call)

(decorator (identifier) @name.reference.call)

(attribute attribute: (identifier) @name.reference.attribute)

; The receiver of an attribute: classes and modules (`Config.load`, `np.zeros`). `self` and `cls` come along: a
; predicate to drop them would cost more than they do.
(attribute object: (identifier) @name.reference.name)

(type (identifier) @name.reference.type)

(generic_type (identifier) @name.reference.type)

(argument_list (identifier) @name.reference.name)

(keyword_argument value: (identifier) @name.reference.name)

(assignment right: (identifier) @name.reference.name)

(return_statement (identifier) @name.reference.name)

(subscript value: (identifier) @name.reference.name)

(binary_operator left: (identifier) @name.reference.name)

(binary_operator right: (identifier) @name.reference.name)

(except_clause (identifier) @name.reference.class)

(raise_statement (identifier) @name.reference.class)
