"""Request ids, client addresses and the JSON access log."""
