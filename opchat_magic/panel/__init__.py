"""The chat panel: a view (widgets) and a controller (``ChatPanel``) over the kernel's Session."""
from .controller import SEND_MARK, ChatPanel, last_panel, show_panel

__all__ = ["ChatPanel", "show_panel", "last_panel", "SEND_MARK"]
