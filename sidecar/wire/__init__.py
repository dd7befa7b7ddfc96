"""What comes over the wire, checked before any layer acts on it: strict JSON (client
bodies and backend replies alike), request bodies with their size limits, model names and
a browser's ``Origin``. A neutral layer: faces and features import it, it imports only the
base (errors, settings, typedefs)."""
