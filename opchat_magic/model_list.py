"""Which models the configured provider's server offers (``%opchat models``).

One path for every front door: :func:`model_listing` takes the settings (and
optionally another provider's name), asks that provider's server with its
configured endpoint, and returns a :class:`ModelListing` that renders itself
as Markdown (model ids escaped: they come from the server) or plain text,
marking the model turns will use. A protocol without a listing (AI Engine)
is an answer too, said plainly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from .errors import ModelListingUnsupportedError

__all__ = ["ModelListing", "model_listing"]

LISTING_TIMEOUT = 20.0  # seconds for the whole request


@dataclass
class ModelListing:
    provider: str  # the registered name asked
    endpoint: str  # where (credential-free), "" for the provider's default
    models: List[str] = field(default_factory=list)
    configured: str = ""  # the model turns send ("" when the server picks)
    unsupported: str = ""  # why there is no listing, when the protocol has none

    def markdown(self) -> str:
        from .render.sanitize import escape_text

        where = f" at {escape_text(self.endpoint)}" if self.endpoint else ""
        if self.unsupported:
            return f"**{escape_text(self.provider)}**{where}: {escape_text(self.unsupported)}"
        if not self.models:
            return f"**{escape_text(self.provider)}**{where} lists no models."
        lines = [f"**{escape_text(self.provider)}**{where} offers {len(self.models)} model"
                 f"{'s' if len(self.models) != 1 else ''}:", ""]
        for model in self.models:
            mark = " ← configured" if model == self.configured else ""
            lines.append(f"- {escape_text(model)}{mark}")
        if self.configured and self.configured not in self.models:
            lines += ["", f"The configured model {escape_text(self.configured)} is not among them: "
                          f"`%config OpchatMagics.model = '...'` picks one."]
        return "\n".join(lines)

    def plain(self) -> str:
        if self.unsupported:
            return f"{self.provider}: {self.unsupported}"
        return "\n".join(f"{'*' if m == self.configured else ' '} {m}" for m in self.models) or "(no models)"


async def model_listing(settings, provider: Optional[str] = None) -> ModelListing:
    """Ask ``provider``'s server (default: the configured provider) for its models.

    Errors of the request (unreachable, HTTP status) are the providers' typed
    errors; a protocol without a listing gives a listing with ``unsupported``.
    """
    from .providers.http import public_url
    from .settings import provider_class, provider_endpoint

    name = (provider or settings.provider).strip()
    cls = provider_class(name)
    kwargs = dict(settings.provider_options)
    kwargs.setdefault("connect_timeout", settings.connect_timeout)
    # read_timeout None: the provider's own default (AI Engine's is long); a listing is short either way.
    read = settings.read_timeout
    kwargs.setdefault("read_timeout", LISTING_TIMEOUT if read is None else min(read, LISTING_TIMEOUT))
    endpoint = provider_endpoint(settings, name)
    if endpoint:
        kwargs.setdefault(getattr(cls, "url_kwarg", "url"), endpoint)
    own_model = settings.model if name.lower() == settings.provider.strip().lower() else ""
    configured = own_model or getattr(cls, "default_model", "") or ""
    resolve = getattr(cls, "resolve_base_url", None)
    shown = public_url(resolve(endpoint or None)) if resolve is not None else (public_url(endpoint) if endpoint else "")
    try:
        models = await cls.list_models(**kwargs)
    except ModelListingUnsupportedError as exc:
        return ModelListing(name, shown, unsupported=str(exc))
    if not configured and models and getattr(cls, "discover_model", False):
        configured = models[0]  # what the provider will pick: the first one listed
    return ModelListing(name, shown, list(models), configured)
