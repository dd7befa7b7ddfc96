"""Every error class the gateway raises across modules, and the OpenAI error envelope.

``GatewayError`` and its subclasses are what clients see: handlers and the router raise
them; one middleware (``api.middleware``) turns them into
``{"error": {"message", "type", "param", "code"}}`` with the status the OpenAI SDK maps to
the right exception. Messages are shown to clients: they never carry a secret, a backend
URL or a traceback. Each status has its own meaning: a conflict, a rate limit and a full
backend are three classes, not one class with three codes.

The domain errors below them are raised in one module and caught in another, which turns
them into a ``GatewayError``, a tool result, a CLI message or a config issue. An exception
used only inside one module (a parser's internal signal) stays private to that module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
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


class Conflict(GatewayError):
    """The request clashes with what exists (a user name that is taken)."""

    status = 409
    error_type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(GatewayError):
    status = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class BackendOverloaded(GatewayError):
    status = 429
    error_type = "rate_limit_error"
    code = "backend_overloaded"


class RateLimited(GatewayError):
    """This client asked too often, or the gateway limits this kind of request right now
    (failed logins, too many at once, a replay look-up while another scans the log);
    ``Retry-After`` says when to try again. Not a full backend: that is
    ``BackendOverloaded``."""

    status = 429
    error_type = "rate_limit_error"
    code = "rate_limited"


class UpstreamError(GatewayError):
    """The backend answered, but not with something the client can use."""

    status = 502
    error_type = "api_error"
    code = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    """The backend could not be reached: refused, reset, DNS, or TLS failure."""

    code = "upstream_unavailable"


class BadModelReply(GatewayError):
    """An agent's model answered with something that is not a usable chat reply."""

    status = 502
    code = "bad_model_reply"


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


# Domain errors: raised in one module, turned into a client error or a message in another.


@dataclass(frozen=True)
class ConfigIssue:
    path: str
    line: int | None
    message: str


class ConfigError(Exception):
    """The config is invalid; ``issues`` lists every problem found."""

    def __init__(self, source: Path, issues: list[ConfigIssue]) -> None:
        self.source = source
        self.issues = issues
        super().__init__(self.render())

    def render(self) -> str:
        lines = []
        for issue in self.issues:
            where = f"{self.source}:{issue.line}" if issue.line else str(self.source)
            lines.append(f"{where}: {issue.path or '(top level)'}: {issue.message}")
        return "\n".join(lines)


class TlsSetupError(ValueError):
    """A backend's TLS files cannot be loaded; ``field`` names the ``tls`` key at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class SettingsError(ValueError):
    """The environment cannot start a gateway; the message says which variable and why."""


class LaunchError(RuntimeError):
    """``gateway up`` cannot start or reach a process; the message says which and why."""


class StrictJsonError(ValueError):
    """JSON the gateway refuses; ``param`` is the top-level field it sits under, if any."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ToolFailure(Exception):
    """The tool ran but did not succeed; ``kind`` is the error type clients see."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class CalculatorError(ValueError):
    """The expression could not be computed (division by zero, out of range...)."""


class ExpressionError(CalculatorError):
    """The expression is not something this calculator evaluates (a bad argument)."""


class ReplayDiverged(Exception):
    """Replaying a run produced a different request than the recording."""

    def __init__(self, event_index: int, detail: dict[str, Any]) -> None:
        super().__init__(f"event {event_index} differs")
        self.event_index = event_index
        self.detail = detail


class LoginThrottled(Exception):
    """A login refused before its password is checked; ``reason`` says which limit."""

    def __init__(self, retry_after: int, reason: str = "account") -> None:
        super().__init__(f"too many logins ({reason})")
        self.retry_after = retry_after
        self.reason = reason  # "account", "address" or "busy"


class LoginRejected(ValueError):
    """A login refused for its input alone (too long); ``param`` names the field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class PasswordRejected(ValueError):
    """The password cannot be used; the message says why."""


class DatabaseError(Exception):
    """The users database cannot be used; the message says what to do."""


class DuplicateUser(Exception):
    """An account with that name exists already."""


class ReservedUser(ValueError):
    """The local user owns the shared history; it is no account and has no password."""

    def __init__(self, local_user: str) -> None:
        super().__init__(
            f"{local_user!r} is reserved for the history kept when accounts are off; "
            "it cannot be given a password or changed"
        )


class LastAdmin(ValueError):
    """The change would leave no enabled admin; nobody could manage accounts any more."""

    def __init__(self, username: str) -> None:
        super().__init__(
            f"{username!r} is the last enabled admin; make another user an admin first"
        )
        self.username = username
