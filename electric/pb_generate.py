"""
Regenerate every committed protobuf module from ``proto/*.proto``.

Run ``make compile`` (``python -m electric.pb_generate``) after editing a
.proto.  The generated modules are committed so that running Electric needs
no protoc, and a test per package fails when they are stale
(tests/test_satellite_codec.py, tests/test_vaxine_antidote.py).  The protoc
bundled with grpcio-tools (a dev extra) is used so that every developer
produces identical bytes.

`TARGETS` lists each package directory and the .proto files compiled into it.
Each file is compiled on its own, with ``proto/`` as the only include path,
so adding a target never changes another target's output.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Dict, Iterable, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTO_DIR = os.path.join(ROOT, "proto")

TARGETS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    (os.path.join(ROOT, "electric", "satellite", "pb"), ("satellite.proto", "satellite_v0_2.proto")),
    (os.path.join(ROOT, "electric", "vaxine", "pb"), ("antidote.proto",)),
)


def module_name(proto: str) -> str:
    return proto[: -len(".proto")] + "_pb2.py"


def generate(protos: Iterable[str], out_dir: str) -> Dict[str, bytes]:
    """Compile each of `protos` (names in proto/) into `out_dir`; returns {module file name: bytes}."""
    from grpc_tools import protoc

    protos = tuple(protos)
    for proto in protos:
        rc = protoc.main(["protoc", f"-I{PROTO_DIR}", f"--python_out={out_dir}", os.path.join(PROTO_DIR, proto)])
        if rc != 0:
            raise RuntimeError(f"protoc failed on {proto} (exit {rc})")
    result = {}
    for proto in protos:
        with open(os.path.join(out_dir, module_name(proto)), "rb") as f:
            result[module_name(proto)] = f.read()
    return result


def stale(package_dir: str, protos: Iterable[str]) -> List[str]:
    """Names of the committed modules in `package_dir` that differ from a fresh compile of `protos`."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(protos, tmp)
    result = []
    for name, content in sorted(fresh.items()):
        path = os.path.join(package_dir, name)
        if not os.path.exists(path):
            result.append(name)
            continue
        with open(path, "rb") as f:
            if f.read() != content:
                result.append(name)
    return result


def main(argv=None) -> int:
    for package_dir, protos in TARGETS:
        with tempfile.TemporaryDirectory() as tmp:
            for name in generate(protos, tmp):
                shutil.copyfile(os.path.join(tmp, name), os.path.join(package_dir, name))
                print(f"wrote {os.path.join(package_dir, name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
