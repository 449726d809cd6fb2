"""The test modules gpu_check.sh hands to pytest: those holding `gpu`-marked tests that import here.

`pytest -m gpu tests` imports every test module to find the marked tests, and one module importing a
package the host lacks (hydra-core, say) ends the whole run before any GPU test starts. So this imports
each module that holds a `gpu` mark first, the way pytest's default import mode would (its folder and
the folders above it up to the working directory on sys.path), and keeps those that import. A module
that imports a package absent here is left out with one line on stderr naming the package; any other
import error (a module missing inside a package that is here included) keeps the module in, so that
pytest reports it in full.

    python -m benchmarks.gpu_tests tests [--out selected.txt]     # paths, one per line
"""

import argparse
import ast
import importlib
import importlib.util
import pathlib
import sys


def has_gpu_mark(path: pathlib.Path) -> bool:
    """Whether the module's source uses `pytest.mark.gpu` (on a test, a class or `pytestmark`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(isinstance(node, ast.Attribute) and node.attr == "gpu" for node in ast.walk(tree))


def missing_package(path: pathlib.Path, root: pathlib.Path) -> str | None:
    """The package whose absence stops the module from importing here, or None when it imports."""
    folders = [path.parent, *(p for p in path.parent.parents if p.is_relative_to(root))]
    for folder in reversed(folders):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    try:
        importlib.import_module(path.stem)
    except ModuleNotFoundError as error:
        package = (error.name or "").partition(".")[0]
        # A module missing inside a package that is here (lrm_fast.gone) is a bug, not the host's lack.
        if package and importlib.util.find_spec(package) is None:
            return package
    except Exception:
        pass  # not a missing package: pytest collects the module and reports the error
    return None


def select(paths: list[str], root: pathlib.Path) -> list[pathlib.Path]:
    """The test modules under `paths` with gpu tests that import here, in path order."""
    selected = []
    for start in paths:
        start = pathlib.Path(start).resolve()
        candidates = [start] if start.is_file() else sorted(start.rglob("test_*.py"))
        for path in (p for p in candidates if has_gpu_mark(p)):
            missing = missing_package(path, root)
            if missing is None:
                selected.append(path)
            else:
                print(f"left out {path.relative_to(root)}: imports {missing}, absent here", file=sys.stderr)
    return selected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="test folders or files")
    parser.add_argument("--out", help="write the paths here (default: stdout)")
    args = parser.parse_args(argv)
    root = pathlib.Path.cwd().resolve()
    lines = "".join(f"{path.relative_to(root)}\n" for path in select(args.paths, root))
    if args.out:
        with open(args.out, "w") as f:
            f.write(lines)
    print(lines, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
