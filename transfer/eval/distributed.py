"""Running evaluation under torchrun / accelerate launch: shard index, barrier, GPU share.

Rank k of N decodes every N-th chunk of work (transfer.eval.evaluate.chunks_to_do), the same chunks a
single process would, so results do not depend on the number of processes.
"""

import os
import subprocess
from datetime import timedelta

from train.errors import UserError
from transfer.eval.placement import local_gpus


def this_shard() -> tuple[int, int]:
    """(rank, world_size) from torchrun / accelerate launch's environment; (0, 1) alone."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def barrier(world_size: int) -> None:
    """Wait for every rank (torch.distributed gloo over TCP: no GPU needed, works across nodes).

    The timeout is a week: ranks finish their shards hours apart; a crashed rank still ends
    the job at once, because torchrun stops every rank when one fails.
    """
    if world_size == 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(days=7))
    dist.barrier()


def pin_gpus_of_this_process() -> None:
    """Under torchrun on a GPU node, give each of its processes an equal share of the GPUs.

    Must run before CUDA initialises (CUDA_VISIBLE_DEVICES is read once): first thing in main().
    """

    if int(os.environ.get("LOCAL_WORLD_SIZE", "1")) == 1:
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        try:
            listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                     check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return  # no NVIDIA GPU: CPU processes
        visible = ",".join(str(i) for i, line in enumerate(listing.splitlines())
                           if line.startswith("GPU "))
    if visible:
        try:
            mine = local_gpus(int(os.environ["LOCAL_RANK"]),
                              int(os.environ["LOCAL_WORLD_SIZE"]), visible.split(","))
        except ValueError as err:
            raise UserError(f"{err}: start at most one process per GPU (--nproc_per_node)") from None
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
