"""Generated protobuf modules (see `generate.py`); do not edit them by hand."""
