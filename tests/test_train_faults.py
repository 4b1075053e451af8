"""Training under faults and bad input: non-finite configs and states, a workdir lock held by
another process, damaged checkpoints, runaway ids and memory, and failures that leave no
trace in the workdir and no traceback on the terminal."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from jaxrec.data import Interactions, MultimodalDataset
from jaxrec.data._synthetic import make_synthetic
from jaxrec.errors import ConfigError, DataError, ResourceError, TrainingDivergedError
from jaxrec.train import Checkpoints, config_from_dict, load_config, train_and_evaluate
from jaxrec.train._setup import prepare_experiment

ROOT = Path(__file__).resolve().parents[1]
DATA_ARGS = dict(n_users=60, n_items=40, n_interactions=900, seed=3)
RAW = {
    "data": {"synthetic": DATA_ARGS},
    "model": {"name": "bprmf", "args": {"embedding_size": 4}},
    "train": {"epochs": 3, "batch_size": 128, "learning_rate": 0.02, "seed": 1, "checkpoint_every": 1},
    "eval": {"ks": [5, 10], "metrics": ["recall", "ndcg"]},
}
RAW["train"]["valid_metric"] = "recall@10"


def _raw(**sections):
    raw = {key: dict(value) if isinstance(value, dict) else value for key, value in RAW.items()}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return raw


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic(**DATA_ARGS)


def _history(workdir):
    rows = [json.loads(line) for line in (workdir / "history.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if "seconds" not in k} for row in rows]


# ---- configs: non-finite numbers, seeds, a missing model, cut-offs beyond the items ----------------


@pytest.mark.parametrize("text, key", [
    ("train: {learning_rate: .nan}", "train.learning_rate"),
    ("train: {learning_rate: .inf}", "train.learning_rate"),
    ("train: {weight_decay: -.inf}", "train.weight_decay"),
    ("train: {clip_norm: .nan}", "train.clip_norm"),
    ("train: {learning_rate: nan}", "train.learning_rate"),
    ("model: {name: bprmf, args: {dropout: .nan}}", "model.args.dropout"),
    ("data: {synthetic: {temperature: .inf}}", "data.synthetic.temperature"),
    ("grid: {train.learning_rate: [0.1, .nan]}", "grid.train.learning_rate[1]"),
    ("search: {method: random, budget: 2, space: {train.learning_rate: {uniform: [0.0, .inf]}}}",
     "search.space.train.learning_rate.uniform[1]"),
])
def test_non_finite_numbers_are_rejected_anywhere_in_a_config(tmp_path, text, key):
    path = tmp_path / "c.yaml"
    base = {"model": {"name": "bprmf"}, "data": {"synthetic": {}}}
    raw = {**base}
    for section, value in yaml.safe_load(text).items():
        raw[section] = {**raw.get(section, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"config key {key!r} must be a finite number" in str(info.value)


@pytest.mark.parametrize("seed", [-1, 2**32, 2**64])
def test_a_seed_outside_32_bits_is_refused(seed):
    # PRNGKey(2**32) == PRNGKey(0) without x64: such a seed would silently repeat another run.
    with pytest.raises(ConfigError, match=r"'train.seed' must be an integer in \[0, 4294967295\]"):
        config_from_dict(_raw(train={"seed": seed}))
    with pytest.raises(ConfigError, match="'search.seed'"):
        config_from_dict({**_raw(), "search": {"method": "random", "budget": 1, "seed": -3,
                                               "space": {"train.seed": [1, 2]}}})


def test_a_config_without_a_model_section_is_refused(tmp_path):
    raw = {k: v for k, v in RAW.items() if k != "model"}
    with pytest.raises(ConfigError, match="no model: section"):
        config_from_dict(raw)
    with pytest.raises(ConfigError, match="'model.name' is missing"):
        config_from_dict({**raw, "model": {"args": {"embedding_size": 4}}})


def test_cut_offs_beyond_the_number_of_items_are_refused_before_the_workdir_exists(dataset, tmp_path):
    config = config_from_dict(_raw(eval={"ks": [10, 50]}))
    with pytest.raises(ConfigError, match=r"eval.ks has 50, but the dataset has only 40 items"):
        train_and_evaluate(config, tmp_path / "run", dataset=dataset, quiet=True)
    assert not (tmp_path / "run").exists()


def test_a_file_at_the_workdir_is_named_before_anything_is_made(dataset, tmp_path):
    # Was "cannot create the workdir ...: File exists" / "Not a directory", from the lock's mkdir.
    (tmp_path / "taken").write_text("x")
    for where in (tmp_path / "taken", tmp_path / "taken" / "run"):
        with pytest.raises(ConfigError, match=f"cannot use {where} as a run folder: {tmp_path / 'taken'} is a file"):
            train_and_evaluate(config_from_dict(_raw()), where, dataset=dataset, quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_a_multi_process_run_outside_the_sharded_mode_is_refused_before_its_folder(dataset, tmp_path, monkeypatch):
    # StepRunner refused it, but only after the lock had made the folder, log.txt and checkpoints/.
    from jaxrec.train import _distributed

    monkeypatch.setattr(_distributed, "is_multiprocess", lambda: True)
    for parallel in ("none", "pmap"):
        with pytest.raises(ConfigError, match=f"a multi-process run needs train.parallel: sharded \\(found '{parallel}'"):
            train_and_evaluate(config_from_dict(_raw(train={"parallel": parallel})), tmp_path / "run",
                               dataset=dataset, quiet=True)
    assert not (tmp_path / "run").exists()


def test_cut_offs_that_reach_a_cold_start_splits_candidates_are_refused(dataset, tmp_path):
    # A cold-start split ranks only its held-out items (here 40 items x 0.2 = 8: 4 valid, 4
    # test); at K >= 4 every held-out item is in the list and every metric was trivially 1.
    from jaxrec.data import cold_start_item_split
    from jaxrec.train._workdir import check_data

    split, cold = cold_start_item_split(dataset, holdout=0.2, seed=0)
    assert (len(cold.valid), len(cold.test)) == (4, 4)
    message = r"eval.ks has 5, 10, but the cold-start valid split ranks only its 4 held-out items"
    with pytest.raises(ConfigError, match=message):
        check_data(config_from_dict(_raw()), split)
    with pytest.raises(ConfigError, match=message):
        train_and_evaluate(config_from_dict(_raw()), tmp_path / "run", dataset=split, quiet=True)
    assert not (tmp_path / "run").exists()
    check_data(config_from_dict(_raw(eval={"ks": [1, 3]}, train={"valid_metric": "recall@3"})), split)  # below 4


# ---- 1. never save non-finite state --------------------------------------------------------------


def test_checkpoints_refuse_non_finite_state(tmp_path):
    checkpoints = Checkpoints(tmp_path / "ckpt")
    try:
        state = {"params": {"a": np.ones(3, np.float32), "b": np.array([1.0, np.inf], np.float32)}}
        with pytest.raises(TrainingDivergedError, match=r"non-finite state as checkpoint 1: params\['b'\]"):
            checkpoints.save(1, state, {"epochs_done": 1}, is_best=False)
        assert checkpoints.epochs() == []
    finally:
        checkpoints.close()


# ---- 5. ids dense enough to index tables, settings that would not fit in memory -------------------


def test_sparse_ids_are_refused_with_the_file_and_line(tmp_path):
    folder = tmp_path / "toy"
    folder.mkdir()
    lines = ["userID\titemID\trating\tx_label", "0\t0\t1\t0", "1\t1\t1\t1", f"{2**40}\t2\t1\t2", "2\t0\t1\t0"]
    (folder / "toy.inter").write_text("\n".join(lines) + "\n")
    from jaxrec.data import read_mmrec

    with pytest.raises(DataError) as info:
        read_mmrec(folder)
    message = str(info.value)
    assert message.startswith(f"{folder / 'toy.inter'}:4, field 'userID': ids too sparse to index a table")
    assert f"found id {2**40} with only 4 distinct ids" in message
    # The same rule at the dataset (no file, so the row is named).
    with pytest.raises(DataError, match=r"field 'itemID': ids too sparse .* id 1999999999 at row 1"):
        MultimodalDataset("d", 3, 2_000_000_000, Interactions([0, 1, 2], [0, 1_999_999_999, 5], [0, 1, 2]))
    # Gaps are fine up to the rule: 100,000 ids, or ten times the distinct ids.
    MultimodalDataset("d", 3, 100_000, Interactions([0, 1, 2], [0, 99_999, 5], [0, 1, 2]))


def test_settings_that_cannot_fit_in_memory_are_named_before_anything_is_allocated(dataset, tmp_path, monkeypatch):
    from jaxrec.train import _workdir

    # (Before these checks, batch_size=1e9 allocated 3.7 GiB per batch array before failing.)
    monkeypatch.setattr(_workdir, "available_memory", lambda: 2 * 2**30)
    config = config_from_dict(_raw(train={"batch_size": 1_000_000_000}))
    with pytest.raises(ResourceError, match=r"train.batch_size=1000000000 would need 29.8 GiB for an epoch's "
                                            r"batches .* more than the 2.0 GiB available"):
        train_and_evaluate(config, tmp_path / "run", dataset=dataset, quiet=True)
    # 100 users and items x 20M dims x 4 bytes x 3 (parameters, Adam's two moments), twice over.
    config = config_from_dict(_raw(model={"args": {"embedding_size": 20_000_000}}))
    with pytest.raises(ResourceError, match=r"model 'bprmf' \(model.args: embedding_size=20000000\) would need "
                                            r"44.7 GiB for its 2,000,000,000 parameters and optimizer state"):
        train_and_evaluate(config, tmp_path / "run", dataset=dataset, quiet=True)
    # One evaluation batch: users x items float32 scores, about three copies.
    bigger = make_synthetic(3000, 2000, n_interactions=20_000, seed=0)
    eval_users = max(int(np.unique(bigger.split_pairs(split)[:, 0]).size) for split in ("valid", "test"))
    need = 3 * eval_users * 2000 * 4
    monkeypatch.setattr(_workdir, "available_memory", lambda: need - 1)
    config = config_from_dict(_raw(eval={"batch_size": 4096}))
    expected = rf"eval.batch_size=4096 would need .* \({eval_users:,} users x 2,000 items\)"
    with pytest.raises(ResourceError, match=expected):
        train_and_evaluate(config, tmp_path / "run", dataset=bigger, quiet=True)
    monkeypatch.setattr(_workdir, "available_memory", lambda: need)
    assert not (tmp_path / "run").exists()
    _workdir.check_memory(prepare_experiment(config, bigger))  # exactly enough: accepted


# ---- 3. one run per workdir: an exclusive lock, stale locks taken over ----------------------------

_HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from jaxrec.data._synthetic import make_synthetic
    from jaxrec.train import TrainHooks, config_from_dict, train_and_evaluate
    raw, data_args, workdir, ready, go = eval(sys.argv[1])

    def wait_for_go(epoch, row):
        if epoch == 1:
            Path(ready).write_text("")
            deadline = time.time() + 120
            while not Path(go).exists() and time.time() < deadline:
                time.sleep(0.05)

    train_and_evaluate(config_from_dict(raw), workdir, dataset=make_synthetic(**data_args), quiet=True,
                       hooks=TrainHooks(on_epoch_end=wait_for_go))
""")

_DIES_HOLDING = textwrap.dedent("""
    import os, signal, sys
    from jaxrec.train._workdir import WorkdirLock
    WorkdirLock(sys.argv[1]).acquire()
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_a_second_run_on_a_locked_workdir_refuses_and_a_dead_holders_lock_is_taken_over(dataset, tmp_path):
    busy, stale = tmp_path / "busy", tmp_path / "stale"
    ready, go = tmp_path / "ready", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, repr((RAW, DATA_ARGS, str(busy), str(ready), str(go)))],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    dying = subprocess.Popen([sys.executable, "-c", _DIES_HOLDING, str(stale)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert dying.wait(timeout=120) == -signal.SIGKILL, dying.stderr.read()
        deadline = time.time() + 180
        while not ready.exists():
            assert holder.poll() is None, holder.stderr.read()
            assert time.time() < deadline, "the first run never reached the end of epoch 1"
            time.sleep(0.1)
        for resume in (False, True):
            with pytest.raises(ConfigError) as info:
                train_and_evaluate(config_from_dict(RAW), busy, dataset=dataset, resume=resume, quiet=True)
            message = str(info.value)
            assert f"{busy} is in use by another run (pid {holder.pid} on {os.uname().nodename}" in message
        go.write_text("")
        out, err = holder.communicate(timeout=180)
        assert holder.returncode == 0, err
        assert json.loads((busy / "metrics.json").read_text())["epochs_run"] == 3
        assert not (busy / ".lock").exists()

        # The killed process's lock is stale: the next run takes it over and says so.
        assert (stale / ".lock").exists()
        dead_pid = json.loads((stale / ".lock").read_text())["pid"]
        assert dead_pid == dying.pid
        train_and_evaluate(config_from_dict(RAW), stale, dataset=dataset, quiet=True)
        log = (stale / "log.txt").read_text()
        assert f"took over the lock of a run that ended without releasing it (pid {dead_pid}" in log
        assert not (stale / ".lock").exists()
    finally:
        for process in (holder, dying):
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)


# ---- 4. a damaged checkpoint: fall back to the newest intact one ---------------------------------


def _stop_after(epoch):
    from jaxrec.train import TrainHooks

    def hook(done, row):
        if done == epoch:
            raise KeyboardInterrupt  # as a killed process: checkpoints on disk, no outputs

    return TrainHooks(on_epoch_end=hook)


def _damage(checkpoint_dir: Path, how: str) -> None:
    # The array data: the files in the OCDBT "d" folders (the small top-level files are metadata).
    for victim in [p for p in (checkpoint_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]:
        data = bytearray(victim.read_bytes())
        if how == "truncate":
            victim.write_bytes(bytes(data[: len(data) // 2]))
        else:  # flip bits in the middle, same size
            for k in range(len(data) // 2, min(len(data), len(data) // 2 + 16)):
                data[k] ^= 0xFF
            victim.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_resume_skips_a_damaged_latest_checkpoint_with_a_warning(dataset, tmp_path, how):
    raw = _raw(train={"epochs": 4})
    reference = train_and_evaluate(config_from_dict(raw), tmp_path / "reference", dataset=dataset, quiet=True)
    workdir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(config_from_dict(raw), workdir, dataset=dataset, quiet=True, hooks=_stop_after(3))
    _damage(workdir / "checkpoints" / "3", how)
    resumed = train_and_evaluate(config_from_dict(raw), workdir, dataset=dataset, resume=True, quiet=True)
    log = (workdir / "log.txt").read_text()
    assert f"checkpoint {workdir / 'checkpoints' / '3'} is damaged" in log
    assert "resuming from the newest intact checkpoint, after epoch 2" in log
    # The epochs since the intact checkpoint are recomputed exactly.
    assert {k: v for k, v in resumed.items() if k != "timing"} == \
        {k: v for k, v in reference.items() if k != "timing"}
    assert _history(workdir) == _history(tmp_path / "reference")


def test_resume_with_every_checkpoint_damaged_names_them(dataset, tmp_path):
    workdir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(config_from_dict(RAW), workdir, dataset=dataset, quiet=True, hooks=_stop_after(2))
    epochs = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    for epoch in epochs:
        _damage(workdir / "checkpoints" / str(epoch), "truncate")
    with pytest.raises(ConfigError, match=r"no intact checkpoint .* damaged: " + ", ".join(map(str, epochs[::-1]))):
        train_and_evaluate(config_from_dict(RAW), workdir, dataset=dataset, resume=True, quiet=True)


# ---- --resume: nothing to resume, extending a finished run -----------------------------------------


def test_resume_on_a_missing_or_empty_workdir_says_there_is_nothing_to_resume(dataset, tmp_path):
    for workdir in (tmp_path / "missing", tmp_path / "empty"):
        if workdir.name == "empty":
            workdir.mkdir()
        with pytest.raises(ConfigError, match=f"nothing to resume: {workdir} holds no run"):
            train_and_evaluate(config_from_dict(RAW), workdir, dataset=dataset, resume=True, quiet=True)
    assert not (tmp_path / "missing").exists() and os.listdir(tmp_path / "empty") == []


def test_a_finished_run_can_be_extended_with_more_epochs_and_nothing_else(dataset, tmp_path):
    longer = train_and_evaluate(config_from_dict(_raw(train={"epochs": 4})), tmp_path / "long", dataset=dataset,
                                quiet=True)
    workdir = tmp_path / "run"
    train_and_evaluate(config_from_dict(_raw(train={"epochs": 2})), workdir, dataset=dataset, quiet=True)
    with pytest.raises(ConfigError, match=r"train.learning_rate: 0.02 -> 0.03"):
        train_and_evaluate(config_from_dict(_raw(train={"epochs": 4, "learning_rate": 0.03})), workdir,
                           dataset=dataset, resume=True, quiet=True)
    with pytest.raises(ConfigError, match=r"train.epochs: 2 -> 1; train.epochs can only be raised"):
        train_and_evaluate(config_from_dict(_raw(train={"epochs": 1})), workdir, dataset=dataset, resume=True,
                           quiet=True)
    extended = train_and_evaluate(config_from_dict(_raw(train={"epochs": 4})), workdir, dataset=dataset,
                                  resume=True, quiet=True)
    assert "extending the run from 2 to 4 epochs" in (workdir / "log.txt").read_text()
    assert {k: v for k, v in extended.items() if k != "timing"} == {k: v for k, v in longer.items() if k != "timing"}
    assert _history(workdir) == _history(tmp_path / "long")
    assert load_config(workdir / "config.yaml").train.epochs == 4


def test_extension_is_refused_where_it_would_not_be_the_longer_run(dataset, tmp_path):
    cosine = _raw(train={"epochs": 2, "schedule": "cosine"})
    train_and_evaluate(config_from_dict(cosine), tmp_path / "cosine", dataset=dataset, quiet=True)
    cosine["train"]["epochs"] = 4
    with pytest.raises(ConfigError, match="schedule 'cosine' spreads its decay over train.epochs"):
        train_and_evaluate(config_from_dict(cosine), tmp_path / "cosine", dataset=dataset, resume=True, quiet=True)
    stopped = _raw(train={"epochs": 30, "patience": 0, "learning_rate": 0.5})
    metrics = train_and_evaluate(config_from_dict(stopped), tmp_path / "stopped", dataset=dataset, quiet=True)
    assert metrics["stopped_early"]
    stopped["train"]["epochs"] = 40
    with pytest.raises(ConfigError, match=f"stopped early after epoch {metrics['epochs_run']}"):
        train_and_evaluate(config_from_dict(stopped), tmp_path / "stopped", dataset=dataset, resume=True, quiet=True)


# ---- 6. failures leave no workdir and no traceback ------------------------------------------------

_DRIVER = textwrap.dedent("""
    import contextlib, io, json, sys
    from jaxrec.cli.main import main
    results = []
    for argv in json.loads(sys.argv[1]):
        buffer = io.StringIO()
        with contextlib.redirect_stderr(buffer):
            rc = main(argv)
        results.append({"rc": rc, "stderr": buffer.getvalue()})
    print(json.dumps(results))
""")


def test_cli_failures_leave_no_workdir_and_print_no_traceback(tmp_path):
    """~12 failing inputs through the CLI entry point in a fresh interpreter: each ends with one
    ``jaxrec: error:`` line naming the key or file, creates nothing, and the interpreter exits
    without a traceback (Orbax's background threads closed on every path)."""
    inter = tmp_path / "sparse"
    inter.mkdir()
    (inter / "sparse.inter").write_text(
        "userID\titemID\trating\tx_label\n0\t0\t1\t0\n1\t1\t1\t1\n1099511627776\t2\t1\t2\n2\t0\t1\t0\n")
    base = {"model": {"name": "bprmf", "args": {"embedding_size": 4}},
            "data": {"synthetic": {"n_users": 40, "n_items": 30, "n_interactions": 500}},
            "train": {"epochs": 2, "batch_size": 64}, "eval": {"ks": [10, 20]}}
    cases = [
        ({"train": {"learning_rate": float("nan")}}, [], "'train.learning_rate' must be a finite number"),
        ({"train": {"seed": -1}}, [], "'train.seed' must be an integer in [0, 4294967295]"),
        ({}, ["--set", f"train.seed={2**64}"], "'train.seed' must be an integer in [0, 4294967295]"),
        ({"model": None}, [], "no model: section"),
        ({"eval": {"ks": [10, 20, 500]}}, [], "eval.ks has 500, but the dataset has only 30 items"),
        ({"model": {"name": "bprnf"}}, [], "unknown model 'bprnf'"),
        ({"data": {"path": str(tmp_path / "nowhere"), "synthetic": None}}, [], "dataset path does not exist"),
        ({"loss_weights": {"regg": 0.1}}, [], "no loss term 'regg'"),
        ({}, ["--resume"], "nothing to resume"),
        ({"data": {"path": str(inter), "synthetic": None}}, [], "sparse.inter:4, field 'userID': ids too sparse"),
        ({"train": {"batch_size": 100_000_000_000}}, [], "train.batch_size=100000000000"),
        ({"train": {"epochs": 0}}, [], "'train.epochs' must be > 0"),
    ]
    argvs = []
    for index, (change, extra, _) in enumerate(cases):
        raw = json.loads(json.dumps(base))
        for section, value in change.items():
            raw[section] = None if value is None else {**raw.get(section, {}), **value}
        if raw["model"] is None:
            del raw["model"]
        path = tmp_path / f"case{index}.yaml"
        path.write_text(yaml.safe_dump(raw))
        argvs.append(["train", str(path), "--workdir", str(tmp_path / f"run{index}"), "--quiet", *extra])
    # One case that fails mid-run, after the checkpoint manager exists: an update that overflows.
    diverging = json.loads(json.dumps(base))
    diverging["train"].update(learning_rate=1e38, optimizer="sgd")
    (tmp_path / "diverging.yaml").write_text(yaml.safe_dump(diverging))
    argvs.append(["train", str(tmp_path / "diverging.yaml"), "--workdir", str(tmp_path / "diverging"), "--quiet"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(argvs)], capture_output=True, text=True,
                          timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "cannot schedule" not in done.stderr, done.stderr
    results = json.loads(done.stdout.splitlines()[-1])
    for index, ((_, _, expected), result) in enumerate(zip(cases, results)):
        assert result["rc"] == 1, (index, result)
        assert result["stderr"].startswith("jaxrec: error: ") and expected in result["stderr"], (index, result)
        assert "Traceback" not in result["stderr"]
        assert not (tmp_path / f"run{index}").exists(), (index, os.listdir(tmp_path / f"run{index}"))
    assert results[-1]["rc"] == 1 and "training diverged at epoch 1" in results[-1]["stderr"]
    assert "Traceback" not in results[-1]["stderr"]


def test_running_out_of_memory_is_one_line_naming_the_settings(tmp_path, monkeypatch, capsys):
    import jaxrec.train
    from jaxrec.cli.main import main

    def exhausted(*args, **kwargs):
        raise MemoryError("Unable to allocate 8.00 TiB for an array with shape (1099511627777,)")

    monkeypatch.setattr(jaxrec.train, "train_and_evaluate", exhausted)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(RAW))
    assert main(["train", str(path), "--workdir", str(tmp_path / "run"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("jaxrec: error: out of memory (Unable to allocate 8.00 TiB")
    assert "train.batch_size" in err and "eval.batch_size" in err and "Traceback" not in err
