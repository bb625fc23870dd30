"""
Regenerate the protobuf modules of this package from ``proto/*.proto``.

Run ``python -m electric.satellite.pb.generate`` after editing a .proto; the
generated modules are committed (so that running Electric needs no protoc) and
``tests/test_satellite_codec.py`` fails when they are stale.  Uses the protoc
bundled with grpcio-tools so every developer produces identical bytes.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Dict

PROTO_FILES = ("satellite.proto", "satellite_v0_2.proto")
HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(HERE))), "proto")


def module_name(proto: str) -> str:
    return proto[: -len(".proto")] + "_pb2.py"


def generate(out_dir: str) -> Dict[str, bytes]:
    """Compile every .proto into `out_dir`; returns {module file name: bytes}."""
    from grpc_tools import protoc

    for proto in PROTO_FILES:
        rc = protoc.main(["protoc", f"-I{PROTO_DIR}", f"--python_out={out_dir}", os.path.join(PROTO_DIR, proto)])
        if rc != 0:
            raise RuntimeError(f"protoc failed on {proto} (exit {rc})")
    result = {}
    for proto in PROTO_FILES:
        with open(os.path.join(out_dir, module_name(proto)), "rb") as f:
            result[module_name(proto)] = f.read()
    return result


def main(argv=None) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        for name in generate(tmp):
            shutil.copyfile(os.path.join(tmp, name), os.path.join(HERE, name))
            print(f"wrote {os.path.join(HERE, name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
