"""Command line: `python -m nbutils run ...` (the papermill runner), `provision-model` and `docs`."""
from __future__ import annotations

import argparse
import sys

from .config import PROFILES


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m nbutils", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the notebooks 01 -> 05 with papermill")
    run.add_argument("--profile", default="demo", choices=PROFILES)
    run.add_argument("--data-dir", default="data", help="relative paths resolve against the project root")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                     help="inject a parameter into every notebook that has it; 'NN.key' targets one stage")
    run.add_argument("--from", dest="start", help="start at this stage (e.g. 03 or generate)")
    run.add_argument("--only", help="comma-separated stages to run (e.g. 04,05)")
    run.add_argument("--run-dir", help="where executed notebooks go (default data_dir/runs/<time>-<profile>)")
    run.add_argument("--log-output", action="store_true", help="stream the notebooks' output")

    prov = sub.add_parser("provision-model", help="convert the embedded SmolLM2 into a HF folder (offline)")
    prov.add_argument("--data-dir", default="data")

    sub.add_parser("docs", help="regenerate the parameter tables of docs/stages/*.md from the stage configs")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "docs":
        from . import docs

        changed = docs.write_doc_tables()
        print(f"{docs.STAGE_DOCS}: " + (f"tables updated in {', '.join(p.name for p in changed)}" if changed
                                   else "tables already up to date"))
        return 0
    if args.command == "provision-model":
        from .models import ModelNotAvailable, provision_embedded_model

        try:
            print(provision_embedded_model(args.data_dir))
        except ModelNotAvailable as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    from .config import parse_literal
    from .lock import DataDirBusy
    from .runner import StageFailed, run_pipeline

    params = {k: parse_literal(v) for k, v in args.parameter}  # papermill-like; typed per stage by the runner
    only = [s for s in (args.only or "").split(",") if s.strip()] or None
    try:
        run_pipeline(profile=args.profile, data_dir=args.data_dir, params=params, raw=dict(args.parameter),
                     start=args.start, only=only,
                     run_dir=args.run_dir, log_output=args.log_output)
    except StageFailed:
        return 1
    except (ValueError, DataDirBusy) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
