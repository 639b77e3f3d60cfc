"""The gateway process: WebSocket confirmations per user, bet lookups, health, metrics and
the demo bet slip."""
