"""Command line: ``python -m boneage_infer {predict,evaluate,train,calibrate,average} ...``."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _print_error(name: str, exc: Exception) -> None:
    print(f"{name}: error: {exc}", file=sys.stderr)


def _cases_from_csv(path: Path, default_sex: str | None, default_age: str | None, images: Path | None):
    """Rows of a cases CSV: `file` (or `id` with --images) and optional `sex`, `age`."""
    from .data import find_image, parse_male

    cases = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("file"):
                file = Path(row["file"])
                file = file if file.is_absolute() else path.parent / file
            elif row.get("id"):
                folder = images or path.parent
                file = find_image(folder, row["id"]) or folder / f"{row['id']}.png"
            else:
                raise ValueError(f"{path}: each row needs a 'file' or an 'id' column.")
            sex = row.get("sex") or (("M" if parse_male(row) else "F") if row.get("male") else default_sex)
            cases.append((file, sex, row.get("age") or row.get("chronological_age_months") or default_age))
    return cases


def _collect_cases(args: argparse.Namespace) -> list[tuple[Path, str | None, str | None]]:
    from .data import IMAGE_SUFFIXES

    cases = []
    for item in args.images:
        path = Path(item)
        if path.suffix.lower() == ".csv":
            cases += _cases_from_csv(path, args.sex, args.age, args.image_dir)
        elif path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            cases += [(p, args.sex, args.age) for p in files]
        else:
            cases.append((path, args.sex, args.age))
    return cases


def _predict(args: argparse.Namespace) -> int:
    from .batch import ReadingsCsv, read_cases, result_row
    from .predictor import BoneAgePredictor
    from .weights import WeightsError

    try:
        cases = _collect_cases(args)
        if not cases:
            raise ValueError("no images given")
        if args.resume and not args.csv:
            raise ValueError("--resume needs --csv: the readings file to pick up")
    except (OSError, ValueError) as exc:
        _print_error("input", exc)
        return 2
    try:
        predictor = BoneAgePredictor(args.weights)
    except WeightsError as exc:
        _print_error("weights", exc)
        return 3
    try:
        out = ReadingsCsv(args.csv, resume=args.resume) if args.csv else None
    except (OSError, ValueError) as exc:
        _print_error("csv", exc)
        return 2
    if out is not None and out.done:
        cases = [c for c in cases if str(c[0]) not in out.done]
        print(f"resuming {args.csv}: {len(out.done)} read before, {len(cases)} to read", file=sys.stderr)
    progress = not args.quiet and (args.progress or sys.stderr.isatty())
    failed = 0
    for (file, _, _), result in read_cases(predictor, cases, progress=progress):
        row = result_row(file, result)
        if isinstance(result, Exception):
            failed += 1
            _print_error(str(file), result)
        elif args.heatmap:
            row["heatmap"] = str(_write_heatmap(predictor, Path(file), row["sex"], args.heatmap))
        if out is not None:
            out.write(row)
        if args.json and "quality" in row:  # a reading or a rejection; an unreadable file only on stderr
            print(json.dumps(row), flush=True)
        elif not args.json and not isinstance(result, Exception):
            print(_describe(row), flush=True)
    if out is not None:
        out.close()
    return 1 if failed else 0


def _write_heatmap(predictor, file: Path, sex: str, folder: Path) -> Path:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    picture = predictor.heatmap_overlay(predictor.prepare(file), sex)
    out = folder / f"{file.stem}_heatmap.png"
    cv2.imwrite(str(out), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    return out


def _describe(row: dict) -> str:
    from .report import how_read

    text = f"{row['file']}: bone age {row['bone_age_months']:.1f} months ({row['bone_age_text']})"
    if row.get("interval_90"):
        text += f", 90% interval {row['interval_90'][0]:.1f}-{row['interval_90'][1]:.1f}"
    text += f", {row['stage']}"
    parts = how_read(row)
    if parts:
        text += f"\n  read as the {parts}"
    if row.get("gap_months") is not None:
        text += f"; gap {row['gap_months']:+.1f} months"
        if row.get("z_score") is not None:
            text += f", z {row['z_score']:+.2f}"
        text += f": {row['call']}"
    for warning in row.get("warnings", []):
        text += f"\n  warning: {warning}"
    return text


def _evaluate(args: argparse.Namespace) -> int:
    from .data import load_cases, only_split
    from .metrics import regression_metrics
    from .predictor import BoneAgePredictor
    from .weights import WeightsError

    try:
        cases = load_cases(args.images, args.labels)
        if args.split:
            cases = only_split(cases, args.labels.parent / "splits.csv", args.split)
        if args.limit:
            cases = cases.subset(np.arange(len(cases)) < args.limit)
        predictor = BoneAgePredictor(args.weights)
    except (OSError, ValueError, WeightsError) as exc:
        _print_error("evaluate", exc)
        return 2
    sexes = ["M" if m else "F" for m in cases.male]
    results, excluded = [], []
    for case_id, path, result in zip(cases.ids, cases.paths, predictor.predict_stream(cases.paths, sexes)):
        results.append(result)
        if isinstance(result, Exception):
            excluded.append(_excluded(case_id, path, result))
            print(_describe_excluded(excluded[-1]), file=sys.stderr)
            if args.strict:
                print("evaluate: stopped at the first excluded radiograph (--strict)", file=sys.stderr)
                return 1
    ok = np.array([not isinstance(r, Exception) for r in results])
    readings = [r for r in results if not isinstance(r, Exception)]
    truth = cases.bone_age_months[ok]
    summary = regression_metrics(np.array([r.bone_age_months for r in readings]), truth, cases.male[ok])
    if readings and all(r.interval_90 for r in readings):
        low, high = np.array([r.interval_90 for r in readings]).T
        summary["interval_90_coverage"] = float(np.mean((low <= truth) & (truth <= high)))
        summary["interval_90_mean_width_months"] = float(np.mean(high - low))
    summary["failed"] = len(excluded)
    summary["rejected"] = sum(e["kind"] == "rejected" for e in excluded)
    summary["unreadable"] = sum(e["kind"] == "unreadable" for e in excluded)
    summary["excluded"] = excluded
    summary["model_version"] = predictor.model_version
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"n      {summary['n']}  (rejected {summary['rejected']}, unreadable {summary['unreadable']})")
        print(f"MAE    {summary['mae']:.2f} months")
        print(f"RMSE   {summary['rmse']:.2f} months")
        print(f"R²     {summary['r2']:.3f}")
        print(f"bias   {summary['bias']:+.2f} months (predicted − reference)")
        if "interval_90_coverage" in summary:
            print(
                f"90% interval covers {summary['interval_90_coverage']:.1%} "
                f"(mean width {summary['interval_90_mean_width_months']:.1f} months)"
            )
        for sex, value in summary["mae_by_sex"].items():
            print(f"MAE {sex}  {value:.2f} months" if value is not None else f"MAE {sex}  -")
        for band, value in summary["mae_by_age_band"].items():
            print(f"MAE {band:>7}  {value['mae']:.2f} months (n={value['n']})")
        for row in excluded:
            print(_describe_excluded(row))
    return 1 if summary["failed"] else 0


def _excluded(case_id: str, path: Path, error: Exception) -> dict:
    """A radiograph left out of the metrics: rejected by a named check, or unreadable."""
    from .predictor import RejectedImage

    row = {"id": case_id, "file": str(path), "error": str(error)}
    if isinstance(error, RejectedImage):
        return {
            **row,
            "kind": "rejected",
            **{k: v for k, v in error.quality.to_dict().items() if k != "accepted"},
        }
    return {**row, "kind": "unreadable"}


def _describe_excluded(row: dict) -> str:
    measured = (
        f" ({row['check']}: {row['value']:g} against the limit {row['limit']:g})" if "value" in row else ""
    )
    return f"{row['kind']} {row['id']} {row['file']}: {row['error']}{measured}"


def _zooms(text: str) -> tuple[float, ...]:
    """'1,1.06,0.94' as a checked tuple of zoom factors (argparse type)."""
    from .model import ModelConfig

    try:
        return ModelConfig(test_zooms=tuple(float(z) for z in text.split(","))).test_zooms
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _calibrate(args: argparse.Namespace) -> int:
    from .calibrate import calibrate

    summary = calibrate(
        args.data,
        args.weights,
        fit_n=args.fit_n,
        held_out_n=args.held_out_n,
        recompute_bn=args.recompute_bn,
        zooms=args.zooms,
    )
    print(json.dumps(summary, indent=2))
    return 0


def _average(args: argparse.Namespace) -> int:
    from .weights import WeightsError, average_weights

    try:
        average_weights(args.folders, args.out, args.version or args.out.name)
    except (OSError, ValueError, WeightsError) as exc:
        _print_error("average", exc)
        return 2
    print(f"Wrote {args.out}; now recompute its BatchNorm statistics and calibrate it:")
    print(f"  python -m boneage_infer calibrate --data DATA --weights {args.out} --recompute-bn")
    return 0


def _pretrained(args: argparse.Namespace) -> int:
    from .pretrained import main

    return main()


def _train(args: argparse.Namespace) -> int:
    from .train import check_options, continue_run, cross_validate, resolve_precision, train

    verbose = 1 if sys.stdout.isatty() or args.progress else 2
    try:
        precision = resolve_precision(args.precision)
        if args.continue_run:
            print(continue_run(args.continue_run, precision=precision, verbose=verbose))
            return 0
        if not (args.data and args.out):
            raise ValueError("give --data and --out for a new run, or --continue RUN for an interrupted one")
        check_options(
            args.model,
            args.grow,
            args.resume,
            args.augment,
            args.acquisition,
            args.restack,
            args.age_bins,
            args.dropout,
            args.init,
        )
    except ValueError as exc:
        _print_error("train", exc)
        return 2
    options = dict(
        model_name=args.model,
        stages=args.stages,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        resume=args.resume,
        grow_into=args.grow,
        restack_scale=args.restack,
        age_group_head=args.age_group_head,
        age_bins=args.age_bins,
        hand_crop=args.hand_crop,
        dropout=args.dropout,
        init=args.init,
        train_from=args.train_from,
        augment_strength=args.augment,
        acquisition=args.acquisition,
        precision=precision,
        limit=args.limit,
        checkpoint_minutes=args.checkpoint_minutes,
        verbose=verbose,
    )
    if args.folds > 1:
        print(cross_validate(args.data, args.out, args.folds, seed=args.seed, **options))
    else:
        print(train(args.data, args.out, seed=args.seed, **options))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m boneage_infer", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("predict", help="bone age for radiographs (files, folders or a cases CSV)")
    p.add_argument("images", nargs="+", help="image files (PNG/JPEG/DICOM), folders, or CSV files of cases")
    p.add_argument(
        "--sex",
        type=str.upper,
        choices=["M", "F", "U"],
        help="M, F or U (unknown) for every image; a CSV may give it per row",
    )
    p.add_argument("--age", help="chronological age: months (e.g. 123) or years+months (e.g. 10y3m)")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.add_argument("--csv", type=Path, help="also write each reading to this CSV as it is read")
    p.add_argument(
        "--resume", action="store_true", help="skip the files already in --csv and append the rest"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--progress", action="store_true", help="a progress bar even when stderr is not a terminal"
    )
    p.add_argument("--image-dir", type=Path, help="folder for a CSV's `id` column")
    p.add_argument("--heatmap", type=Path, help="write a Grad-CAM heatmap PNG per image to this folder")
    p.add_argument("--weights", help="weights folder (default: BONEAGE_WEIGHTS, BONEAGE_HF_REPO, weights/)")
    p.set_defaults(run=_predict)

    p = commands.add_parser("evaluate", help="accuracy on a labelled set")
    p.add_argument("--images", type=Path, required=True, help="folder with <id>.png or <id>.jpg")
    p.add_argument("--labels", type=Path, required=True, help="CSV: id, boneage (months), male or sex")
    p.add_argument("--split", help="only ids with this split in splits.csv beside the labels (e.g. val)")
    p.add_argument("--limit", type=int, help="only the first N cases")
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON object with n, mae, rmse, r2, bias and every excluded radiograph (id, file, check)",
    )
    p.add_argument(
        "--strict", action="store_true", help="stop at the first rejected or unreadable radiograph"
    )
    p.add_argument("--weights", help="weights folder")
    p.set_defaults(run=_evaluate)

    p = commands.add_parser("train", help="train on an RSNA-layout data folder")
    p.add_argument("--data", type=Path, help="folder with images/, labels.csv, splits.csv")
    p.add_argument("--out", type=Path, help="run folder, e.g. runs/NAME")
    p.add_argument(
        "--continue",
        dest="continue_run",
        type=Path,
        metavar="RUN",
        help="continue an interrupted run folder where it stopped, with its own options",
    )
    p.add_argument(
        "--model",
        default="xception-small",
        help="xception-small (default), xception-half, xception-wide, xception-wide-deep, "
        "xception-grey or xception",
    )
    p.add_argument("--stages", default="224:8", help="input size and epochs per stage, e.g. 160:2,224:6")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine decay)")
    p.add_argument("--resume", type=Path, help="weights folder to start from, e.g. weights/")
    p.add_argument(
        "--grow",
        help="with --resume: grow the model into this deeper or wider one (it reads the same at first)",
    )
    p.add_argument(
        "--restack",
        type=float,
        metavar="SCALE",
        help="with --resume: copy the first half of the middle-flow blocks onto the second half, "
        "their residual scaled by SCALE (revives blocks that never grew)",
    )
    p.add_argument("--age-group-head", action="store_true", help="add the 5-group head (5*MAE + CE)")
    p.add_argument(
        "--age-bins",
        type=int,
        default=0,
        metavar="N",
        help="add a label-distribution head over N bins of 0-240 months (Gaussian soft labels, + CE), "
        "trained beside the bone-age output; e.g. 40",
    )
    p.add_argument(
        "--hand-crop",
        action="store_true",
        help="train (and so serve) on radiographs cropped to a square around the hand",
    )
    p.add_argument(
        "--dropout",
        type=float,
        help="the head's dropout rate in training (default: the resumed model's, 0.2 for a new one; "
        "0 turns it off)",
    )
    p.add_argument(
        "--init",
        choices=["imagenet"],
        help="start the backbone from ImageNet-pretrained Xception (xception, xception-grey; "
        "fetched once by `pretrained`)",
    )
    p.add_argument(
        "--train-from",
        metavar="BLOCK",
        help="freeze the backbone before this block, e.g. exit1 (exit flow only) or middle0",
    )
    p.add_argument(
        "--augment", type=float, default=1.0, help="scale of rotation/zoom/shift/brightness/contrast (0 to 1)"
    )
    p.add_argument(
        "--acquisition",
        type=float,
        default=1.0,
        help="fraction of images given another acquisition's look (noise, blur, gamma, JPEG, framing)",
    )
    p.add_argument(
        "--precision",
        default="auto",
        help="auto (default), bfloat16 or float32; auto trains in mixed bfloat16 only on a GPU "
        "or a CPU with native bfloat16 (avx512_bf16, AMX), where it is faster",
    )
    p.add_argument("--folds", type=int, default=1, help="K-fold cross-validation on the train split")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--limit", type=int, help="use only this many training images (smoke tests)")
    p.add_argument(
        "--checkpoint-minutes",
        type=float,
        default=20.0,
        help="also save the run's state this often within an epoch, for --continue (default 20)",
    )
    p.add_argument("--progress", action="store_true", help="progress bar with ETA even when not a tty")
    p.set_defaults(run=_train)

    p = commands.add_parser(
        "calibrate", help="fit the 90%% interval and the novelty gate of a weights folder"
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="RSNA-layout folder (train for the gate, val for the interval)",
    )
    p.add_argument(
        "--weights", type=Path, required=True, help="weights folder to calibrate (rewrites its manifest)"
    )
    p.add_argument("--fit-n", type=int, default=3000, help="train radiographs that define the feature space")
    p.add_argument(
        "--held-out-n", type=int, default=3000, help="other train radiographs that set the gate's limits"
    )
    p.add_argument(
        "--recompute-bn", action="store_true", help="first recompute BatchNorm statistics (precise BN)"
    )
    p.add_argument(
        "--zooms",
        type=_zooms,
        help="test-time views to serve, as zoom factors with 1 among them, e.g. 1,1.06,0.94 "
        "(each read with its mirror; default: keep the folder's)",
    )
    p.set_defaults(run=_calibrate)

    p = commands.add_parser("average", help="average the weights of checkpoints of one model (model soup)")
    p.add_argument("folders", type=Path, nargs="+", help="weights folders, e.g. runs/A/best runs/B/best")
    p.add_argument("--out", type=Path, required=True, help="new weights folder")
    p.add_argument("--version", help="model version for the manifest (default: the folder name)")
    p.set_defaults(run=_average)

    p = commands.add_parser(
        "pretrained", help="fetch and verify the ImageNet Xception weights that train --init imagenet uses"
    )
    p.set_defaults(run=_pretrained)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
