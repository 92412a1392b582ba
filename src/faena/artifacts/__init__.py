"""faena.artifacts: arrives with a later issue (see DESIGN.md)."""
