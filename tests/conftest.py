"""pytest glue: tests are trial TestCases; pytest-twisted runs the reactor."""
