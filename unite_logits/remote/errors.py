"""The one error a remote member raises, naming the member and the server."""

from __future__ import annotations

from ..models.errors import ModelError

__all__ = ["RemoteMemberError"]


class RemoteMemberError(ModelError):
    """A served member cannot be used: unreachable, too slow, a bad answer, or the wrong model.

    A `ModelError`, so the CLI reports it as one line. ``member`` and ``url`` say which
    server failed; ``problem`` says what happened and, where it can, what to do.
    """

    def __init__(self, member: str, url: str, problem: str) -> None:
        super().__init__(f"remote member {member!r} at {url}: {problem}")
        self.member = member
        self.url = url
        self.problem = problem
