"""Writes experiments/results/<dataset>.md from the run records (never typed by hand).

The records are ``experiments/records/<dataset>/*.jsonl``, one per run or search, packed from
the run folders by ``experiments/records.py`` (its docstring gives the format). For each model
it takes the run chosen BY VALIDATION: the final run ``<model>.jsonl`` when it ran at the
chosen setting, otherwise the winner recorded in ``<model>_search[_<what>].jsonl`` (a search
picks by the validation metric only).
MMRec's figures from ``../shared/anchors/mmrec_<dataset>.json`` stand beside ours where MMRec
has the model. Cold-start and missing-modality tables come from
``results/<dataset>_coldstart.json`` and ``results/<dataset>_missing_modality.json`` when the
experiments that write them have run. Where they exist, also: the field's published figures
from ``../shared/anchors/<dataset>_published.md`` (another protocol, in a block of their own,
never mixed into the warm table); the held-out interactions on items unseen in train, from
``results/<dataset>_unseen_items.json`` (``experiments/unseen_items.py``); and modality
ablations, the run records in ``records/<dataset>/modality_ablation/`` (one run per model and
modality subset at the model's chosen setting) beside the model's all-modality row.
A row set beside another for one difference (the negative sampler, a feature transform, the
modalities) is compared on the two recorded configs (:func:`config_differences`): any other
difference is named in the row, and a sampler pair that differs in more is not filed as the
sampler's effect.

Usage (from the project root):
    python experiments/make_results.py [--dataset lfm2k] [--anchors ../shared/anchors] [--root DIR]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
from pathlib import Path

from jaxrec._atomic import write_atomic

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import records  # noqa: E402  (experiments/records.py, beside this script)
# Our registry names -> the names MMRec's anchor file uses.
MMREC_NAMES = {"bprmf": "BPR", "bpr": "BPR", "lightgcn": "LightGCN", "vbpr": "VBPR", "mmgcn": "MMGCN",
               "lattice": "LATTICE", "freedom": "FREEDOM", "bm3": "BM3", "lgmrec": "LGMRec", "mgcn": "MGCN"}
# Row order: the field's families, simplest first.
ORDER = ["bpr", "bprmf", "sidemf", "vbpr", "attention", "gated", "ensemble", "early", "kernel", "subspace", "cke",
         "gan", "lightgcn", "mmgcn", "lattice", "freedom", "bm3", "lgmrec", "mgcn", "contrastive"]


def _row_name(folder_name: str) -> str:
    """A record's row: ``vbpr``, ``vbpr_search``, ``vbpr_search_low_reg`` and ``vbpr_reg_grid``
    are all ``vbpr``."""
    return re.sub(r"_(search|reg_grid|grid)(_?\w*)?$", "", folder_name)


def _read_json(path: Path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _search_winner(record: records.Record, root: Path = HERE) -> tuple[dict, dict] | None:
    summary = record.search or {}
    best = summary.get("best")
    if not best:
        return None
    winner = record.winner()
    metrics = winner["metrics"] if winner else None
    grid = {}
    for trial in summary.get("trials", []):
        for key, value in (trial.get("setting") or {}).items():
            grid.setdefault(key, [])
            if value not in grid[key]:
                grid[key].append(value)
    info = {"setting": best.get("setting", {}), "grid": grid, "n_trials": summary.get("n_trials"),
            "source": os.path.relpath(record.path, root), "modalities": _modalities(winner)}
    if metrics is None:
        metrics = {"valid": best.get("valid", {}), "test": best.get("test", {}), "best_epoch": best.get("best_epoch")}
    return metrics, info


def collect_runs(records_dir: Path) -> dict[str, tuple[dict, dict]]:
    """model name -> (metrics, info about how the setting was chosen), from the record files
    (``experiments/records.py``) directly in ``records_dir``."""
    chosen: dict[str, tuple[dict, dict]] = {}
    found = records.records_in(records_dir)
    root = Path(records_dir).parent.parent  # the experiments folder: sources are named relative to it
    for record in found:
        if record.kind != "run":
            continue
        metrics = next(iter(record.runs.values()))["metrics"]
        # Several searches of one row (a first grid, then another): the final run is the winner of
        # all of them by VALIDATION, so its setting is that of the best winner.
        winners = [w for w in (_search_winner(r, root) for r in found
                               if r.kind == "search" and _row_name(r.name) == record.name) if w]
        search = max(winners, key=lambda w: _valid(w[0])) if winners else None
        if search and not _ran_with(next(iter(record.runs.values())).get("config"), search[1]["setting"]):
            print(f"note: {record.path.name} was not run at its search's winning setting {search[1]['setting']}; "
                  "the search's winner is reported instead", file=sys.stderr)
            continue
        info = search[1] if search else {"setting": {}, "grid": {}, "n_trials": 1}
        info = {**info, "source": os.path.relpath(record.path, root),
                "modalities": _modalities(next(iter(record.runs.values())))}
        chosen[record.name] = (metrics, info)
    searched: dict[str, tuple[dict, dict]] = {}
    for record in found:
        if record.kind != "search":
            continue
        model = _row_name(record.name)
        winner = _search_winner(record, root)
        # Several searches of one model (a first grid, then a finer one): the better VALIDATION wins.
        if model not in chosen and winner and (
                model not in searched or _valid(winner[0]) > _valid(searched[model][0])):
            searched[model] = winner
    return {**chosen, **searched}


def _modalities(run: dict | None) -> list:
    """The modalities a run's model reads, for scoring or in a training term (empty for pure-ID
    models): ``model.args.modalities``; else a wrapper's base's (``model.args.base_args.modalities``,
    e.g. gan's VBPR); else a training-only term's (``model.args.modality``, a name or a list, e.g.
    contrastive's InfoNCE, which ranks with its base's ID table)."""
    args = (((run or {}).get("config") or {}).get("model") or {}).get("args") or {}
    found = scoring_modalities(run)
    if found:
        return found
    modality = args.get("modality")
    return [modality] if isinstance(modality, str) else list(modality or [])


def scoring_modalities(run: dict | None) -> list:
    """The modalities the run's item side is SCORED from: ``model.args.modalities``, else the
    wrapped base model's ``model.args.base_args.modalities`` (empty: an ID table ranks)."""
    args = (((run or {}).get("config") or {}).get("model") or {}).get("args") or {}
    base_args = args.get("base_args") or {}
    return list(args.get("modalities") or (base_args.get("modalities") if isinstance(base_args, dict) else None) or [])


def _ran_with(config: dict | None, setting: dict) -> bool:
    """Whether the run's ``config`` holds every dotted ``key: value`` of ``setting``."""
    if config is None:
        return not setting
    node_root = config or {}
    for key, value in setting.items():
        node = node_root
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node != value and not (isinstance(node, (int, float)) and isinstance(value, (int, float))
                                  and abs(float(node) - float(value)) <= 1e-12 * max(1.0, abs(float(value)))):
            return False
    return True


def _value(value) -> str:
    """A setting's value as the tables show it: ``{visual_feat: standardize}`` for a mapping."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) + "}"
    return str(value)


# Keys that do not change what a run computes (checkpointing, evaluation batching, the search
# section a trial was cut from).
_NO_RESULT_KEYS = ("train.checkpoint_every", "train.checkpoints_to_keep", "train.steps_per_call", "eval.batch_size",
                   "grid", "search")


def _flat(tree, prefix: str = "") -> dict:
    out = {}
    for key, value in (tree or {}).items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@functools.lru_cache(maxsize=1)
def _config_defaults() -> dict:
    """The dotted defaults of the config sections (a key a recorded config omits took these)."""
    from jaxrec.train import config_from_dict, config_to_dict

    defaults = _flat(config_to_dict(config_from_dict({"model": {"name": "bprmf"}, "data": {"synthetic": {}}})))
    return {k: v for k, v in defaults.items()
            if v != {} and not k.startswith(("model.", "data.path", "data.synthetic"))}


def config_differences(before: dict | None, after: dict | None, expected=()) -> list[str]:
    """``key: before -> after`` for each dotted config key whose value differs between two
    recorded runs, apart from ``expected`` (the difference a table is about, each key or any key
    under it) and keys that do not change a run's result. A key one config omits takes its
    default, except ``train.negative_items``: a run recorded before it existed drew negatives
    from all items. An unrecorded config differs in everything ("config not recorded")."""
    if before is None or after is None:
        return ["config not recorded"]
    defaults = _config_defaults()

    def filled(config: dict) -> dict:
        flat = {k: v for k, v in _flat(config).items()
                if v != {} and not (k.startswith("data.feature_transform.") and v == "none")}
        flat.setdefault("train.negative_items", "all")
        return {**defaults, **flat}

    a, b = filled(before), filled(after)
    skip = tuple(expected) + _NO_RESULT_KEYS

    def skipped(key: str) -> bool:
        return any(key == s or key.startswith(s + ".") for s in skip)

    out = []
    for key in sorted(set(a) | set(b)):
        if skipped(key) or _same_value(a.get(key), b.get(key)):
            continue
        out.append(f"{key}: {_value(a.get(key, '–'))} -> {_value(b.get(key, '–'))}")
    return out


def _same_value(x, y) -> bool:
    if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
        return abs(float(x) - float(y)) <= 1e-12 * max(1.0, abs(float(y)))
    return x == y


def _chosen_config(chosen, model: str, root: Path) -> dict | None:
    """The config of the run a model's warm-table row reports (its record at ``source``)."""
    path = root / chosen[model][1]["source"]
    if not path.exists():
        return None
    record = records.read(path)
    run = record.winner() if record.kind == "search" else next(iter(record.runs.values()))
    return (run or {}).get("config")


def _valid(metrics: dict) -> float:
    return float(metrics.get("valid", {}).get("recall@20", float("-inf")))


def _fmt(value, digits=4):
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _order_key(model: str):
    return (ORDER.index(model) if model in ORDER else len(ORDER), model)


def ranking_table(chosen, anchors, speed=None) -> list[str]:
    """One row per model. ``speed`` (``results/<dataset>_speed.json`` from
    ``benchmarks/bench_train.py``): per-model timings taken back to back on a quieter machine,
    used instead of the runs' own (marked ``†``)."""
    speed = speed or {}
    lines = ["| model | test R@10 | test R@20 | test N@10 | test N@20 | valid R@20 | s/epoch | eval s (valid+test) | "
             "epochs (best) | MMRec test R@20 | MMRec s/epoch | setting (by valid) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for model in sorted(chosen, key=_order_key):
        metrics, info = chosen[model]
        test, valid, timing = metrics.get("test", {}), metrics.get("valid", {}), metrics.get("timing", {})
        anchor = anchors.get(MMREC_NAMES.get(model, MMREC_NAMES.get(str(metrics.get("model")), "")), {})
        per_epoch, eval_seconds, mark = timing.get("train_seconds_per_epoch"), timing.get("eval_seconds"), ""
        eval_seconds = None if eval_seconds is None else 2 * eval_seconds  # the runs time one split
        if model in speed:
            per_epoch, eval_seconds, mark = (speed[model]["train_seconds_per_epoch"],
                                             speed[model]["eval_seconds_valid_plus_test"], "†")
        speed_cell = _fmt(per_epoch, 3) + mark
        batched = (metrics.get("batched_search") or {}).get("trials") if not mark else None
        if batched:  # the seconds of a batched search are those of all its trials together
            speed_cell += f" ({batched} trials batched)"
        elif per_epoch and anchor.get("train_s_per_epoch"):
            speed_cell += f" ({anchor['train_s_per_epoch'] / per_epoch:.2f}x faster)" if per_epoch < anchor[
                "train_s_per_epoch"] else f" ({per_epoch / anchor['train_s_per_epoch']:.2f}x slower)"
        setting = ", ".join(f"{k}={_value(v)}" for k, v in info.get("setting", {}).items()) or "config as committed"
        epochs = f"{metrics.get('epochs_run', '–')} ({metrics.get('best_epoch', '–')})"
        lines.append(
            f"| {model} | {_fmt(test.get('recall@10'))} | **{_fmt(test.get('recall@20'))}** | "
            f"{_fmt(test.get('ndcg@10'))} | {_fmt(test.get('ndcg@20'))} | {_fmt(valid.get('recall@20'))} | "
            f"{speed_cell} | {_fmt(eval_seconds, 3)}{mark} | {epochs} | {_fmt(anchor.get('test_r20'))} | "
            f"{_fmt(anchor.get('train_s_per_epoch'), 3)} | {setting} |")
    return lines


def grid_lines(chosen) -> list[str]:
    lines = []
    for model in sorted(chosen, key=_order_key):
        _, info = chosen[model]
        if info.get("grid"):
            grid = "; ".join(f"{k} in [{', '.join(_value(x) for x in v)}]" if any(isinstance(x, dict) for x in v)
                             else f"{k} in {v}" for k, v in info["grid"].items())
            lines.append(f"- **{model}**: {info.get('n_trials')} trials, {grid} (source `{info['source']}`)")
        else:
            lines.append(f"- **{model}**: single setting (source `{info['source']}`)")
    return lines


def generic_table(records) -> list[str]:
    """A markdown table of a JSON list of flat dicts, or a dict of name -> flat dict."""
    if isinstance(records, dict) and all(isinstance(v, dict) for v in records.values()):
        records = [{"name": name, **row} for name, row in records.items()]
    if not isinstance(records, list) or not records or not all(isinstance(r, dict) for r in records):
        return ["```json", json.dumps(records, indent=1), "```"]
    columns = []
    for row in records:
        columns += [key for key, value in row.items() if key not in columns and not isinstance(value, (dict, list))]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in records:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    return lines


def _compact_setting(row: dict) -> str:
    setting = {k: v for k, v in (row.get("setting") or {}).items() if k not in ("alphas_tried", "k_tried")}
    weights = setting.pop("loss_weights", None)
    parts = [f"{k}={v}" for k, v in (weights or {}).items() if k != "bpr"]
    parts += [f"{k}={v}" for k, v in setting.items() if k not in ("best_epoch", "epochs_run")]
    if "best_epoch" in setting:
        parts.append(f"best epoch {setting['best_epoch']} of {setting.get('epochs_run')}")
    source = str(row.get("source", ""))
    if source and source != "computed":  # the run folder says which grid won (e.g. *_standardized)
        parts.append(f"`{'/'.join(Path(source).parts[-2:])}`")
    return ", ".join(parts) or "–"


def coldstart_table(result: dict) -> list[str]:
    """Rows of ``coldstart_baselines.py``'s JSON: baselines, models, then the reference rows."""
    split = result.get("split", {})
    lines = [f"Split: {split.get('method')} (holdout {split.get('holdout')}, seed {split.get('seed')}): "
             f"{split.get('n_test_items')} new test items, {split.get('n_test_users')} test users, "
             f"{split.get('n_test_interactions')} test interactions; a top-k list is chosen among the new "
             f"test items only. Settings chosen by valid recall@20 on the valid new items.", "",
             "| row | kind | uses features | test R@10 | test R@20 | test N@10 | test N@20 | valid R@20 | setting |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"] + result.get("references", []):
        test, valid = row["test"], row["valid"]
        kind = row["kind"] + (" (reads the test labels)" if row.get("leaks_test_labels") else "")
        lines.append(f"| {row['name']} | {kind} | {'yes' if row.get('uses_features') else 'no'} | "
                     f"{_fmt(test.get('recall@10'))} | **{_fmt(test.get('recall@20'))}** | {_fmt(test.get('ndcg@10'))} | "
                     f"{_fmt(test.get('ndcg@20'))} | {_fmt(valid.get('recall@20'))} | {_compact_setting(row)} |")
    lines += [""] + [f"- **{row['name']}**: {row['description']}" for row in result["rows"] + result.get("references", [])]
    return lines


def missing_modality_table(result: dict) -> list[str]:
    """Reconstruction errors on the hidden rows, then recall per scenario and fill (mean ± std over seeds)."""
    rec = result["reconstruction"]
    lines = [f"{rec['hidden_items']} of {rec['hidden_items'] + rec['present_items']} items' `{rec['modality']}` rows "
             f"hidden (seed {rec['hide_seed']}), filled from {', '.join(rec['sources'])}; base model "
             f"{result['base_model']} (`{result['config']}`).", "",
             "| fill | MSE on hidden rows | cosine | centred cosine |", "|---|---|---|---|"]
    for fill, errors in rec["errors_on_hidden_rows"].items():
        lines.append(f"| {fill} | {_fmt(errors['mse'], 1)} | {_fmt(errors['cosine'])} | {_fmt(errors['centred_cosine'])} |")
    lines += ["", "| scenario | modalities | fill | test R@20 (mean ± std) | test N@20 | valid R@20 | seeds |",
              "|---|---|---|---|---|---|---|"]
    for scenario, block in result["recommendation"].items():
        for fill, entry in block.items():
            if not isinstance(entry, dict) or "summary" not in entry:
                continue
            summary = entry["summary"]
            r20, n20, v20 = summary["test_recall@20"], summary["test_ndcg@20"], summary["valid_recall@20"]
            lines.append(f"| {scenario} | {', '.join(block.get('base_modalities', []))} | {fill} | "
                         f"{r20['mean']:.4f} ± {r20['std']:.4f} | {n20['mean']:.4f} | {v20['mean']:.4f} | "
                         f"{len(entry.get('runs', []))} |")
    return lines


def _missing_modality_title(result) -> str:
    """The section's heading, with the result's ``hide_fraction`` (e.g. 0.3 -> "30%")."""
    fraction = result.get("hide_fraction") if isinstance(result, dict) else None
    share = (f"{100 * fraction:g}%" if isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
             else "part")
    return f"Missing modality ({share} of one modality's rows hidden)"


# Row names of the published tables -> our registry names.
PUBLISHED_NAMES = {"MF-BPR": "bpr", "BPR": "bpr", "LightGCN": "lightgcn", "VBPR": "vbpr", "MMGCN": "mmgcn",
                   "LATTICE": "lattice", "FREEDOM": "freedom", "BM3": "bm3", "LGMRec": "lgmrec", "MGCN": "mgcn"}


def published_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """The first markdown table of ``path``: (header cells, rows of cells)."""
    header, rows = None, []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line.startswith("|"):
            if header is not None:
                break
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if header is None:
            header = cells
        elif not all(set(cell) <= set("-: ") for cell in cells):
            rows.append(cells)
    return header or [], rows


def published_table(path: Path, chosen) -> list[str]:
    """The published figures, each beside our test R@20 of the same model (different protocols)."""
    header, rows = published_rows(path)
    lines = ["| " + " | ".join(header + ["ours, test R@20 (this page's protocol)"]) + " |",
             "|" + "---|" * (len(header) + 1)]
    for cells in rows:
        ours = chosen.get(PUBLISHED_NAMES.get(cells[0], ""))
        lines.append("| " + " | ".join(cells + [_fmt(ours[0].get("test", {}).get("recall@20")) if ours else "–"]) + " |")
    return lines


def content_ratio_lines(chosen, bpr: str = "bpr") -> list[str]:
    """The best content model (by VALID recall@20) over tuned BPR-MF, on test recall@20."""
    if bpr not in chosen:
        return []
    content = {m: v for m, v in chosen.items() if v[1].get("modalities")}
    if not content:
        return []
    best = max(content, key=lambda m: _valid(content[m][0]))
    best_test = content[best][0]["test"]["recall@20"]
    bpr_test = chosen[bpr][0]["test"]["recall@20"]
    top_test = max(content, key=lambda m: content[m][0]["test"]["recall@20"])
    out = [f"Content over tuned BPR-MF (test recall@20): the content model with the best VALID recall@20, "
           f"{best}, {best_test:.4f} vs {bpr_test:.4f} = **{best_test / bpr_test:.2f}x**"]
    if top_test != best:
        out[0] += (f"; the best on test, {top_test}, {content[top_test][0]['test']['recall@20']:.4f} = "
                   f"{content[top_test][0]['test']['recall@20'] / bpr_test:.2f}x")
    return [out[0] + "."]


def _percent(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def unseen_items_table(result: dict) -> list[str]:
    """Recall on the held-out interactions whose item has no train interaction."""
    counts, chance = result["counts"], result["chance"]
    lines = [f"{counts['valid']['interactions']} valid and {counts['test']['interactions']} test interactions "
             f"({counts['valid']['items']} and {counts['test']['items']} items, {counts['valid']['users']} and "
             f"{counts['test']['users']} users) fall on items without a single train interaction. The warm table "
             "counts them with the rest; here each model's chosen run (its best checkpoint) is scored on them "
             "ALONE, same protocol (full ranking over all items, train items masked). Runs with `train.negative_items: "
             "trained` (the default) never draw these items as negatives; with `all` (every run before it existed) a "
             "sampled negative pushes their ID vectors down, and they are ranked below chance. A pure-ID model "
             "(BPR-MF, LightGCN) has nothing but the item's untrained initial vector. A content model can place them "
             "by their features: VBPR zeroes an untrained item's ID part, FREEDOM zeroes its ID row so that it is "
             "scored by its content neighbours' (e_i = (S Q~)_i).", "",
             "| model | item side | negatives from | valid R@20 | test R@10 | test R@20 | test R@50 | test N@20 | "
             "test median rank | test in top tenth | test users |",
             "|---|---|---|---|---|---|---|---|---|---|---|",
             f"| random ranking (expected) | – | – | {_fmt(chance['valid'].get('recall@20'))} | "
             f"{_fmt(chance['test'].get('recall@10'))} | {_fmt(chance['test'].get('recall@20'))} | "
             f"{_fmt(chance['test'].get('recall@50'))} | – | 50% | 10% | {counts['test']['users']} |"]
    for row in result["rows"]:
        valid, test = row.get("valid", {}), row.get("test", {})
        side = row["item_side"] + (f" ({', '.join(row['modalities'])})" if row.get("modalities") else "")
        negatives = {"trained": "trained items", "all": "all items"}.get(row.get("negative_items", "all"), "–")
        lines.append(f"| {row['model']} | {side} | {negatives} | {_fmt(valid.get('recall@20'))} | "
                     f"{_fmt(test.get('recall@10'))} | "
                     f"**{_fmt(test.get('recall@20'))}** | {_fmt(test.get('recall@50'))} | "
                     f"{_fmt(test.get('ndcg@20'))} | {_percent(test.get('rank_percentile', {}).get('median'))} | "
                     f"{_percent(test.get('rank_percentile', {}).get('top_tenth'))} | {test.get('num_users', '–')} |")
    above = [row["model"] for row in result["rows"]
             if row.get("test", {}).get("recall@50", 0.0) > chance["test"].get("recall@50", float("inf"))]
    lines += ["", "Runs above a random ranking on these test interactions (recall@50): "
              + (", ".join(above) if above else "none") + ". 'median rank': the share of the user's non-train items "
              "ranked above the held-out unseen item (0% = first); 'in top tenth': how many of them rank in the top "
              "10% of the list (a random ranking: 50% and 10%)."]
    if result.get("not_scored"):
        lines += ["", "Not scored (no run folder at hand when this table was made: deleted, or run in another checkout): "
                  + ", ".join(row["model"] for row in result["not_scored"]) + "."]
    return lines


def feature_probe_table(result: dict) -> list[str]:
    lines = [f"Train popularity: test R@20 **{result['popularity_test_recall@20']:.4f}**.", "",
             "| modality | rows | mean cosine of two items | kNN-10 test R@20 |", "|---|---|---|---|"]
    for name, rows in result["modalities"].items():
        for how, row in rows.items():
            lines.append(f"| {name} | {how} | {row['mean_offdiag_cosine']:.3f} | {_fmt(row['knn10_test_recall@20'])} |")
    return lines


def ablation_table(folder: Path, chosen, root: Path = HERE) -> list[str]:
    """Each ablation run (a model on a subset of the modalities) beside the model's chosen
    all-modality row."""
    found = [r for r in records.records_in(folder) if r.kind == "run"]
    if not found:
        return []
    lines = ["| model | modalities | valid R@20 | test R@10 | test R@20 | test N@20 | best epoch | other differences "
             "from the warm-table run | source |", "|---|---|---|---|---|---|---|---|---|"]
    by_model: dict[str, list] = {}
    for record in found:
        run = next(iter(record.runs.values()))
        model = run["config"]["model"]["name"]
        model = next((m for m in chosen if m == model or chosen[m][0].get("model") == model), model)
        args = run["config"]["model"].get("args") or {}
        by_model.setdefault(model, []).append((args.get("modalities") or [], run["metrics"],
                                               os.path.relpath(record.path, root), run.get("config")))
    for model in sorted(by_model, key=_order_key):
        rows = sorted(by_model[model], key=lambda r: (len(r[0]), r[0]))
        base = None
        if model in chosen:
            full = chosen[model]
            base = _chosen_config(chosen, model, root)
            rows.append((full[1].get("modalities") or ["all"], full[0], full[1]["source"], None))
        for modalities, metrics, source, config in rows:
            test, valid = metrics.get("test", {}), metrics.get("valid", {})
            if config is None:
                others = "warm-table run" if model in chosen else "–"
            elif model in chosen:
                others = "; ".join(config_differences(
                    base, config, expected=("model.args.modalities", "data.modalities"))) or "none"
            else:
                others = "– (no warm-table run)"
            lines.append(f"| {model} | {', '.join(modalities)} | {_fmt(valid.get('recall@20'))} | "
                         f"{_fmt(test.get('recall@10'))} | **{_fmt(test.get('recall@20'))}** | "
                         f"{_fmt(test.get('ndcg@20'))} | {metrics.get('best_epoch', '–')} | {others} | `{source}` |")
    return lines


def popularity_buckets_table(result: dict, split: str = "test", k: int = 20) -> list[str]:
    """Recall@k of each run on the held-out pairs grouped by their item's train interactions,
    and each row's ratio to the ``bpr`` row per bucket."""
    buckets = [b["name"] for b in result["buckets"]]
    counts, chance = result["counts"][split], result["chance"][split]
    key = f"recall@{k}"
    head = " | ".join(f"{b} train" if b != "unseen" else "unseen (0)" for b in buckets)
    lines = [f"| model | {head} |", "|---|" + "---|" * len(buckets),
             "| held-out pairs (share) | " + " | ".join(
                 f"{counts[b]['interactions']} ({counts[b]['interactions'] / max(1, sum(c['interactions'] for c in counts.values())):.0%})"
                 for b in buckets) + " |",
             "| random ranking (expected) | " + " | ".join(_fmt(chance[b].get(key)) for b in buckets) + " |"]
    bpr = next((row for row in result["rows"] if row["label"] == "bpr"), None)
    for row in result["rows"]:
        cells = []
        for b in buckets:
            value = row.get(split, {}).get(b, {}).get(key)
            cell = _fmt(value)
            base = (bpr or {}).get(split, {}).get(b, {}).get(key)
            if row is not bpr and value is not None and base:
                cell += f" ({value / base:.2f}x)"
            cells.append(cell)
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return lines


def _transform_label(config: dict | None) -> str:
    transform = {k: v for k, v in (((config or {}).get("data") or {}).get("feature_transform") or {}).items()
                 if v != "none"}
    return ", ".join(f"{k}: {v}" for k, v in transform.items()) or "none"


def transform_table(folder: Path, chosen, root: Path = HERE) -> list[str]:
    """Runs with another ``data.feature_transform`` (records in ``folder``) beside the model's
    warm-table run, labelled by the transform each run used (the warm-table run's own too); a
    run that differs from the warm-table run in more than the transform names the other keys."""
    found = [r for r in records.records_in(folder) if r.kind == "run"]
    if not found:
        return []
    lines = ["| model | feature transform | valid R@20 | test R@20 | test N@20 | best epoch | other differences from "
             "the warm-table run | source |", "|---|---|---|---|---|---|---|---|"]
    by_model: dict[str, list] = {}
    for record in found:
        run = next(iter(record.runs.values()))
        model = run["config"]["model"]["name"]
        model = next((m for m in chosen if m == model or chosen[m][0].get("model") == model), model)
        by_model.setdefault(model, []).append((run.get("config"), run["metrics"], os.path.relpath(record.path, root)))
    for model in sorted(by_model, key=_order_key):
        rows = [(config, metrics, source, None) for config, metrics, source in by_model[model]]
        base = None
        if model in chosen:
            base = _chosen_config(chosen, model, root)
            rows.insert(0, (base, chosen[model][0], chosen[model][1]["source"], "warm-table run"))
        for config, metrics, source, mark in rows:
            test, valid = metrics.get("test", {}), metrics.get("valid", {})
            if mark:
                others = mark
            elif model in chosen:
                others = "; ".join(config_differences(base, config, expected=("data.feature_transform",))) or "none"
            else:
                others = "– (no warm-table run)"
            lines.append(f"| {model} | {_transform_label(config)} | {_fmt(valid.get('recall@20'))} | "
                         f"**{_fmt(test.get('recall@20'))}** | {_fmt(test.get('ndcg@20'))} | "
                         f"{metrics.get('best_epoch', '–')} | {others} | `{source}` |")
    return lines


def _negative_items(config: dict | None) -> str:
    """A run's ``train.negative_items``; runs recorded before the setting existed drew from all items."""
    return ((config or {}).get("train") or {}).get("negative_items", "all")


def sampler_table(records_dir: Path, chosen, root: Path = HERE) -> list[str]:
    """Each chosen run drawn with ``negative_items: trained`` beside the same model's earlier
    run with negatives from all items (the run record kept in
    ``negatives_all_items/<model>.jsonl``, or the winner of ``<model>_search*.jsonl``). Only a
    pair whose configs differ in ``train.negative_items`` alone is filed as the sampler's
    effect; a pair that differs in more (e.g. ``data.feature_transform``) goes to a second table
    that names every other difference."""
    found = records.records_in(records_dir)
    alone, more = [], []
    for model in sorted(chosen, key=_order_key):
        metrics, info = chosen[model]
        record = next((r for r in found if os.path.relpath(r.path, root) == info["source"]), None)
        if record is None or record.kind != "run":
            continue
        config = next(iter(record.runs.values())).get("config")
        if _negative_items(config) != "trained":
            continue
        earlier = None
        kept = Path(records_dir) / "negatives_all_items" / f"{model}.jsonl"
        if kept.exists():
            run = next(iter(records.read(kept).runs.values()))
            earlier = (run["metrics"], os.path.relpath(kept, root), run.get("config"))
        else:
            for search in (r for r in found if r.kind == "search" and _row_name(r.name) == model):
                winner = _search_winner(search, root)
                if (winner and _negative_items((search.winner() or {}).get("config")) != "trained"
                        and _ran_with(config, winner[1]["setting"])):
                    earlier = (winner[0], winner[1]["source"], (search.winner() or {}).get("config"))
                    break
        if earlier is None:
            continue
        before, now = earlier[0], metrics
        cells = (f"| {model} | {_fmt(before['valid'].get('recall@20'))} / {_fmt(before['test'].get('recall@20'))} "
                 f"(epoch {before.get('best_epoch', '–')}) | {_fmt(now['valid'].get('recall@20'))} / "
                 f"**{_fmt(now['test'].get('recall@20'))}** (epoch {now.get('best_epoch', '–')}) | `{earlier[1]}` |")
        others = config_differences(earlier[2], config, expected=("train.negative_items",))
        (more if others else alone).append(cells + (f" {'; '.join(others)} |" if others else ""))
    head = ["| model | negatives from all items: valid / test R@20 | only trained items: valid / test R@20 | earlier "
            "record |", "|---|---|---|---|"]
    lines = []
    if alone:
        lines += ["The warm-table runs drawn with `negative_items: trained` (the default now) beside the same model's "
                  "earlier run whose config differs in that alone: negatives drawn from every item (the items without "
                  "a train interaction included).", ""] + head + alone
    if more:
        lines += ([""] if lines else []) + [
            "Warm-table runs whose earlier all-items run differs in MORE than the negatives (the last column lists "
            "every other difference, earlier -> now), so the change is not the sampler's alone:", "",
            head[0] + " other differences |", head[1] + "---|"] + more
    return lines


def build_report(dataset: str, anchors_dir: Path, root: Path = HERE, max_epochs: int | None = None) -> str:
    """The report of ``root/records/<dataset>`` and ``root/results`` (``root``: this folder, or
    another with the same layout, e.g. ``experiments/reproduce.py --output``). ``max_epochs``:
    the records are a smoke run's, every ``train.epochs`` capped at it (said in the header)."""
    records_dir = root / "records" / dataset
    shown = (f"`experiments/records/{dataset}/*.jsonl`" if Path(root).resolve() == HERE.resolve()
             else f"`{records_dir}/*.jsonl`")
    command = f"python experiments/make_results.py --dataset {dataset}" + (
        "" if Path(root).resolve() == HERE.resolve() else f" --root {root}")
    anchors_path = anchors_dir / f"mmrec_{dataset}.json"
    anchors = _read_json(anchors_path) if anchors_path.exists() else {}
    chosen = collect_runs(records_dir)
    out = [f"# Results on {dataset}",
           "",
           f"Generated by `{command}` from the run records "
           f"({shown}, packed from the runs by `experiments/records.py`); "
           "do not edit by hand.",
           ""]
    if max_epochs is not None:
        out += [f"**A smoke run, not the real table**: every run's `train.epochs` was capped at {max_epochs} "
                "(`experiments/reproduce.py --max-epochs`), so the figures below are not the models' results.", ""]
    out += [
           "Protocol: MMRec's (full ranking over all items, training items masked, users without held-out "
           "items skipped); test figures are at the best validation epoch; every setting was chosen by "
           "VALIDATION recall@20 only. MMRec's figures are from `../shared/anchors/` (same data, split and "
           "features; measured on this kind of 2-core machine).",
           "",
           "## Warm start: test ranking metrics", ""]
    speed_path = root / "results" / f"{dataset}_speed.json"
    speed = _read_json(speed_path) if speed_path.exists() else {}
    out += ranking_table(chosen, anchors, speed) if chosen else ["No runs found."]
    if chosen and not speed:
        out += ["", f"Seconds are the runs' own, taken while other jobs shared the 2 cores; there is no quiet-machine "
                    f"timing (`results/{dataset}_speed.json`) for this dataset, so the 'slower' ratios to MMRec's seconds "
                    "are not a speed comparison."]
    if speed:
        loads = [v.get("load_average", 0.0) for v in speed.values()]
        dates = sorted(str(v["measured"])[:10] for v in speed.values() if v.get("measured"))
        when = "" if not dates else f"measured {dates[0]}" + ("" if dates[0] == dates[-1] else f" to {dates[-1]}") + ", "
        out += ["", f"† seconds from `{speed_path.relative_to(root)}` (`benchmarks/bench_train.py`, {when}models timed "
                    f"one after another, load average {min(loads):.1f}-{max(loads):.1f} on the 2 cores; 'eval s' is valid + "
                    "test there, as MMRec's anchor); other seconds are the runs' own, taken while other jobs shared "
                    "the machine. The 'x faster' ratios divide MMRec's anchor seconds, timed on another day and "
                    "possibly another machine of this kind; side by side on one machine: "
                    "`results/speed_vs_mmrec.json`."]
    published = anchors_dir / f"{dataset}_published.md"
    if published.exists() and chosen:
        out += ["", "## Published figures (ANOTHER protocol: not comparable cell by cell)", "",
                f"From `{published.name}` in the anchors folder: the papers' own runs of this data release, which "
                "differ from ours (see that file: e.g. more modalities, and the best TEST epoch reported instead "
                "of selection by validation). Shown for the field's ordering and ratios only; the same-protocol "
                "bar is MMRec's column above (MMRec's own figures: one setting per model, mostly its lfm2k choice, not "
                "re-tuned on this data; see the anchors' README).", ""] + published_table(published, chosen)
        out += [""] + content_ratio_lines(chosen)
    unseen_path = root / "results" / f"{dataset}_unseen_items.json"
    if unseen_path.exists():
        out += ["", "## Held-out interactions on items unseen in train (scored separately)", "",
                f"From `{unseen_path.relative_to(root)}` (`experiments/unseen_items.py`).", ""]
        out += unseen_items_table(_read_json(unseen_path))
    probe_path = root / "results" / f"{dataset}_feature_probe.json"
    if probe_path.exists():
        out += ["", "## What the features carry on their own (no training)", "",
                f"From `{probe_path.relative_to(root)}` (`experiments/feature_probe.py`, numpy): test recall@20 of "
                "ranking by train popularity, and of an item-kNN scorer on each modality's cosine 10-NN graph (the "
                "graph FREEDOM freezes, used alone), with the rows raw, centered or standardized.", ""]
        out += feature_probe_table(_read_json(probe_path))
    samplers = sampler_table(records_dir, chosen, root)
    if samplers:
        out += ["", "## Negatives only among items with a train interaction (`train.negative_items`)", ""] + samplers
    buckets_path = root / "results" / f"{dataset}_popularity_buckets.json"
    transforms = transform_table(records_dir / "feature_transform", chosen, root)
    if buckets_path.exists() or transforms:
        out += ["", "## Investigation: where content pays off, and the features' geometry", ""]
    if buckets_path.exists():
        out += [f"Test recall@20 on the held-out pairs grouped by how many train interactions their item has, from "
                f"`{buckets_path.relative_to(root)}` (`experiments/popularity_buckets.py`; each run's best checkpoint, "
                "same protocol, ratio to BPR-MF in brackets).", ""]
        out += popularity_buckets_table(_read_json(buckets_path))
    if transforms:
        out += ["", "Data-level feature transforms (`data.feature_transform`, applied once after loading, statistics "
                    f"over every item's row), records in `records/{dataset}/feature_transform/`, beside each model's "
                    "warm-table run (first, with the transform it used); where a run differs from the warm-table run "
                    "in more than the transform, the other keys are listed (warm-table run -> this run):", ""] + transforms
    findings_path = root / "results" / f"{dataset}_findings.md"
    if findings_path.exists():
        out += ["", findings_path.read_text(encoding="utf-8").strip()]
    ablations = ablation_table(records_dir / "modality_ablation", chosen, root)
    if ablations:
        out += ["", "## Modality ablations (the model's chosen setting, one modality removed)", "",
                f"Records in `records/{dataset}/modality_ablation/`; the last row of each model is its warm-table "
                "run with every modality; an ablation run that differs from it in more than the modalities lists "
                "the other keys (warm-table run -> ablation run).", ""] + ablations
    out += ["", "## Hyper-parameter grids (winner chosen by valid recall@20)", ""] + grid_lines(chosen)
    for title, name, render in (
            ("Cold-start items (new items scored from their features or KG node alone)", "coldstart", coldstart_table),
            ("Missing modality (30% of one modality's rows hidden)", "missing_modality", missing_modality_table)):
        path = root / "results" / f"{dataset}_{name}.json"
        if path.exists():
            content = _read_json(path)
            if name == "missing_modality":  # the fraction the result file says was hidden
                title = _missing_modality_title(content)
            try:
                body = render(content)
            except (KeyError, TypeError):  # a hand-made or older file: show it as it is
                body = generic_table(content)
            out += ["", f"## {title}", "", f"From `{path.relative_to(root)}`.", ""] + body
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="lfm2k")
    parser.add_argument("--anchors", default=str(HERE.parent / ".." / "shared" / "anchors"))
    parser.add_argument("--root", type=Path, default=HERE,
                        help="read ROOT/records/<dataset> and ROOT/results, write ROOT/results/<dataset>.md "
                             "(default: experiments/)")
    parser.add_argument("--max-epochs", type=int, help="the records are a smoke run's with train.epochs capped at "
                        "this (experiments/reproduce.py --max-epochs): the table's header says so")
    args = parser.parse_args(argv)
    root = args.root.expanduser().resolve()
    records_dir = root / "records" / args.dataset
    target = root / "results" / f"{args.dataset}.md"
    if not records_dir.is_dir():
        print(f"error: {records_dir}: no such records folder (expected ROOT/records/<dataset>/*.jsonl, packed by "
              "experiments/records.py; check --dataset and --root)", file=sys.stderr)
        return 2
    if not any(records_dir.glob("*.jsonl")):
        print(f"error: {records_dir}: no run records (*.jsonl) there; nothing to make a table from", file=sys.stderr)
        return 2
    if target.is_dir():
        print(f"error: {target}: is a folder; expected the table's file there", file=sys.stderr)
        return 2
    if args.max_epochs is not None and args.max_epochs < 1:
        parser.error(f"--max-epochs must be at least 1; found {args.max_epochs}")
    try:
        report = build_report(args.dataset, Path(args.anchors), root, max_epochs=args.max_epochs)
        write_atomic(target, report)
    except (records.RecordError, OSError, json.JSONDecodeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
