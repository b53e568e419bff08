"""opchat-magic: streaming chat models in Jupyter.

``%load_ext opchat_magic`` registers the ``%%opchat`` magics. Importing this
package stays cheap (aiohttp and ipywidgets load on first use), because
``%load_ext`` time is something users feel on every kernel start.
"""
__version__ = "0.1.0"


def __getattr__(name):
    # Public names load on first use, so `%load_ext` does not pay for widgets or aiohttp.
    if name == "ChatPanel":
        from .panel import ChatPanel

        return ChatPanel
    if name == "LocalServer":
        from .server import LocalServer

        return LocalServer
    raise AttributeError(f"module 'opchat_magic' has no attribute {name!r}")


def load_ipython_extension(ipython):
    from .ipython.magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython):
    from .ipython.magics import unload_ipython_extension as unload

    unload(ipython)
