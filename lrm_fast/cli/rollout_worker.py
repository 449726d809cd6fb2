"""lrm-fast-rollout-worker: a rollout worker started apart from the training run (on another host, or by a
SLURM step of its own) that joins it by its rank 0's address.

    lrm-fast-train trainer.max_staleness=1 trainer.remote_rollout_workers=1 trainer.rollout_port=29600
    lrm-fast-rollout-worker --address TRAINER_HOST:29600        (within 5 minutes, anywhere that reaches it)

It takes everything else from rank 0 (the config, the tokenizer, the weights, each request:
lrm_fast/training/rollout_worker.py), samples with this host's CPU threads (trainer.num_threads) and exits
when the run stops it, or with status 1 when the run goes away or its sampling fails.

Batch n goes to worker n mod W, so a run is reproducible across hosts only if they compute alike (the same
hardware and trainer.num_threads) or each command keeps its `--index` over a resume. gloo connects through
the interface of this host's name; where that resolves to a loopback address (127.0.1.1 on many Debian
hosts), set GLOO_SOCKET_IFNAME to the interface that reaches rank 0's host, on both sides. A host that
vanishes without closing its connections (power loss, a partition) is noticed only at the groups' timeout.
"""

import argparse
import sys

from lrm_fast.runtime.worker_group import Address


def parse_address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT (rank 0's host and trainer.rollout_port), got {text!r}"
        )
    return Address(host, int(port))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument(
        "--address", type=parse_address, required=True, help="rank 0's HOST:trainer.rollout_port"
    )
    parser.add_argument(
        "--index",
        type=int,
        default=None,
        help="which of the workers started apart this is (1 .. trainer.remote_rollout_workers), so that each "
        "batch goes to the same host after a resume; default: the next one not yet claimed. Give it to "
        "every command or to none",
    )
    parser.add_argument(
        "--devices",
        default=None,
        help='the GPUs to sample on (CUDA_VISIBLE_DEVICES, e.g. "0,1"); default: none (rollout=hf: the CPU)',
    )
    args = parser.parse_args(argv)
    from lrm_fast.training.rollout_worker import serve  # torch and transformers: after the arguments

    sys.exit(0 if serve(args.address, apart=args.index, devices=args.devices) else 1)


if __name__ == "__main__":
    main()
