"""Pure domain model: specs, runs, state machines, events, errors. No I/O."""
