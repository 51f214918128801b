"""Streamlit-side helpers of the app (session state, sidebar, error display).

Only the app (``app.py`` and ``app_pages/``) imports this package; all computation lives in
``scatd_core``, which never imports Streamlit.
"""
