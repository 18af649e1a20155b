"""The gateway's domain errors. Core code raises these; each surface renders them in its own wire format.

    GatewayError                      (status, openai_type, anthropic_type, message)
    ├── InvalidRequest                400  bad JSON or schema; ``param`` names the field
    ├── AuthenticationFailed          401  missing, unknown or revoked key
    ├── PermissionDenied              403
    │   └── ModelNotAllowed           403  the key may not use this model
    ├── NotFound                      404  no such endpoint (or not forwarded by the passthrough)
    │   └── ModelNotFound             404  not in the catalogue
    ├── PayloadTooLarge               413  body over ``max_body_bytes``
    ├── RateLimited                   429  RPM/TPM limit; ``retry_after`` seconds
    │   └── BudgetExceeded            429  the key's budget is spent
    ├── UpstreamError                 502  upstream unreachable or broke the protocol
    │   └── UpstreamTimeout           504
    ├── UpstreamRefused               the upstream's own status: it answered a translated request with
    │                                 an error, re-rendered in the client's API (a native error answer
    │                                 is passed back as sent, never raised)
    └── InternalError                 500  an unexpected exception (carries the request id only)

``HTTPException`` never appears below ``gateway/api/``.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson


class GatewayError(Exception):
    status_code: int = 500
    openai_type: str = "server_error"
    anthropic_type: str = "api_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    @property
    def headers(self) -> dict[str, str]:
        return {}


class InvalidRequest(GatewayError):
    status_code = 400
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"


class AuthenticationFailed(GatewayError):
    status_code = 401
    openai_type = "invalid_request_error"
    anthropic_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status_code = 403
    openai_type = "invalid_request_error"
    anthropic_type = "permission_error"
    code = "permission_denied"


class ModelNotAllowed(PermissionDenied):
    code = "model_not_allowed"


class NotFound(GatewayError):
    status_code = 404
    openai_type = "invalid_request_error"
    anthropic_type = "not_found_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class PayloadTooLarge(GatewayError):
    status_code = 413
    openai_type = "invalid_request_error"
    anthropic_type = "request_too_large"
    code = "request_too_large"


class RateLimited(GatewayError):
    status_code = 429
    openai_type = "requests"
    anthropic_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float = 1.0, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"retry-after": str(max(1, int(self.retry_after + 0.999)))}


class BudgetExceeded(RateLimited):
    """The key's budget is spent: waiting does not help, so clients are told not to retry
    (``x-should-retry: false``, honoured by the official SDKs)."""

    openai_type = "insufficient_quota"
    code = "budget_exceeded"

    @property
    def headers(self) -> dict[str, str]:
        return {**super().headers, "x-should-retry": "false"}


class UpstreamError(GatewayError):
    status_code = 502
    openai_type = "server_error"
    anthropic_type = "api_error"
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status_code = 504
    anthropic_type = "timeout_error"
    code = "upstream_timeout"


class InternalError(GatewayError):
    status_code = 500
    openai_type = "server_error"
    anthropic_type = "api_error"
    code = "internal_error"


# (OpenAI type, Anthropic type) of an upstream error status.
_REFUSED_TYPES = {
    400: ("invalid_request_error", "invalid_request_error"),
    401: ("invalid_request_error", "authentication_error"),
    403: ("invalid_request_error", "permission_error"),
    404: ("invalid_request_error", "not_found_error"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_exceeded", "rate_limit_error"),
    529: ("server_error", "overloaded_error"),
}
_KEPT_HEADERS = ("retry-after", "retry-after-ms", "x-should-retry")


class UpstreamRefused(GatewayError):
    """The upstream answered a translated request with an error status: the client gets that status and
    the upstream's message, in the client's own API format."""

    def __init__(self, status_code: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, code="upstream_error")
        self.status_code = status_code
        default = (
            ("invalid_request_error", "invalid_request_error")
            if status_code < 500
            else ("server_error", "api_error")
        )
        self.openai_type, self.anthropic_type = _REFUSED_TYPES.get(status_code, default)
        self._headers = headers or {}

    @property
    def headers(self) -> dict[str, str]:
        return self._headers

    @classmethod
    def from_body(cls, status_code: int, body: bytes, headers: Iterable[tuple[str, str]]) -> UpstreamRefused:
        """From an upstream error answer in either API's format (``{"error": {"message": ...}}``)."""
        message = f"upstream answered {status_code}"
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            obj = None
        err = obj.get("error") if isinstance(obj, dict) else None
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            message = err["message"]
        kept = {k: v for k, v in headers if k in _KEPT_HEADERS}
        return cls(status_code, message, kept)
