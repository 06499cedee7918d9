"""The project's tests use hpnlab's own pytest fixtures (netns_lab, lab_factory)."""

pytest_plugins = ["hpnlab.testing"]
