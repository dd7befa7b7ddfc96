"""Domain errors and the OpenAI error envelope.

Handlers and the router raise these; one middleware (``api.middleware``) turns them into
``{"error": {"message", "type", "param", "code"}}`` with the status the OpenAI SDK maps to
the right exception. Messages are shown to clients: they never carry a secret, a backend
URL or a traceback.
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """An error with a client-facing status and OpenAI-style type/code."""

    status = 500
    error_type = "api_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after
        self.headers = dict(headers or {})

    def envelope(self) -> dict[str, Any]:
        return error_envelope(self.message, self.error_type, self.param, self.code)

    def response_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return headers


def error_envelope(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


class InvalidRequest(GatewayError):
    status = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class CapabilityNotSupported(InvalidRequest):
    code = "capability_not_supported"


class Unauthorized(GatewayError):
    status = 401
    error_type = "authentication_error"
    code = "invalid_api_key"

    def response_headers(self) -> dict[str, str]:
        return {**super().response_headers(), "WWW-Authenticate": 'Bearer realm="gateway"'}


class Forbidden(GatewayError):
    status = 403
    error_type = "permission_error"
    code = "forbidden"


class NotFound(GatewayError):
    status = 404
    error_type = "invalid_request_error"
    code = "not_found"


class UnknownModel(NotFound):
    code = "model_not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    error_type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLarge(GatewayError):
    status = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class BackendOverloaded(GatewayError):
    status = 429
    error_type = "rate_limit_error"
    code = "backend_overloaded"


class UpstreamError(GatewayError):
    """The backend answered, but not with something the client can use."""

    status = 502
    error_type = "api_error"
    code = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    """The backend could not be reached: refused, reset, DNS, or TLS failure."""

    code = "upstream_unavailable"


class BackendNotReady(GatewayError):
    status = 503
    error_type = "api_error"
    code = "backend_not_ready"


class UpstreamTimeout(GatewayError):
    status = 504
    error_type = "api_error"
    code = "upstream_timeout"


class UpstreamStatusError(GatewayError):
    """A 4xx from the backend, relayed with its status and message."""

    error_type = "invalid_request_error"
    code = "upstream_rejected"

    def __init__(self, status: int, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.status = status


class StorageUnavailable(GatewayError):
    """A record could not be written (disk full, read-only, I/O error): nothing was done."""

    status = 503
    error_type = "api_error"
    code = "storage_unavailable"


class UpstreamRateLimited(UpstreamStatusError):
    """A backend's 429, relayed as the rate limit it is (clients back off and retry)."""

    error_type = "rate_limit_error"
    code = "upstream_rate_limited"


class Throttled(GatewayError):
    """The gateway itself limits this kind of request right now (not a backend's limit)."""

    status = 429
    error_type = "rate_limit_error"
    code = "throttled"
