"""The thin wrapper over the generated stubs."""

import io
import os
import tarfile
import time

import grpc

from longread_client import _stubs

pb, pb_grpc, common = _stubs.load()

_TASKS = {"summarize": common.TASK_KIND_SUMMARIZE, "analyze_code": common.TASK_KIND_ANALYZE_CODE,
          "question": common.TASK_KIND_QUESTION, "custom": common.TASK_KIND_CUSTOM}
_STATES = {"queued": common.JOB_STATE_QUEUED, "running": common.JOB_STATE_RUNNING,
           "succeeded": common.JOB_STATE_SUCCEEDED, "failed": common.JOB_STATE_FAILED,
           "cancelled": common.JOB_STATE_CANCELLED}
# Codes after which a watch re-attaches from the last offset seen.
_REATTACH = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED,
             grpc.StatusCode.DEADLINE_EXCEEDED}


class ServerPath(str):
    """A file (or directory: a repository) on the coordinator's host, under its --path-root."""


class ServerRepository(str):
    """A tar archive or directory on the coordinator's host, read as one repository."""


class Repository(str):
    """A local tar archive or directory sent as one repository document."""


class Client:
    def __init__(self, target=None, token=None, root_certificates=None, private_key=None,
                 certificate_chain=None, server_name=None):
        """TLS when any of the PEM byte strings is given; token: the bearer token
        (default $LONGREAD_TOKEN)."""
        self.target = target or os.environ.get("LONGREAD_COORDINATOR") or "127.0.0.1:50051"
        self._token = token if token is not None else os.environ.get("LONGREAD_TOKEN", "")
        options = [("grpc.max_receive_message_length", 64 << 20),
                   ("grpc.max_send_message_length", 64 << 20)]
        if root_certificates or private_key or certificate_chain:
            credentials = grpc.ssl_channel_credentials(root_certificates, private_key,
                                                       certificate_chain)
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            self._channel = grpc.secure_channel(self.target, credentials, options)
        else:
            self._channel = grpc.insecure_channel(self.target, options)
        self._stub = pb_grpc.JobServiceStub(self._channel)

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _metadata(self):
        return [("authorization", f"Bearer {self._token}")] if self._token else []

    # --- SubmitJob ---------------------------------------------------------------------------

    def submit(self, documents, task="summarize", question="", instruction="", options=None,
               idempotency_key="", name="", chunk_bytes=1 << 20, timeout=None,
               job_deadline_seconds=None):
        """documents: a list of local paths (str / os.PathLike), bytes, (name, bytes),
        (name, binary file object), ServerPath, ServerRepository or Repository. options: JobOptions
        fields (memory_k, window, sinks, segment_tokens, block_tokens, recall_blocks,
        max_new_tokens, temperature, top_p, seed). Files are streamed in chunks. `timeout` limits
        this call; `job_deadline_seconds` limits the job (JobHeader.timeout): past it the job ends
        FAILED with a DEADLINE_EXCEEDED error event. Returns the SubmitJobResponse (job_id,
        deduplicated, job)."""
        if isinstance(documents, (str, bytes, os.PathLike)):
            documents = [documents]
        if question and task == "summarize":
            task = "question"
        if instruction and task == "summarize":
            task = "custom"
        header = pb.JobHeader(
            task=common.Task(kind=_TASKS[task], question=question, instruction=instruction),
            options=common.JobOptions(**(options or {})), idempotency_key=idempotency_key,
            name=name)
        if job_deadline_seconds is not None:
            header.timeout.FromNanoseconds(int(job_deadline_seconds * 1e9))
        requests = self._submit_requests(header, list(documents), chunk_bytes)
        return self._stub.SubmitJob(requests, metadata=self._metadata(), timeout=timeout)

    def _submit_requests(self, header, documents, chunk_bytes):
        yield pb.SubmitJobRequest(header=header)
        for i, doc in enumerate(documents):
            text = pb.DOCUMENT_FORMAT_TEXT
            repo = pb.DOCUMENT_FORMAT_REPOSITORY
            if isinstance(doc, ServerRepository):
                yield pb.SubmitJobRequest(document=pb.DocumentStart(
                    name=str(doc), format=repo, server_path=str(doc)))
            elif isinstance(doc, ServerPath):
                yield pb.SubmitJobRequest(document=pb.DocumentStart(
                    name=str(doc), server_path=str(doc)))
            elif isinstance(doc, Repository):
                yield pb.SubmitJobRequest(document=pb.DocumentStart(name=str(doc), format=repo))
                if os.path.isdir(doc):
                    yield from _chunks(_directory_tar(doc), chunk_bytes)
                else:
                    with open(doc, "rb") as f:
                        yield from _chunks(f, chunk_bytes)
            elif isinstance(doc, bytes):
                yield pb.SubmitJobRequest(document=pb.DocumentStart(name=f"document-{i}",
                                                                    format=text))
                yield from _chunks(io.BytesIO(doc), chunk_bytes)
            elif isinstance(doc, tuple):
                doc_name, content = doc
                yield pb.SubmitJobRequest(document=pb.DocumentStart(name=doc_name, format=text))
                source = io.BytesIO(content) if isinstance(content, bytes) else content
                yield from _chunks(source, chunk_bytes)
            else:
                path = os.fspath(doc)
                yield pb.SubmitJobRequest(document=pb.DocumentStart(name=path, format=text))
                with open(path, "rb") as f:
                    yield from _chunks(f, chunk_bytes)

    # --- WatchJob ----------------------------------------------------------------------------

    def watch(self, job_id, from_offset=0, reattach_seconds=300.0):
        """Yields the job's JobEvents from from_offset until JobDone. A dropped stream is
        re-attached from the offset after the last event seen (no event missed or repeated),
        retrying for up to reattach_seconds; other errors raise grpc.RpcError."""
        next_offset = from_offset
        last_contact = time.monotonic()
        backoff = 0.2
        while True:
            error = None
            try:
                request = pb.WatchJobRequest(job_id=job_id, from_offset=next_offset)
                for event in self._stub.WatchJob(request, metadata=self._metadata()):
                    last_contact = time.monotonic()
                    backoff = 0.2
                    next_offset = event.offset + 1
                    yield event
                    if event.HasField("job_done"):
                        return
            except grpc.RpcError as e:
                if e.code() not in _REATTACH:
                    raise
                error = e
            if time.monotonic() - last_contact > reattach_seconds:
                if error is not None:
                    raise error
                raise TimeoutError(f"job {job_id}: no stream for {reattach_seconds} s")
            time.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    def answers(self, job_id, from_offset=0):
        """Watches to the end; {document index: answer text} and the final JobState name."""
        parts, state = {}, None
        for event in self.watch(job_id, from_offset):
            if event.HasField("answer"):
                parts.setdefault(event.answer.document_index, []).append(event.answer.text)
            elif event.HasField("job_done"):
                state = common.JobState.Name(event.job_done.state)
        return {i: "".join(p) for i, p in parts.items()}, state

    # --- GetJob, ListJobs, CancelJob --------------------------------------------------------

    def get(self, job_id, timeout=None):
        return self._stub.GetJob(pb.GetJobRequest(job_id=job_id), metadata=self._metadata(),
                                 timeout=timeout)

    def list(self, page_size=0, page_token="", state=None, timeout=None):
        request = pb.ListJobsRequest(page_size=page_size, page_token=page_token,
                                     state=_STATES[state] if state else 0)
        return self._stub.ListJobs(request, metadata=self._metadata(), timeout=timeout)

    def cancel(self, job_id, timeout=None):
        return self._stub.CancelJob(pb.CancelJobRequest(job_id=job_id),
                                    metadata=self._metadata(), timeout=timeout)


def _chunks(source, chunk_bytes):
    while True:
        data = source.read(chunk_bytes)
        if not data:
            return
        yield pb.SubmitJobRequest(chunk=data)


class _Pipe(io.RawIOBase):
    """Collects what tarfile writes, handed out by the generator that drives it."""

    def __init__(self):
        self.buffer = bytearray()

    def writable(self):
        return True

    def write(self, b):
        self.buffer += b
        return len(b)


class _TarStream:
    """A directory as a tar stream read in pieces, one file in memory at a time at most."""

    def __init__(self, directory):
        self._pieces = self._generate(directory)
        self._pending = b""

    def _generate(self, directory):
        pipe = _Pipe()
        with tarfile.open(fileobj=pipe, mode="w|", format=tarfile.GNU_FORMAT) as tar:
            for path in _files_under(directory):
                tar.add(path, arcname=os.path.relpath(path, directory), recursive=False)
                yield bytes(pipe.buffer)
                pipe.buffer.clear()
        yield bytes(pipe.buffer)

    def read(self, n):
        while len(self._pending) < n:
            piece = next(self._pieces, None)
            if piece is None:
                break
            self._pending += piece
        out, self._pending = self._pending[:n], self._pending[n:]
        return out


def _directory_tar(directory):
    return _TarStream(directory)


def _files_under(directory):
    """Regular files, sorted, .git and symlinks skipped (as `longread submit --repository`)."""
    found = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if d != ".git" and not os.path.islink(os.path.join(root, d))]
        for name in files:
            path = os.path.join(root, name)
            if os.path.isfile(path) and not os.path.islink(path):
                found.append(path)
    return sorted(found)
