"""Local AI Gateway sidecar: everything behind Caddy's unix socket.

Layers, top to bottom; a module imports only from its own layer's package or from
layers below it (``lint-imports`` checks this in ``tools/test``; the contract is in
``pyproject.toml``). Packages on one line are independent of each other.

1. ``cli``, then ``app``, ``launcher``, ``mock_backends``: entry points and wiring.
2. ``api``, ``ui``: the faces (OpenAI and ``/mcp`` endpoints, middlewares; the web UI).
3. ``agents``, ``images``, ``music``, ``responses``, then ``toolbus``, ``users``,
   ``usage``: the features.
4. ``observability`` (access log, client address, metrics read from the live registry)
   and ``reload`` (loads the config, swaps in the registry built from it).
5. ``routing``: registry, router, admission, upstream clients, one backend call.
6. ``config``: the YAML's schema, meaning checks and backend TLS contexts.
7. ``auth``, ``ports`` (a free loopback port for a child), ``sandbox``, ``storage``,
   ``wire`` (strict JSON, request bodies, model names, same-origin), then ``sqlite``
   (how every SQLite file is opened and migrated), then ``typedefs`` (the typed app
   keys; it imports the types it names for the type checker only), then ``settings``,
   then ``errors``: the base.
"""

__version__ = "0.1.0"
