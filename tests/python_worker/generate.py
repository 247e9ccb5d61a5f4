"""Generates the Python gRPC code from the contract into a directory.

    python3 tests/python_worker/generate.py OUT_DIR [PROTO_ROOT]

PROTO_ROOT defaults to the repository's proto/ folder. The code lands in
OUT_DIR/private_worker/v1/worker_pb2.py and worker_pb2_grpc.py; pass
OUT_DIR to worker.py with --generated (or PRIVATE_WORKER_GENERATED).
Generated code is never committed.
"""

import os
import sys


def generate(out_dir: str, proto_root: str) -> None:
    try:
        import importlib.resources

        from grpc_tools import protoc
    except ImportError:
        raise SystemExit("grpcio-tools is missing: python3 -m pip install -r tests/python_worker/requirements.txt")
    # google/protobuf/*.proto ship inside grpcio-tools.
    bundled = str(importlib.resources.files("grpc_tools") / "_proto")
    os.makedirs(out_dir, exist_ok=True)
    status = protoc.main([
        "protoc",
        f"-I{proto_root}",
        f"-I{bundled}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        os.path.join(proto_root, "private_worker", "v1", "worker.proto"),
    ])
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__)
    here = os.path.dirname(os.path.abspath(__file__))
    root = sys.argv[2] if len(sys.argv) == 3 else os.path.join(here, "..", "..", "proto")
    generate(sys.argv[1], os.path.abspath(root))
    print(f"generated into {sys.argv[1]}")
