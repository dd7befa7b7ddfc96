"""People on the LAN: accounts, sessions, settings and chat history in SQLite."""
