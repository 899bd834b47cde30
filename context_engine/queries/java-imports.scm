; Imports for Java. `import a.b.C;` -> module "a.b.C"; `import static a.b.C.m;` -> module "a.b.C", name "m";
; `import a.b.*;` -> module "a.b" and a wildcard.

((import_declaration [(scoped_identifier) (identifier)] @import.module) @import
  (#not-match? @import "^import\\s+static"))

((import_declaration
   (scoped_identifier scope: (_) @import.module name: (identifier) @import.name)) @import
  (#match? @import "^import\\s+static\\s[^*]*;"))

(import_declaration [(scoped_identifier) (identifier)] @import.module (asterisk) @import.wildcard) @import
