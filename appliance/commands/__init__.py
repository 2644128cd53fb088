"""Subcommand groups of the `appliance` CLI, one module per capability."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def url_option(f: F) -> F:
    """`--url` on a command that talks to the service (overrides the top-level --url and $APPLIANCE_URL)."""
    def remember(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        if value:
            ctx.obj.url_option = value

    return click.option("--url", expose_value=False, callback=remember, is_eager=False,
                        help="service URL (default: $APPLIANCE_URL, then the config)")(f)
