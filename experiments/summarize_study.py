"""Rerun the calibration study's summary alone, on the SBC runs of a finished study.

    python experiments/summarize_study.py ROOT [--docs DIR] [--alpha 0.05] [--resamples 200] [--fisher-sims 32]

ROOT is the study's Hydra multirun folder (every cell's ``results.nc`` below it is read);
``python run.py -m experiment=study`` writes the same report at the end of the study. Writes
DIR/results.md, DIR/results.csv and DIR/figures/ (see ``noisydot_sbc.study.write_study_report``).
"""
import argparse
import sys

from noisydot_sbc.study import STUDY_ALPHA, write_study_report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", help="the study's multirun folder (results.nc files below it)")
    ap.add_argument("--docs", default="docs", help="folder for results.md, results.csv and figures/ (default: docs)")
    ap.add_argument("--alpha", type=float, default=STUDY_ALPHA, help="family-wise level of the verdicts")
    ap.add_argument("--resamples", type=int, default=200, help="resamples per power value")
    ap.add_argument("--fisher-sims", type=int, default=32,
                    help="simulations per Fisher information (0: only what the cells stored)")
    args = ap.parse_args(argv)
    try:
        out = write_study_report(args.root, args.docs, alpha=args.alpha, n_resamples=args.resamples,
                                 fisher_sims=args.fisher_sims)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in out["paths"].values():
        print(path)
    for path in out["skipped"]:
        print(f"skipped (not an SBC results file): {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
