"""The andon board: a page for a screen on the shop floor (or a phone) that shows every machine
and its active alerts, follows changes by itself, and lets a technician acknowledge an alert.

::

    view.py     pure: the board as JSON-ready data (machine states, alerts worst first)
    history.py  the alerts' stretches of the last 24 h, per machine (fed by the alert log)
    svg.py      pure: the time line and bar charts as SVG text
    web.py      the server (Starlette on uvicorn): the page, server-sent events, the acknowledgement API and
                the status endpoints on one listener
    static/     index.html, board.css, board.js (no build step, no CDN)

Starlette and uvicorn are imported only by ``web.py``, which the agent imports only when ``[status] listen``
is set.
"""
