"""The definition model: the document, its validation, the expression language, the limits."""
