"""Regenerate the table in docs/bad-input.md from the messages the tests really printed.

    BAD_INPUT_LOG=/tmp/bad.jsonl pytest -q tests/test_bad_input.py
    python tools/bad_input_table.py /tmp/bad.jsonl

tests/test_bad_input.py appends one JSON line per case (command, error line, exit code) when
BAD_INPUT_LOG is set; this script replaces the text between the table markers in the doc.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad-input.md"
START, END = "<!-- table:start -->", "<!-- table:end -->"
QUICK = "--max-train 48 --max-eval 16 --distill-epochs 0 --calib-samples 8 --round-to 1 --runs 1 --exporter torchscript"

# test id prefix -> what the user did wrong
DESC = {
    "test_unknown_zoo_model": "unknown zoo model",
    "test_factory_file_missing": "factory file missing",
    "test_factory_function_missing": "factory file has no such function",
    "test_factory_module_raises_at_import": "factory module raises at import",
    "test_factory_raises": "factory function raises",
    "test_factory_returns_non_module": "factory returns a non-module (`42`)",
    "test_factory_without_input_shape_or_data": "factory model, no data and no `--input-shape`",
    "test_model_output_unsupported[nested_out": "model returns a tuple holding a list",
    "test_model_output_unsupported[index_out": "model returns integer indices (a non-float tensor)",
    "test_input_shape_wrong_rank": "`--input-shape` of wrong rank",
    "test_input_shape_not_numbers": "`--input-shape` not numbers",
    "test_input_shape_does_not_fit_model": "input shape does not fit the model (fixed-size Linear after flatten)",
    "test_input_shape_does_not_match_data": "`--input-shape` does not match the data",
    "test_ignore_unknown_module": "`--ignore` names no module",
    "test_bad_weights[missing_file": "weights file missing",
    "test_bad_weights[empty": "weights file empty",
    "test_bad_weights[truncated": "weights truncated (valid `torch.save` file cut in half)",
    "test_bad_weights[corrupt": "weights corrupt (random bytes)",
    "test_bad_weights[text": "weights a text file",
    "test_bad_weights[pickled": "weights need full unpickling (pickled custom object), no `--trust-checkpoint`",
    "test_bad_weights[missing-": "state_dict with missing keys",
    "test_bad_weights[extra": "state_dict with extra keys",
    "test_bad_weights[shape": "state_dict with wrong shapes",
    "test_weights_is_a_directory": "`--weights` is a directory",
    "test_data_path_missing": "`--data` path missing",
    "test_data_dir_without_idx": "`--data` directory without IDX files",
    "test_data_unsupported_file_type": "`--data` of an unsupported file type",
    "test_idx_file_truncated": "IDX `.gz` file truncated (copy of Fashion-MNIST, one file cut in half)",
    "test_idx_payload_truncated": "IDX file whose data is shorter than its header says",
    "test_npz_without_x": "npz without `x`",
    "test_npz_corrupt": "npz not a zip archive",
    "test_npz_labels_out_of_range": "npz labels out of range for the model (12 with 10 outputs)",
    "test_npz_with_nan": "npz with NaN in `x`",
    "test_npz_labels_do_not_match_x": "npz `y` length differs from `x`",
    "test_fewer_samples_than_calib_samples": "fewer training samples than `--calib-samples`",
    "test_eval_data_missing": "`--eval-data` missing",
    "test_bad_option_value[--prune-ratio--0.1": "`--prune-ratio -0.1`",
    "test_bad_option_value[--prune-ratio-1.0": "`--prune-ratio 1.0`",
    "test_bad_option_value[--prune-ratio-1.5": "`--prune-ratio 1.5`",
    "test_bad_option_value[--prune-ratio-half": "`--prune-ratio half`",
    "test_bad_option_value[--distill-epochs": "negative `--distill-epochs`",
    "test_bad_option_value[--alpha": "`--alpha 2`",
    "test_bad_option_value[--importance": "`--importance bogus`",
    "test_bad_option_value[--quant": "`--quant bogus`",
    "test_bad_option_value[--max-train": "`--max-train 0`",
    "test_bad_option_value[--calib-samples": "`--calib-samples 0`",
    "test_bad_option_value[--seed--1": "`--seed -1`",
    "test_bad_option_value[--seed-4294967296": "`--seed 2**32`",
    "test_unknown_flag": "misspelt flag",
    "test_prune_ratio_too_high": "`--prune-ratio 0.99` (layers would vanish)",
    "test_prune_ratio_with_latency_target": "`--prune-ratio` with `--target-latency-ms`",
    "test_sensitivity_file_without_sensitivity_allocation": "`--sensitivity FILE` without `--allocation sensitivity`",
    "test_sensitivity_table_missing": "`--sensitivity` table missing",
    "test_latency_aware_int8_without_ort_ptq": "`--latency-aware-int8` with `--quant dynamic` (it re-runs static PTQ)",
    "test_val_fraction_one": "`--val-fraction 1` (nothing left to train on)",
    "test_val_fraction_zero_with_early_stopping": "`--val-fraction 0` with `--kd-patience` (early stopping needs a validation split)",
    "test_latency_aware_weights_with_latency_aware_int8_off": "`--latency-aware-weights float` with `--latency-aware-int8 off`",
    "test_latency_aware_int8_unknown_mode": "`--latency-aware-int8` not auto/on/off",
    "test_latency_aware_weights_unknown": "`--latency-aware-weights` not int8/float",
    "test_kd_mixup_negative": "`--kd-mixup -0.5` (a Beta parameter)",
    "test_kd_mixup_with_cached_teacher": "`--kd-mixup` with `--kd-cache-teacher` (cached logits are of un-mixed images)",
    "test_recipe_unknown_key": "recipe: unknown key",
    "test_recipe_unknown_section": "recipe: unknown table",
    "test_recipe_wrong_type": "recipe: wrong type",
    "test_recipe_bad_value": "recipe: value out of range",
    "test_recipe_not_toml": "recipe not valid TOML",
    "test_recipe_not_utf8": "recipe not UTF-8",
    "test_recipe_missing": "recipe file missing",
    "test_out_is_a_file": "`--out` is an existing file",
    "test_out_parent_is_a_file": "`--out` under a file",
    "test_out_unwritable": "`--out` in an unwritable place (`/proc` as root; a 0500 directory otherwise)",
    "test_out_not_empty_and_not_a_run[overwrite0]": "`--out` is a non-empty directory that is not a run",
    "test_out_not_empty_and_not_a_run[overwrite1]": "same, with `--overwrite` (never deletes a directory edgecompress did not make)",
    "test_out_previous_run": "`--out` holds a previous run, no `--overwrite` (the run's files stay intact)",
    "test_bench_missing_file": "`bench` on a missing file",
    "test_bench_not_onnx": "`bench` on a non-ONNX file",
    "test_bench_bad_threads": "`bench --threads 1,x`",
    "test_bench_directory": "`bench` on a directory",
    "test_bench_input_shape_does_not_fit": "`bench --input-shape` that does not fit the model",
    "test_bench_compare_second_file_missing": "`bench A.onnx B.onnx` with B missing (named before any timing)",
    "test_bench_compare_zero_rounds": "`bench A.onnx B.onnx --rounds 0`",
    "test_report_without_manifest": "`report` on a directory without manifest",
    "test_report_manifest_not_a_run": "`report`: manifest.json is not an edgecompress manifest",
    "test_report_manifest_not_json": "`report`: manifest.json is not JSON",
    "test_onnx_model_missing": "ONNX file as MODEL: missing",
    "test_onnx_model_not_onnx": "ONNX file as MODEL: not ONNX",
    "test_onnx_model_with_pytorch_only_stage[flags0": "ONNX file as MODEL with `--prune-ratio` (pruning needs the PyTorch model)",
    "test_onnx_model_with_pytorch_only_stage[flags1": "ONNX file as MODEL with `--distill-epochs`",
    "test_onnx_model_with_pytorch_only_stage[flags2": "ONNX file as MODEL with `--quant qat`",
    "test_onnx_model_with_pytorch_only_stage[flags3": "ONNX file as MODEL with `--quant-backend inc`",
    "test_onnx_model_with_pytorch_only_stage[flags4": "ONNX file as MODEL with `--stages prune,...`",
    "test_onnx_model_data_does_not_fit": "ONNX file as MODEL, data samples of another shape",
    "test_disk_full_atomic_write_raises": "disk full: every `atomic_write` raises ENOSPC (after original.onnx is staged)",
    "test_disk_full_midway_through_a_write": "disk full midway through writing original.onnx",
}


def _clean(s: str) -> str:
    s = re.sub(r"/tmp/pytest-of-\w+/pytest-\d+/weights\d+/", "", s)
    return s.replace("$T/", "").replace("$T", ".")


def _code(s: str) -> str:
    return "`" + s.replace("|", "\\|") + "`"


def table(log: Path) -> str:
    rows = [
        "| # | input | command (cwd = a fresh temp dir) | message printed on stderr | exit |",
        "|---:|---|---|---|---:|",
    ]
    for i, raw in enumerate(log.read_text().splitlines(), 1):
        d = json.loads(raw)
        desc = next((v for k, v in DESC.items() if d["case"].startswith(k)), d["case"])
        args = [_clean(a) for a in d["args"]]
        if args[0] == "export" and "--out" not in args:
            args += ["--out", "out"]
        cmd = ("edgecompress " + " ".join(args)).replace(QUICK, "$QUICK")
        rows.append(f"| {i} | {desc} | {_code(cmd)} | {_code(_clean(d['line']))} | {d['rc']} |")
    return "\n".join(rows)


def main() -> None:
    doc = DOC.read_text()
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{START}\n{table(Path(sys.argv[1]))}\n{END}{tail}")


if __name__ == "__main__":
    main()
