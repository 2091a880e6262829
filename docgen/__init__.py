"""Reference pages of the documentation site, rendered from the code at build time.

Each module renders one page's generated part as Markdown: ``settings`` from the pydantic models,
``cli`` from the Typer app, ``redis_keys`` from ``llmqueue.keys``, ``benchmarks`` from
``bench/results.json``. ``hooks`` is the MkDocs hook that puts them into the pages, so the site
cannot drift from the code: nothing generated is committed.
"""
