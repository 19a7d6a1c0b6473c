"""Built-in plugins: registered through the same hooks a third-party package uses.

Each module implements some of the hooks of ``mamlflow.core.hookspecs``; the engine's plugin
host imports them (``mamlflow.engine.host.BUILTINS``) before any installed entry point. Importing
this package imports none of them.
"""
