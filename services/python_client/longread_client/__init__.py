"""A small client of Longread's public longread.v1.JobService (proto/README.md).

    from longread_client import Client
    client = Client("127.0.0.1:50051")              # or $LONGREAD_COORDINATOR
    job = client.submit(["report.txt"], task="question", question="Who signed it?")
    for event in client.watch(job.job_id):          # re-attaches by itself after a drop
        ...
    print(client.answers(job.job_id))               # {document index: answer}

Errors are grpc.RpcError with the server's status code (NOT_FOUND, INVALID_ARGUMENT, ...).
"""

from longread_client.client import Client, Repository, ServerPath, ServerRepository

__all__ = ["Client", "Repository", "ServerPath", "ServerRepository"]
