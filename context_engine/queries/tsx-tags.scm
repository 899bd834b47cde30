; JSX references, for .tsx files only (the plain typescript grammar has no JSX nodes). Read after typescript-tags.scm.

(jsx_opening_element name: (identifier) @name.reference.class)

(jsx_self_closing_element name: (identifier) @name.reference.class)
