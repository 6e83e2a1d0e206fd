"""What can go wrong in a worker, in one hierarchy."""

from __future__ import annotations


class InferenceFailure(Exception):
    """Base of worker errors."""


class UnknownModel(InferenceFailure):
    """A model name that the catalog does not know and no path was given for."""


class BadPrompt(InferenceFailure):
    """A request the engine cannot run as asked; the gateway answers it with `status`."""

    def __init__(
        self, message: str, *, status: int = 400, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.param = param
