"""Runs every ```sh block of proto/README.md, in order, with bash and the grpcurl that
scripts/requirements-dev.txt installs into .venv, against a live coordinator + worker (and a
second coordinator with bearer tokens and mutual TLS, certificates made here with openssl).
A block starting "# expect: CODE" must fail with that gRPC code; "# sets JOB_ID" gives the
job_id it prints to the blocks after it."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from cluster import Cluster, find_binaries  # noqa: E402
from cli_client_test import prose  # noqa: E402

SOURCE = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
BUILD = os.environ.get("LONGREAD_BUILD_DIR", "build")
MODEL = os.environ.get("LONGREAD_MODEL", "models/SmolLM2-135M-Instruct.Q4_1.gguf")
VENV_BIN = os.path.dirname(sys.executable)
GRPCURL = shutil.which("grpcurl", path=VENV_BIN + os.pathsep + os.environ.get("PATH", ""))


def readme_blocks():
    with open(os.path.join(SOURCE, "proto", "README.md")) as f:
        return re.findall(r"^```sh\n(.*?)^```", f.read(), flags=re.S | re.M)


def make_certs(d):
    def sh(*args):
        subprocess.run(args, check=True, capture_output=True, cwd=d)

    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
       "ca.pem", "-days", "2", "-subj", "/CN=longread-test-ca")
    with open(os.path.join(d, "san.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
           f"{name}.csr", "-subj", f"/CN={name}")
        sh("openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
           "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", "san.ext")
    return {k: os.path.join(d, v) for k, v in
            (("ca", "ca.pem"), ("server_cert", "server.pem"), ("server_key", "server.key"),
             ("client_cert", "client.pem"), ("client_key", "client.key"))}


@unittest.skipUnless(os.path.exists(MODEL), "no model: run scripts/setup.sh")
@unittest.skipUnless(GRPCURL, "no grpcurl: pip install -r scripts/requirements-dev.txt")
class GrpcurlExamplesTest(unittest.TestCase):
    def test_every_example(self):
        blocks = readme_blocks()
        self.assertGreaterEqual(len(blocks), 7)
        with tempfile.TemporaryDirectory(prefix="longread-grpcurl-") as tmp:
            docs = os.path.join(tmp, "docs")
            os.makedirs(docs)
            with open(os.path.join(docs, "report.txt"), "w") as f:
                f.write(prose(20))
            certs = make_certs(tmp)
            tokens = os.path.join(tmp, "tokens")
            with open(tokens, "w") as f:
                f.write("example-reader-token read\n")
            with Cluster(BUILD, MODEL, workers=1, coordinator_args=["--path-root", docs]) as plain, \
                 Cluster(BUILD, MODEL, workers=0, worker_list="127.0.0.1:1", coordinator_args=[
                     "--auth-tokens", tokens, "--tls-cert", certs["server_cert"], "--tls-key",
                     certs["server_key"], "--tls-client-ca", certs["ca"]]) as secure:
                env = dict(os.environ, PATH=VENV_BIN + os.pathsep + os.environ["PATH"],
                           COORDINATOR=plain.address, DOCS=docs, CA=certs["ca"],
                           CERT=certs["client_cert"], KEY=certs["client_key"],
                           SECURE_COORDINATOR=secure.address,
                           LONGREAD_TOKEN="example-reader-token")
                outputs = []
                for block in blocks:
                    expect = re.match(r"# expect: (\w+)", block)
                    r = subprocess.run(["bash", "-c", ("" if expect else "set -e\n") + block],
                                       env=env, capture_output=True, text=True, timeout=600)
                    outputs.append(r.stdout)
                    if expect:
                        self.assertNotEqual(r.returncode, 0, block)
                        self.assertIn(f"Code: {expect.group(1)}", r.stderr, block)
                        continue
                    self.assertEqual(r.returncode, 0, f"{block}\n{r.stderr}")
                    if block.startswith("# sets JOB_ID"):
                        response = json.loads(r.stdout)
                        env["JOB_ID"] = response["job_id"]
                        self.assertEqual(len(response["job"]["documents"]), 2)
                all_output = "\n".join(outputs)
                self.assertIn("longread.v1.JobService", outputs[0])
                self.assertIn('"status": "SERVING"', outputs[0])
                self.assertIn('"job_done"', all_output)
                self.assertIn("JOB_STATE_SUCCEEDED", all_output)

                # The CLI over the same mutual TLS and token.
                cli = find_binaries(BUILD)["cli"]
                r = subprocess.run([cli, "list", "--coordinator", secure.address, "--tls-ca",
                                    certs["ca"], "--tls-cert", certs["client_cert"], "--tls-key",
                                    certs["client_key"]], env=env, capture_output=True, text=True)
                self.assertEqual(r.returncode, 0, r.stderr)
                r = subprocess.run([cli, "list", "--coordinator", secure.address, "--tls-ca",
                                    certs["ca"]], env=env, capture_output=True, text=True)
                self.assertNotEqual(r.returncode, 0)  # no client certificate: refused


if __name__ == "__main__":
    unittest.main()
