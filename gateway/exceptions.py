"""Gateway errors. Each knows its HTTP status and OpenAI error type; the edge renders them."""

from __future__ import annotations


class GatewayError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.code
        self.headers = headers or {}


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class Forbidden(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "forbidden"


class RateLimited(GatewayError):
    """429: `rate_limit_exceeded`, or `insufficient_quota` for a spent quota or budget."""

    status = 429

    def __init__(self, message: str, *, code: str, retry_after: int,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message, code=code,
                         headers={**(headers or {}), "Retry-After": str(retry_after)})
        self.type = "insufficient_quota" if code == "insufficient_quota" else "requests"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UnsupportedMediaType(GatewayError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class ServiceUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "service_unavailable"

    def __init__(self, message: str, *, retry_after: int = 1, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after)})


class GatewayTimeout(GatewayError):
    status = 504
    type = "server_error"
    code = "timeout"


class UpstreamError(GatewayError):
    """An error a worker answered with; it carries the worker's status."""

    def __init__(
        self, status: int, type_: str, message: str, *, param: str | None, code: str | None
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.status = status
        self.type = type_
