; inherits: javascript
; Imports for TypeScript: JavaScript's patterns (ES modules, `import type` too, CommonJS require), plus
; `import x = require()`.
; import fs = require('fs')
(import_statement
  (import_require_clause
    (identifier) @import.alias
    source: (string (string_fragment) @import.module))) @import
