"""``llmqueue dashboard``: a live web page over the queue's batches, limits and workers, and its JSON API.

- :mod:`~llmqueue.dashboard.snapshot`: one reading of everything the page shows, through llmqueue's
  public functions (batch status, the limiter's scopes, the worker registry).
- :mod:`~llmqueue.dashboard.hub`: polls that reading at most once per interval, shared by every open page,
  and keeps the short history the charts draw.
- :mod:`~llmqueue.dashboard.access`: who may read and who may act (token, loopback, same origin).
- :mod:`~llmqueue.dashboard.server`: the aiohttp application (``/api/...``, server-sent events, the page).
"""

from llmqueue.dashboard.access import Access
from llmqueue.dashboard.server import create_app, serve

__all__ = ["Access", "create_app", "serve"]
