"""The fault suite (issue 5); see _harness.py."""
