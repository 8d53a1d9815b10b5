"""The self-contained demo: an embedded broker and the report it draws."""
