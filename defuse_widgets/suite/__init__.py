"""Failure regions as a regression suite: :mod:`~defuse_widgets.suite.export` writes one from
labeled regions, :mod:`~defuse_widgets.suite.files` reads it back, and
:func:`~defuse_widgets.suite.check.check_suite` checks a classifier against it."""
