"""The usage ledger: who used what, in tokens, per request and per day.

``tokens`` reads a request's counts from the backend's ``usage`` (or estimates them),
``ledger`` queues one row per request and writes them in batches from a thread,
``store`` keeps them (the ``UsageStore`` interface, SQLite behind it), ``api`` answers
``/v1/gateway/usage`` and ``/v1/gateway/usage/me``.
"""
