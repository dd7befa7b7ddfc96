"""The OpenAI Responses API (``/v1/responses``) on any chat backend.

A backend that declares the ``responses`` capability gets the request as it came (the
model name mapped); every other chat backend gets it translated onto chat completions
(``translate``), its answer turned back into a Response object or the Responses stream
events (``events``). Responses the gateway made are stored per token (``store``), so
``previous_response_id`` and ``GET /v1/responses/{id}`` work for the token that made them
and for no one else.
"""
