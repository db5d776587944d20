"""FSDP on the CPU for tests: Lightning's FSDPStrategy on gloo, and a launcher for two ranks."""
import os
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import torch
from lightning.pytorch.strategies import FSDPStrategy

REPO = Path(__file__).resolve().parents[1]


class CPUFSDP(FSDPStrategy):
    """Lightning's FSDPStrategy on CPU, for tests only: Lightning refuses FSDP without a GPU unless the strategy's
    type is not exactly FSDPStrategy, and torch's FSDP needs device_id=cpu, which Lightning does not pass on CPU."""

    @contextmanager
    def model_sharded_context(self):
        import torch.distributed.fsdp.fully_sharded_data_parallel as fsdp

        class OnCPU(fsdp.FullyShardedDataParallel):
            def __init__(self, *args, device_id=None, **kwargs):
                super().__init__(*args, device_id=torch.device("cpu"), **kwargs)

        with mock.patch.object(fsdp, "FullyShardedDataParallel", OnCPU), super().model_sharded_context():
            yield


def run_two_ranks(code: str, cwd: Path, timeout: int = 540) -> None:
    """Run `code` (Python) as ranks 0 and 1 of a gloo job, as torchrun would; fail with both outputs on an error."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "WORLD_SIZE": "2",
           "NODE_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env={**env, "LOCAL_RANK": str(rank)}, cwd=cwd,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in range(2)]
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs[0][-3000:] + outputs[1][-3000:]
