"""Analytics errors, in one hierarchy. Each knows its HTTP status and OpenAI error type;
only the API's edge (`analytics.errors`) turns them into error bodies."""

from __future__ import annotations


class AnalyticsError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.code


class InvalidRequest(AnalyticsError):
    """Parameters that cannot be answered as asked."""

    status = 400
    type = "invalid_request_error"


class QueryRejected(InvalidRequest):
    """Admin SQL that is not a plain SELECT, or that ran over a limit."""

    code = "invalid_sql"


class Unauthenticated(AnalyticsError):
    """The request did not come through the gateway, or carries no caller."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(AnalyticsError):
    """The caller is known but may not see what it asked for."""

    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class WarehouseUnavailable(AnalyticsError):
    """ClickHouse cannot be reached (or has not been migrated yet)."""

    status = 503
    type = "server_error"
    code = "clickhouse_unavailable"


class WarehouseFailure(AnalyticsError):
    """ClickHouse answered with an error; `clickhouse_code` is its number when known."""

    code = "clickhouse_error"

    def __init__(self, message: str, *, clickhouse_code: int | None = None) -> None:
        super().__init__(message)
        self.clickhouse_code = clickhouse_code


class EngineLocked(AnalyticsError):
    """Another process holds the chDB data path; chDB opens a path in one process only."""


class MigrationFailed(AnalyticsError):
    """A migration did not apply; the schema is left at the last recorded version."""
