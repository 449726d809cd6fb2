"""`lrm-fast-data`: fetch the study's data (conf/catalogue.yaml) into the HF cache ahead of time.

For clusters whose compute nodes have no network: run it where there is network, with the same
HF_HOME / HF_DATASETS_CACHE as the jobs, then run the jobs with HF_HUB_OFFLINE=1. Each entry is loaded
exactly as a run loads it (lrm_fast.data.loading.load_rows), so what it prints is what a run reads:
the number of rows and a hash of their content (sha256 of the rows as canonical JSON; equal hashes,
equal rows). Exits with status 1 if any entry failed, after trying all of them.

    lrm-fast-data                     # every entry
    lrm-fast-data aime24 amc          # these entries
    lrm-fast-data --list              # the catalogue, nothing downloaded
"""

import argparse
import sys

from lrm_fast.config.datasets import DatasetSource, catalogue


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lrm-fast-data", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="catalogue entries to fetch (default: all)")
    parser.add_argument("--list", action="store_true", help="print the entries and their sources only")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    entries = catalogue()
    unknown = sorted(set(args.names) - set(entries))
    if unknown:
        sys.exit(f"lrm-fast-data: error: unknown entries {unknown}; the catalogue has {', '.join(entries)}")
    selected = {name: entries[name] for name in args.names or entries}
    if args.list:
        for source in selected.values():
            print(f"{source.describe()}\n    {source.note}")
        return 0
    failed = [name for name, source in selected.items() if not fetch(name, source)]
    if failed:
        sys.exit(f"lrm-fast-data: failed: {', '.join(failed)}")
    return 0


def fetch(name: str, source: DatasetSource) -> bool:
    """Load one entry into the cache and print its rows and content hash (or why it failed)."""
    from lrm_fast.data.loading import content_hash, load_rows  # imports `datasets`

    try:
        rows = load_rows(source)
    except (ValueError, FileNotFoundError) as error:
        print(f"{name:<24} FAILED {error}", flush=True)
        return False
    print(f"{name:<24} {len(rows):>7} rows  sha256:{content_hash(rows)}  {source.path}", flush=True)
    return True


if __name__ == "__main__":
    sys.exit(main())
