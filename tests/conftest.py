"""The project's tests use hpnlab's own pytest fixtures (netns_lab, lab_factory)."""
from hpnlab.testing import REPO, unique_lab_name  # noqa: F401 — for tests that import them from here

pytest_plugins = ["hpnlab.testing"]
