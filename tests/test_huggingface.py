"""HoistCallback in a real ``transformers.Trainer`` run with a tiny model built here.

No weights or data are downloaded: the model is a linear layer whose
``forward`` returns a loss, the data a list of tensors. The Trainer saves a
checkpoint every 2 steps; real ``hoist worker`` processes upload each
checkpoint directory to the Libcloud local store, and ``latest.symlink`` names
the last one's manifest once ``train()`` returns.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hoist.protocol.manifest import Manifest
from hoist.state.states import State as ArtifactState
from tests import readme_snippets
from tests.conftest import serve_fleet, single_rank_local_store
from tests.services.redis import RedisServer
from tests.services.workers import WorkerFleet, wait_until

torch = pytest.importorskip("torch", reason="the test extra installs torch")
transformers = pytest.importorskip("transformers", reason="the test extra installs transformers")

RUN = "hf-run"
HF_HEADING = "### Hugging Face"


@pytest.fixture(scope="module")
def fleet(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerFleet]:
    yield from serve_fleet(tmp_path_factory, redis_server.url, "hf", count=1, concurrency=2)


class Tiny(torch.nn.Module):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, x: Any, labels: Any = None) -> dict[str, Any]:
        out = self.linear(x)
        return {"loss": torch.nn.functional.mse_loss(out, labels), "logits": out}


@pytest.mark.long  # the default suite: the README snippet's test below (a Trainer, 2 of 3 kept)
def test_every_saved_checkpoint_lands_and_latest_names_the_last(
    fleet: WorkerFleet, tmp_path: Path
) -> None:
    from hoist.integrations.huggingface import HoistCallback

    store = tmp_path / "store"
    (store / "artifacts").mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    data = [
        {"x": x, "labels": x.sum().reshape(1)}
        for x in torch.randn(48, 4, generator=generator).unbind()
    ]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        run_name=RUN,
        max_steps=6,
        save_steps=2,
        per_device_train_batch_size=8,
        report_to=[],
        use_cpu=True,
        logging_steps=100,
        dataloader_num_workers=0,
    )
    callback = HoistCallback(**single_rank_local_store(fleet, store))
    trainer = transformers.Trainer(
        model=Tiny(), args=args, train_dataset=data, callbacks=[callback]
    )
    trainer.train()  # returns once every checkpoint is uploaded and verified

    objects = store / "artifacts"
    for step in (2, 4, 6):
        local = tmp_path / "out" / f"checkpoint-{step}"
        manifest = Manifest.from_bytes(
            (objects / RUN / f"checkpoints/step-{step:08d}/.hoist-manifest.json").read_bytes()
        )
        assert sorted(f.path for f in manifest.files) == sorted(
            str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()
        )
        for item in manifest.files:
            assert (objects / item.object_name).read_bytes() == (local / item.path).read_bytes()
    pointer = (objects / RUN / "latest.symlink").read_text()
    assert pointer == f"{RUN}/checkpoints/step-00000006/.hoist-manifest.json"


# ----- retention (issue 19): save_total_limit in the store -------------------------------


def test_remote_keep_last_takes_save_total_limit_when_asked_and_refuses_bad_values() -> None:
    from types import SimpleNamespace

    from hoist.errors import ConfigurationError
    from hoist.integrations.huggingface import HoistCallback

    args = SimpleNamespace(save_total_limit=3, load_best_model_at_end=False)
    assert HoistCallback().keep_last(args) is None  # opt-in: the store keeps all by default
    assert HoistCallback(remote_keep_last="save_total_limit").keep_last(args) == 3
    assert HoistCallback(remote_keep_last=2).keep_last(args) == 2
    with pytest.raises(ConfigurationError, match="load_best_model_at_end"):
        HoistCallback(remote_keep_last=2).keep_last(
            SimpleNamespace(save_total_limit=None, load_best_model_at_end=True)
        )
    with pytest.raises(ConfigurationError, match="keep_last must be a positive whole number"):
        HoistCallback(remote_keep_last=-1)


# ----- the README's snippet: a real Trainer, remote_keep_last="save_total_limit" ---------------


def test_the_readme_snippet_runs_and_the_store_keeps_save_total_limit_checkpoints(
    fleet: WorkerFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README.md's Hugging Face snippet as written: 6 steps, a checkpoint every 2,
    ``save_total_limit=2`` taken for the store too.

    The 3 commits are sent milliseconds apart and may finish out of order (a commit
    that finds a later step already holding ``latest`` is superseded: its manifest is
    written, the pointer stays); retention goes by the order the steps were logged, so
    steps 4 and 6 remain whatever order the commits finished in.
    """
    from hoist.protocol.messages import commit_id
    from hoist.state.connection import connect
    from hoist.state.records import Records
    from hoist.state.retention import Retention

    namespace = readme_snippets.run(
        readme_snippets.required(HF_HEADING), fleet, tmp_path, monkeypatch
    )
    run = namespace["args"].run_name
    objects = tmp_path / "store" / "artifacts" / run / "checkpoints"
    steps = {step: commit_id(run, f"checkpoints/step-{step:08d}") for step in (2, 4, 6)}
    states = connect(fleet.broker_url).states(list(steps.values()))  # final: train() waited
    assert states[steps[6]] is ArtifactState.DONE, states
    assert {states[id] for id in steps.values()} <= {ArtifactState.DONE, ArtifactState.SUPERSEDED}
    kept = [4, 6]
    # The prune follows the pointer's move on a worker: train() may return before it.
    expected = [f"step-{step:08d}" for step in kept]
    wait_until(lambda: sorted(p.name for p in objects.iterdir()) == expected, timeout=30)
    for step in kept:  # what remains is the Trainer's folder, byte for byte
        local = tmp_path / "out" / f"checkpoint-{step}"
        manifest = Manifest.from_bytes(
            (objects / f"step-{step:08d}/.hoist-manifest.json").read_bytes()
        )
        assert sorted(f.path for f in manifest.files) == sorted(
            str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()
        )
        for item in manifest.files:
            assert (objects.parents[1] / item.object_name).read_bytes() == (
                local / item.path
            ).read_bytes()
    assert (objects.parent / "latest.symlink").read_text() == (
        f"{run}/checkpoints/step-00000006/.hoist-manifest.json"
    )
    pruned = Retention(Records.from_url(fleet.broker_url).client, run).pruned()
    gone = {name.split("/")[2] for name in pruned}
    assert gone == {"step-00000002"}
