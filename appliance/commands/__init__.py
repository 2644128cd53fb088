"""Subcommand groups of the `appliance` CLI, one module per capability."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from appliance.domain import patterns

if TYPE_CHECKING:
    from appliance.client import Client

F = TypeVar("F", bound=Callable[..., Any])


class IdType(click.ParamType[str]):
    """A request or proposal id as the service issues them: refused with a clear message (never a traceback from
    building a URL) when it could not be one."""

    name = "ID"
    pattern = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if not self.pattern.fullmatch(text):
            self.fail(f"{text!r} is not an id (letters, digits, '.', '_' and '-', at most 128)", param, ctx)
        return text


ID = IdType()


class AnchorType(click.ParamType[str]):
    """A policy bundle hash (64 lowercase hex digits) as `appliance init` prints it."""

    name = "HASH"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip().lower()
        if not patterns.HEX64.fullmatch(text):
            self.fail(f"{value!r} is not a policy bundle hash (64 hex digits)", param, ctx)
        return text


ANCHOR = AnchorType()


def url_option(f: F) -> F:
    """`--url` on a command that talks to the service (overrides the top-level --url and $APPLIANCE_URL)."""
    def remember(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        if value:
            ctx.obj.url_option = value

    return click.option("--url", expose_value=False, callback=remember, is_eager=False,
                        help="service URL (default: $APPLIANCE_URL, then the config)")(f)


def warn_unpinned(client: Client, as_json: bool) -> None:
    """Say, before an approval, that the policy shown is only the service's word when no anchor is pinned."""
    if client.trust_anchor is None and not as_json:
        click.echo("warning: no trust anchor pinned (--trust-anchor or $APPLIANCE_TRUST_ANCHOR): the policy shown "
                   "is the service's word, not verified from the first bundle", err=True)
