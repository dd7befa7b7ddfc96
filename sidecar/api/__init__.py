"""The HTTP face of the sidecar: OpenAI endpoints, health and status, middlewares."""
