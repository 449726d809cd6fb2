"""What gpu_check.sh finds on the host, printed before it spends its budget, and whether it can go on.

Prints the Python, each GPU (name, compute capability, memory), the driver, torch and its CUDA, the
packages the stages import from the host, the C compiler and Python headers that Triton builds its
launcher with, and each carried wheel. Exits with status 2, after one line per missing requirement, when
the check cannot run here; with --dry-run (the CPU rehearsal) a GPU and a C compiler are not required.
With --imports, once the wheels and the project are installed: imports the modules the stages run and
names any package still missing.

    python -m benchmarks.preflight [--dry-run] [--wheels benchmarks/wheels]
    python -m benchmarks.preflight --imports lrm_fast.cli.kernel_check benchmarks.gpu_smoke ...

Standard library and torch only: it runs before the project and the carried wheels are installed.
"""

import argparse
import importlib
import importlib.metadata
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

# (distribution, what needs it) of the packages the stages import from the host.
REQUIRED = (
    ("torch", "every stage"),
    ("triton", "the kernels"),
    ("transformers", "the packed-attention tests and the smoke step"),
    ("numpy", "torch and the benchmarks"),
    ("pytest", "the tests and the benchmarks"),
    ("pytest-benchmark", "the benchmarks"),
    ("pip", "installing the project and the carried wheels next to the host's packages"),
    ("setuptools", "installing the project next to the host's packages"),
)
# Present on the hosts this check was written for; printed, and left to the stages if absent.
OPTIONAL = ("PyYAML", "matplotlib", "tensorboard", "liger-kernel", "flash-attn")
W = 18  # width of the first column
MIN_CAPABILITY = (8, 0)  # bf16 and the sm_80 / sm_90 builds the kernels are compiled for in CI


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def packages() -> list[str]:
    """Print the host's packages; the problems, one line each."""
    problems = []
    print(f"{'python':<{W}}{sys.version.split()[0]} ({sys.executable})")
    for name, needed_by in REQUIRED:
        version = _version(name)
        print(f"{name:<{W}}{version or 'ABSENT'}")
        if version is None:
            problems.append(f"{name} is not installed (needed by {needed_by})")
    for name in OPTIONAL:
        print(f"{name:<{W}}{_version(name) or 'absent'}")
    return problems


def gpus(dry_run: bool) -> list[str]:
    """Print the GPUs, torch's CUDA and the driver; the problems."""
    import torch

    print(f"{'torch CUDA':<{W}}{torch.version.cuda or 'none (a CPU build)'}")
    if not torch.cuda.is_available():
        print(f"{'gpu':<{W}}none")
        return [] if dry_run else ["no CUDA device visible to torch (a CPU build, or no driver)"]
    problems = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        capability = (props.major, props.minor)
        memory = f"{props.total_memory / 2**30:.0f} GiB"
        print(f"{f'gpu {index}':<{W}}{props.name}, sm_{props.major}{props.minor}, {memory}")
        if capability < MIN_CAPABILITY:
            problems.append(f"GPU {index} is sm_{props.major}{props.minor}; the kernels need sm_80 or newer")
    print(f"{'driver':<{W}}{_driver_version()}")
    return problems


def _driver_version() -> str:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "unknown (no nvidia-smi)"
    query = [smi, "--query-gpu=driver_version", "--format=csv,noheader"]
    run = subprocess.run(query, capture_output=True, text=True, timeout=30)
    return run.stdout.strip().splitlines()[0] if run.returncode == 0 and run.stdout.strip() else "unknown"


def compiler(dry_run: bool) -> list[str]:
    """Print the C compiler and Python headers Triton's launcher build uses (as triton/runtime/build.py
    finds them); the problems."""
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang")
    scheme = sysconfig.get_default_scheme()
    scheme = "posix_prefix" if scheme == "posix_local" else scheme  # Debian's, as Triton does
    header = pathlib.Path(sysconfig.get_paths(scheme=scheme)["include"]) / "Python.h"
    first_line = "absent"
    if cc:
        run = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
        first_line = f"{cc}: {(run.stdout.splitlines() or ['?'])[0]}"
    print(f"{'compiler':<{W}}{first_line}")
    print(f"{'Python.h':<{W}}{header if header.exists() else 'absent'}")
    if dry_run:
        return []
    problems = [] if cc else ["no C compiler (gcc, clang or $CC): Triton builds its launcher with it"]
    if not header.exists():
        problems.append(f"no Python headers ({header}): Triton builds its launcher with them")
    return problems


def wheels(folder: pathlib.Path) -> None:
    """Print each carried wheel."""
    found = sorted(folder.glob("*.whl"))
    hint = "" if found else " (none: run benchmarks/fetch_wheels.sh)"
    print(f"{'wheels':<{W}}{len(found)} in {folder}{hint}")
    for wheel in found:
        print(f"{'':<{W}}{wheel.name} ({wheel.stat().st_size / 2**10:.0f} KiB)")


def imports(modules: list[str]) -> list[str]:
    """Import each module the stages run; the problems."""
    problems = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            problems.append(f"{module} imports {error.name}: not on the host, nor among the carried wheels")
            continue
        print(f"{'import':<{W}}{module}: ok")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="no GPU and no C compiler needed")
    parser.add_argument("--wheels", type=pathlib.Path, default=pathlib.Path("benchmarks/wheels"))
    parser.add_argument("--imports", nargs="+", metavar="MODULE", help="only check that these import")
    args = parser.parse_args(argv)
    if args.imports:
        return _report(imports(args.imports))
    problems = packages()
    if _version("torch") is not None:
        problems += gpus(args.dry_run)
    problems += compiler(args.dry_run)
    wheels(args.wheels)
    return _report(problems)


def _report(problems: list[str]) -> int:
    for problem in problems:
        print(f"MISSING: {problem}", file=sys.stderr)
    return 2 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
