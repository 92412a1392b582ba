"""Event bus: the EventBus port, its adapters and the outbox relay."""
