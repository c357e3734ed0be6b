"""The web console: server-rendered pages over the core services, mounted at /console.

Like a dialect, it holds no business rules: it reads through the store and changes things through
the core services, with the signed-in person as the actor of every change. docs/CONSOLE.md tells
how it is put together and how to add a page.
"""

from tidehub.console.app import create_console_app

__all__ = ["create_console_app"]
