"""Message templates: Jinja2's sandbox, so a template written in the catalog
cannot reach Python internals; HTML templates autoescape, so a person's own
values (a name typed into a form) cannot inject markup."""

from __future__ import annotations

from functools import lru_cache

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.errors import AttimoError

_HTML = ImmutableSandboxedEnvironment(autoescape=True, undefined=StrictUndefined)
_TEXT = ImmutableSandboxedEnvironment(autoescape=False, undefined=StrictUndefined)


class TemplateRenderError(AttimoError):
    """A template that does not render: unknown value, syntax, sandbox refusal."""


@lru_cache(maxsize=512)
def _compile(source: str, html: bool):
    template = (_HTML if html else _TEXT).from_string(source)
    # Jinja keeps a template's globals as a ChainMap over the environment's and
    # copies it into every render's context, a Python-level walk of each map:
    # a third of a short template's render. Neither environment's globals
    # change after start-up, so a plain dict holds the same names.
    template.globals = dict(template.globals)
    return template


def render(source: str, values: dict, *, html: bool = False) -> str:
    """Render one template with profile/offer values; errors name the problem."""
    try:
        return _compile(source, html).render(**values)
    except (TemplateError, TypeError) as exc:
        raise TemplateRenderError(f"template failed: {exc}") from None
