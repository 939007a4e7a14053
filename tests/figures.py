"""Figures a test measures, shown in the run's terminal summary (tests/conftest.py collects them).

Import as ``from figures import report_figure``: a module of its own, because ``conftest`` names
several modules in this tree (tests/ascendc has one too) and which one an import finds depends on
the worker.
"""

PENDING_FIGURES: list[str] = []


def report_figure(text: str) -> None:
    """Show ``text`` in the run's summary (call it from a test or a fixture's teardown)."""
    PENDING_FIGURES.append(text)
