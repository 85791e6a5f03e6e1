"""Subcommands of this package (placeholder until its issue lands)."""


def register(sub) -> None:  # noqa: ARG001
    return None
