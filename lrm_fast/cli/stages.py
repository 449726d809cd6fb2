"""`lrm-fast-stages`: the study's staged context extension in one command (PAPER.md §1).

    lrm-fast-stages outputs/long_stages                       (the long task's three stages)
    lrm-fast-stages outputs/long_stages seed=1 trainer.steps=20
    lrm-fast-stages outputs/study --stages baseline_8k,continue_16k,continue_24k

Runs `lrm-fast-train +experiment=STAGE` for each stage in turn, into OUT/STAGE, with the overrides given;
every stage after the first starts from the one before it (model.path=OUT/PREVIOUS/final_model). Each
runs with trainer.resume=auto, so the command started again keeps the finished stages and continues a
killed one from its last checkpoint. Then `lrm-fast-report` over the stage directories writes OUT/report/
and prints the table: held-out accuracy, response lengths of correct and incorrect answers, truncation
ratio and the zero-advantage split (all-correct, all-wrong), a row per stage.
"""

import argparse
import subprocess
import sys
from pathlib import Path

LONG_STAGES = ("long_192", "long_384", "long_576")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lrm-fast-stages", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory of the stages (OUT/STAGE) and the report")
    parser.add_argument(
        "--stages",
        default=",".join(LONG_STAGES),
        help="comma-separated experiments (conf/experiment), in order (default: %(default)s)",
    )
    parser.add_argument("overrides", nargs="*", help="lrm-fast-train overrides given to every stage")
    args = parser.parse_args(argv)
    args.stages = [name for name in args.stages.split(",") if name]
    if not args.stages:
        parser.error("--stages names no experiment")
    for override in args.overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in ("model.path", "hydra.run.dir", "trainer.resume") or key.startswith("hydra.sweep"):
            parser.error(f"{override}: lrm-fast-stages sets {key} itself for every stage")
    return args


def stage_command(out: Path, stages: list[str], index: int, overrides: list[str]) -> list[str]:
    """The lrm-fast-train command of stage `index`: its experiment, its directory, the previous stage's
    final model after the first, and the overrides given."""
    stage = stages[index]
    command = [sys.executable, "-m", "lrm_fast.cli.train", f"+experiment={stage}"]
    command += [f"hydra.run.dir={out / stage}", "trainer.resume=auto"]
    if index > 0:
        command.append(f"model.path={out / stages[index - 1] / 'final_model'}")
    return command + overrides


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = args.out.resolve()
    for index, stage in enumerate(args.stages):
        print(f"lrm-fast-stages: stage {index + 1}/{len(args.stages)}: {stage} -> {out / stage}", flush=True)
        done = subprocess.run(stage_command(out, args.stages, index, args.overrides), check=False)
        if done.returncode != 0:
            sys.exit(
                f"lrm-fast-stages: stage {stage} failed (exit status {done.returncode}); run the "
                "same command again to continue from its last checkpoint"
            )
    from lrm_fast.cli.report import main as report  # matplotlib only once the stages are done

    report([str(out / stage) for stage in args.stages] + ["--out", str(out / "report")])


if __name__ == "__main__":
    main()
