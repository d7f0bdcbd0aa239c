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
from tests.conftest import serve_fleet, single_rank_local_store
from tests.services.redis import RedisServer
from tests.services.workers import WorkerFleet

torch = pytest.importorskip("torch", reason="the test extra installs torch")
transformers = pytest.importorskip("transformers", reason="the test extra installs transformers")

RUN = "hf-run"


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
