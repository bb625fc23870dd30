"""
Regenerate the Satellite protobuf modules of this package from ``proto/``.

The generator itself is shared (`electric.pb_generate`, run by ``make
compile`` for every package); this module keeps the Satellite entry point and
the names tests/test_satellite_codec.py uses for its freshness check.
"""

from __future__ import annotations

import os
import sys
from typing import Dict

from electric import pb_generate

PROTO_FILES = ("satellite.proto", "satellite_v0_2.proto")
HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = pb_generate.PROTO_DIR
module_name = pb_generate.module_name


def generate(out_dir: str) -> Dict[str, bytes]:
    """Compile the Satellite .proto files into `out_dir`; returns {module file name: bytes}."""
    return pb_generate.generate(PROTO_FILES, out_dir)


def main(argv=None) -> int:
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for name in generate(tmp):
            shutil.copyfile(os.path.join(tmp, name), os.path.join(HERE, name))
            print(f"wrote {os.path.join(HERE, name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
