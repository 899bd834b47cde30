; Imports for Go: each import spec, alone or in a group, is one Import.
;   @import.module the path without quotes, @import.alias the package name it is bound to (`_` included),
;   @import.wildcard a dot import.

(import_spec path: (_) @import.module) @import

(import_spec name: [(package_identifier) (blank_identifier)] @import.alias) @import

(import_spec name: (dot) @import.wildcard) @import
