"""python -m longread_client.generate [PROTO_DIR]: (re)generate the stubs."""

import sys

from longread_client._stubs import generate

if __name__ == "__main__":
    print(generate(protos=sys.argv[1] if len(sys.argv) > 1 else None))
