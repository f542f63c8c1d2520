"""The `edge` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


class UserError(Exception):
    """A mistake the user can fix: printed as one line, exit status 2."""


def _recognizer(args):
    from edge.vision.recognizer import PlateRecognizer, RecognizerConfig, default_model_dir

    cfg = RecognizerConfig(model_dir=Path(args.models) if args.models else default_model_dir(), threads=args.threads)
    if getattr(args, "min_confidence", None) is not None:
        cfg.min_confidence = args.min_confidence
    return PlateRecognizer(cfg)


def cmd_eval(args) -> int:
    from edge.evaluate import run_crops_eval, run_eval

    if args.crops:
        from edge.vision.reader import PlateReader
        from edge.vision.recognizer import READER_FILE, default_model_dir

        reader = PlateReader(Path(args.models or default_model_dir()) / READER_FILE, threads=args.threads)
        run_crops_eval(Path(args.crops), reader, Path(args.out) if args.out else None)
        return 0
    if not args.dir:
        raise UserError("eval needs a folder (DIR) or --crops DIR")
    if not args.out:
        raise UserError("eval needs --out PRED.jsonl")
    run_eval(Path(args.dir), Path(args.out), _recognizer(args))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge", description="Edge licence-plate reader")
    sub = p.add_subparsers(dest="cmd", required=True)

    e = sub.add_parser("eval", help="score the detector+reader on a labelled folder")
    e.add_argument("dir", nargs="?", help="folder in the openalpr-endtoend layout (DIR/<region>/<image> + .txt)")
    e.add_argument("--out", help="write one JSON line per image here")
    e.add_argument("--crops", help="score the reader alone on a folder with groundtruth.csv")
    e.add_argument("--threads", type=int, default=1, help="inference threads (default 1)")
    e.add_argument("--models", help="folder holding the ONNX models (default: the shipped models/)")
    e.add_argument("--min-confidence", type=float, default=None, help="drop reads below this confidence")
    e.set_defaults(func=cmd_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    from edge.evaluate import EvalError
    from edge.vision.session import ModelError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, EvalError, ModelError) as e:
        print(f"edge {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"edge {args.cmd}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
