"""Known defects, put back one at a time: each patch here re-introduces one, and at least one of the tests
that guard against it must then fail. Run from the repository root on a clean working tree:

    python tests/mutations/run.py [PATCH ...]

For each patch: `git apply`, the tests listed for it, `git apply -R`. Prints which tests failed under each
patch, and exits 1 if a patch left every test passing (a defect the tests no longer catch) or did not apply.
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

# patch -> the tests that must catch it (pytest arguments)
GUARDS = {
    "1_tokenizer_save_load.patch": ["tests/data/test_tokenizer.py"],
    "2_rollback_restores_the_sampling_weights.patch": [
        "tests/training/test_rollback_versions.py",
        "tests/training/test_guard.py",
    ],
    "3_staleness_ignores_epochs.patch": ["tests/training/test_combinations.py", "-k", "mb1x2 and not lag0"],
    "4_sync_checkpoint_requests_old_batches.patch": ["tests/training/test_async_modes.py"],
    "5_zero_variance_out_of_the_cut.patch": ["tests/batching/test_drop_zero_variance.py"],
}


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)


def _failed_tests(tests: list[str]) -> list[str]:
    command = [sys.executable, "-m", "pytest", "-q", "-rf", "--benchmark-disable", "-p", "no:cacheprovider"]
    result = subprocess.run([*command, *tests], cwd=ROOT, capture_output=True, text=True)
    return [line.split()[1] for line in result.stdout.splitlines() if line.startswith("FAILED ")]


def main(names: list[str]) -> int:
    if _git("status", "--porcelain", "--untracked-files=no").stdout.strip():
        sys.exit("run.py: the working tree has changes; commit or stash them first")
    missed = 0
    for name in names or GUARDS:
        patch = HERE / name
        if _git("apply", str(patch)).returncode != 0:
            print(f"{name}: DOES NOT APPLY")
            missed += 1
            continue
        try:
            failed = _failed_tests(GUARDS[name])
        finally:
            _git("apply", "-R", str(patch))
        print(f"{name}: {len(failed)} failed" + "".join(f"\n    {test}" for test in failed))
        missed += not failed
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
