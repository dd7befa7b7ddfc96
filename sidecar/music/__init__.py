"""Music generation through HeartMuLa shims: the API, the tool, and the audio route."""
