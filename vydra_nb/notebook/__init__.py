"""The notebook layer: ``%vydra``/``%%vydra``, their argument parsing, and the studio widget."""
