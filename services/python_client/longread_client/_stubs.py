"""The generated protobuf and gRPC modules of proto/longread/v1, built with grpcio-tools on
first use (or by `python -m longread_client.generate`) into _generated/, which git ignores."""

import glob
import importlib
import os
import sys
import threading

_HERE = os.path.dirname(os.path.abspath(__file__))
GENERATED_DIR = os.path.join(_HERE, "_generated")
_lock = threading.Lock()


def proto_dir():
    """proto/ of the repository this package lives in, or $LONGREAD_PROTO_DIR."""
    return os.environ.get("LONGREAD_PROTO_DIR") or os.path.normpath(
        os.path.join(_HERE, "..", "..", "..", "proto"))


def generate(out_dir=GENERATED_DIR, protos=None):
    from grpc_tools import protoc  # grpcio-tools, scripts/requirements-dev.txt
    import grpc_tools

    src = protos or proto_dir()
    files = sorted(glob.glob(os.path.join(src, "longread", "v1", "*.proto")))
    if not files:
        raise FileNotFoundError(f"no longread/v1/*.proto under {src}")
    os.makedirs(out_dir, exist_ok=True)
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main(["grpc_tools.protoc", f"-I{src}", f"-I{well_known}",
                      f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", *files])
    if rc != 0:
        raise RuntimeError(f"grpc_tools.protoc failed ({rc}) on {src}")
    # Stale when a .proto is newer than what was generated from it.
    with open(os.path.join(out_dir, "STAMP"), "w") as f:
        f.write("\n".join(files))
    return out_dir


def _stale():
    stamp = os.path.join(GENERATED_DIR, "STAMP")
    if not os.path.exists(stamp):
        return True
    built = os.path.getmtime(stamp)
    return any(os.path.getmtime(p) > built
               for p in glob.glob(os.path.join(proto_dir(), "longread", "v1", "*.proto")))


def load():
    """(job_service_pb2, job_service_pb2_grpc, common_pb2)."""
    with _lock:
        if _stale():
            generate()
        if GENERATED_DIR not in sys.path:
            sys.path.insert(0, GENERATED_DIR)
    return (importlib.import_module("longread.v1.job_service_pb2"),
            importlib.import_module("longread.v1.job_service_pb2_grpc"),
            importlib.import_module("longread.v1.common_pb2"))
