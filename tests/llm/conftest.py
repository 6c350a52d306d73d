"""The LLM tests use the suite's shared fixtures (tests/conftest.py): `echo` and `embedded`."""
