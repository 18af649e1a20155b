"""The gateway's domain errors. Core code raises these; each surface renders them in its own wire format.

    GatewayError                      (status, openai_type, anthropic_type, message)
    ├── InvalidRequest                400  bad JSON or schema; ``param`` names the field
    ├── AuthenticationFailed          401  missing, unknown or revoked key
    ├── PermissionDenied              403
    │   └── ModelNotAllowed           403  the key may not use this model
    ├── ModelNotFound                 404  not in the catalogue
    ├── PayloadTooLarge               413  body over ``max_body_bytes``
    ├── RateLimited                   429  RPM/TPM limit; ``retry_after`` seconds
    │   └── BudgetExceeded            429  the key's budget is spent
    ├── UpstreamError                 502  upstream unreachable or broke the protocol
    │   └── UpstreamTimeout           504
    └── InternalError                 500  an unexpected exception (carries the request id only)

``UpstreamHTTPError`` is not a ``GatewayError``: it carries an upstream 4xx/5xx response (status, headers,
body bytes) that is passed back to the client exactly as the upstream sent it.
``HTTPException`` never appears below ``gateway/api/``.
"""

from __future__ import annotations


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


class ModelNotFound(GatewayError):
    status_code = 404
    openai_type = "invalid_request_error"
    anthropic_type = "not_found_error"
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


class UpstreamHTTPError(Exception):
    """An upstream answered with an error status: passed to the client as sent."""

    def __init__(self, status_code: int, headers: list[tuple[str, str]], body: bytes) -> None:
        super().__init__(f"upstream answered {status_code}")
        self.status_code = status_code
        self.headers = headers
        self.body = body
