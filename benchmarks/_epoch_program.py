"""One training epoch as ``jaxrec train`` compiles it, ready to lower, time or profile (shared by
``profile_epoch.py`` and ``bench_roofline.py``)."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class EpochProgram:
    """The runner's scanned epoch (``runner.run(state, ctx, batches)``) with its inputs on the device:
    the first epoch's batches, the initial state, one device, one call per epoch."""

    config: Any
    experiment: Any
    runner: Any
    state: Any
    ctx: Any
    batches: Any

    def compiled(self):
        """The compiled XLA executable of one epoch call."""
        return self.runner._run.lower(self.state, self.ctx, self.batches).compile()


def epoch_program(config_path: str, data: str | None, overrides: list[str] = ()) -> EpochProgram:
    """Build the model, optimizer and runner from ``config_path`` as ``jaxrec train`` does
    (``make_runner``, ``train.parallel=none``, ``train.steps_per_call=0``), data from ``data``
    (None: the config's own data section, e.g. synthetic data), then ``overrides`` (``KEY=VALUE``
    as ``--set`` takes them)."""
    from jaxrec.train import init_state, load_config, make_runner, prepare_experiment

    data_path = [f"data.path={data}"] if data is not None else []
    config = load_config(config_path, [*overrides, *data_path, "train.parallel=none", "train.steps_per_call=0"])
    exp = prepare_experiment(config)
    runner = make_runner(exp)
    state = runner.put_state(init_state(exp.module, exp.built.ctx, exp.sampler.example_batch(), exp.tx,
                                        config.train.seed))
    return EpochProgram(config, exp, runner, state, runner.put_ctx(exp.built.ctx),
                        runner.put_batches(exp.sampler.batches(0)))
