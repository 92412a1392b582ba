"""faena.telemetry: arrives with a later issue (see DESIGN.md)."""
