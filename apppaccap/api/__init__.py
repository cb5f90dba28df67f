"""The AJAX API: one registry, handler modules listed explicitly in actions.py."""
