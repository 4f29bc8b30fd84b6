"""`ray job submit --working-dir .` on a local cluster: the README's cluster path, through Ray's own
JobSubmissionClient (the dashboard's job server), with this repository uploaded as the job's working directory."""

import sys
import time
from pathlib import Path

import pytest
import ray
from ray.job_submission import JobStatus, JobSubmissionClient

from bench.stock_server import free_port

pytestmark = pytest.mark.service  # starts Ray, a vLLM engine or a server (make test-fast leaves it out)

ROOT = Path(__file__).resolve().parents[1]


def test_submit_a_benchmark_job(tmp_path):
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
             log_to_driver=False)
    try:
        client = JobSubmissionClient(f"http://127.0.0.1:{port}")
        out = tmp_path / "quick.json"
        # `python` on a cluster is the venv the setup commands activate; here that is this interpreter
        job = client.submit_job(entrypoint=f"{sys.executable} -m bench.jct_sim --quick --out {out}",
                                runtime_env={"working_dir": str(ROOT)})
        deadline = time.monotonic() + 300
        while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                             JobStatus.STOPPED}:
            assert time.monotonic() < deadline, f"job {job} still {status} after 300 s"
            time.sleep(1)
        logs = client.get_job_logs(job)
        assert status is JobStatus.SUCCEEDED, logs[-3000:]
        assert out.stat().st_size > 0 and "astraea" in out.read_text()
    finally:
        ray.shutdown()
