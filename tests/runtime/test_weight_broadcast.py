"""benchmarks/weight_broadcast.py: the weights of a model's shape reach a second process over a gloo
broadcast, bucket by bucket, unchanged."""

import pytest
import torch

from benchmarks import weight_broadcast


def test_every_tensor_arrives_unchanged_over_several_buckets():
    """The CPU path; gpu_check.sh's weight_sync stage runs the CUDA ones at full size, failing on a changed
    tensor as this does."""
    shapes = weight_broadcast.state_shapes("tiny-long-v32k")
    nbytes = 2 * sum(s.numel() for _, s in shapes)  # bf16
    argv = ["--shape", "tiny-long-v32k", "--bucket-mb", "1", "--repeats", "1", "--copy-gib", "0.01"]
    result = weight_broadcast.measure(weight_broadcast.parse_args(argv))
    assert result["mode"] == "gloo"
    assert result["equal"] and result["bytes"] == nbytes and result["tensors"] == len(shapes)
    meta = [torch.empty(s, dtype=torch.bfloat16, device="meta") for _, s in shapes]
    assert result["buckets"] == len(weight_broadcast.bucket_indices(meta, 2**20)) >= 3  # several broadcasts
    assert result["gbps"] > 0 and result["copy_gbps"] > 0


def test_the_shapes_offered_are_those_of_the_update_benchmark():
    from benchmarks.update_at_length import SHAPES

    assert set(weight_broadcast.SHAPE_NAMES) == set(SHAPES)


def test_buckets_are_the_rollout_workers_own():
    """Up to the limit each, in order, a larger tensor alone (lrm_fast/runtime/worker_group.py: buckets)."""
    tensors = [torch.zeros(n, dtype=torch.uint8) for n in (3, 2, 7, 1, 5)]
    assert weight_broadcast.bucket_indices(tensors, 6) == [[0, 1], [2], [3, 4]]
    assert weight_broadcast.bucket_indices(tensors, 100) == [[0, 1, 2, 3, 4]]


def test_a_changed_byte_changes_the_checksum():
    a = torch.randn(1000).to(torch.bfloat16)
    b = a.clone()
    b.view(torch.uint8)[17] ^= 1
    c = a.clone()
    c.view(torch.uint8)[[3, 4]] = c.view(torch.uint8)[[4, 3]]  # two bytes swapped
    sums = weight_broadcast.checksums([a, a.clone(), b, c])
    assert sums[0] == sums[1] and sums[0] != sums[2] and sums[0] != sums[3]


pytestmark = pytest.mark.usefixtures("one_thread")
