"""faena.console: arrives with a later issue (see DESIGN.md)."""
