"""Measure the copy bandwidth of the device (CUDA if present, else host memory), the ceiling that the
kernel benchmarks' GB/s are compared with.

    python -m benchmarks.copy_bandwidth [--out copy.json] [--gib 4]

A large buffer of random bytes is copied into another; bytes read plus bytes written over the median time
of several copies, after a warm-up copy. The buffer is far larger than any cache.
"""

import argparse
import json
import statistics
import time

import torch


def copy_gbps(device: torch.device, nbytes: int, repeats: int) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_()  # not zeros: see METHOD notes
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: first-touch page faults on CPU, lazy initialisation on CUDA
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        times.append(time.perf_counter() - start)
    return 2 * nbytes / statistics.median(times) / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--out", help="write the result here as JSON")
    parser.add_argument("--gib", type=float, help="buffer size (default: 4 GiB on CUDA, 0.5 GiB on CPU)")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gib = args.gib or (4.0 if device.type == "cuda" else 0.5)
    gbps = copy_gbps(device, int(gib * 2**30), args.repeats)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {"device": name, "bytes": int(gib * 2**30), "gbps": gbps}
    print(json.dumps(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
