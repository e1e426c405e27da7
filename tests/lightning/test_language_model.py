"""Character-level language modelling: the text data module, the GPT and CharLanguageModule."""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Trainer

from lightning_o2nc.lightning import GPT, CharLanguageModule, CharTextDataModule, GPTConfig
from lightning_o2nc.lightning.cli import build_run
from lightning_o2nc.lightning.errors import DatasetNotFoundError
from lightning_o2nc.lightning.text_data import RandomWindowSampler
from tests.train_configs import QUIET_CPU

REPO = Path(__file__).resolve().parents[2]
PLAY = "ROMEO: But soft, what light through yonder window breaks?\nJULIET: Ay me!\n" * 20
TINY_GPT = {"n_layer": 1, "n_head": 2, "n_embd": 16}


def _text_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "plays"
    folder.mkdir()
    (folder / "b_second.txt").write_text("zebra quartz\n" * 40)
    (folder / "a_first.txt").write_text(PLAY)
    (folder / "notes.md").write_text("not read")
    return folder


def _data(path: Path, **kwargs) -> CharTextDataModule:
    options = {"block_size": 8, "batch_size": 4, "batches_per_epoch": 3, "val_batches": 2}
    data = CharTextDataModule(str(path), **{**options, **kwargs})
    data.prepare_data()
    data.setup("fit")
    return data


def test_folder_is_read_in_sorted_name_order_and_split_ninety_ten(tmp_path):
    data = _data(_text_folder(tmp_path))
    text = PLAY + "zebra quartz\n" * 40
    assert data.vocabulary == "".join(sorted(set(text)))
    n_train = int(len(text) * 0.9)
    assert data.decode(data.train_set.tokens) == text[:n_train]
    assert data.decode(data.val_set.tokens) == text[n_train:]


def test_windows_are_targets_shifted_by_one(tmp_path):
    data = _data(_text_folder(tmp_path))
    inputs, targets = next(iter(data.train_dataloader()))
    assert inputs.shape == targets.shape == (4, 8)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    text = data.decode(data.train_set.tokens)
    for row_in, row_out in zip(inputs, targets, strict=True):
        window = data.decode(row_in) + data.decode(row_out[-1:])
        assert window in text


def test_an_epoch_is_a_fixed_number_of_batches_drawn_from_seed_and_epoch(tmp_path):
    data = _data(_text_folder(tmp_path))
    assert len(data.train_dataloader()) == 3
    sampler = RandomWindowSampler(100, 12, seed=5)
    first = list(sampler)
    assert list(RandomWindowSampler(100, 12, seed=5)) == first
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_validation_windows_are_the_same_at_every_evaluation(tmp_path):
    data = _data(_text_folder(tmp_path))
    batches = [torch.cat([x for x, _ in data.val_dataloader()]) for _ in range(2)]
    assert torch.equal(*batches)
    assert len(batches[0]) == 2 * 4


def test_missing_text_names_the_path_and_the_ways_to_get_it(tmp_path):
    data = CharTextDataModule(str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError) as error:
        data.prepare_data()
    message = str(error.value)
    assert str((tmp_path / "nowhere").resolve()) in message
    assert "make data-shakespeare" in message and "download: true" in message


def _source(tmp_path: Path) -> tuple[str, str]:
    source = tmp_path / "served" / "input.txt"
    source.parent.mkdir()
    source.write_text(PLAY)
    return source.as_uri(), hashlib.sha256(source.read_bytes()).hexdigest()


def test_download_fetches_a_file_url_and_checks_its_sha256(tmp_path):
    url, digest = _source(tmp_path)
    data = _data(tmp_path / "corpus", download=True, url=url, sha256=digest)
    assert (tmp_path / "corpus" / "input.txt").read_text() == PLAY
    assert data.decode(data.val_set.tokens) == PLAY[int(len(PLAY) * 0.9) :]
    wrong = CharTextDataModule(str(tmp_path / "other"), download=True, url=url, sha256="0" * 64)
    with pytest.raises(ValueError, match="SHA-256"):
        wrong.prepare_data()
    assert not (tmp_path / "other" / "input.txt").exists()


def _prepare(folder: str, url: str, digest: str) -> str:
    data = CharTextDataModule(folder, download=True, url=url, sha256=digest)
    data.prepare_data()
    return (Path(folder) / "input.txt").read_text()


@pytest.mark.slow
def test_several_processes_prepare_one_folder_at_once(tmp_path):
    url, digest = _source(tmp_path)
    folder = str(tmp_path / "shared")
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        texts = pool.starmap(_prepare, [(folder, url, digest)] * 3)
    assert texts == [PLAY] * 3
    assert sorted(p.name for p in Path(folder).iterdir()) == ["input.txt"]  # no leftovers


def test_changing_position_t_changes_no_logit_before_t():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()
    tokens = torch.randint(11, (2, 16))
    changed = tokens.clone()
    t = 9
    changed[:, t] = (tokens[:, t] + 1) % 11
    before, after = model(tokens), model(changed)
    assert torch.equal(before[:, :t], after[:, :t])
    assert not torch.allclose(before[:, t:], after[:, t:])


def test_embeddings_are_tied_and_bad_sizes_are_refused():
    model = GPT(GPTConfig(vocab_size=7, block_size=4, n_layer=1, n_head=2, n_embd=8))
    assert model.head.weight is model.token_embedding.weight
    with pytest.raises(ValueError, match="n_head"):
        GPTConfig(vocab_size=7, n_head=3, n_embd=8)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 5, dtype=torch.long))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("optimizer", "options"),
    [
        ("adamw", {"lr": 3e-3}),
        ("o2nc_adamw", {"lr": 3e-3, "seed": 0}),
        ("o2nc", {"lr": 0.3, "seed": 0}),
        ("sgdm", {"lr": 0.3}),
    ],
)
def test_a_short_fit_lowers_the_validation_loss(tmp_path, optimizer, options):
    torch.manual_seed(0)
    data = CharTextDataModule(
        str(_text_folder(tmp_path)), block_size=8, batch_size=8, batches_per_epoch=15, val_batches=2
    )
    model = CharLanguageModule(optimizer=optimizer, **TINY_GPT, **options)
    trainer = Trainer(max_epochs=3, num_sanity_val_steps=0, **QUIET_CPU)
    trainer.validate(model, datamodule=data, verbose=False)
    first = float(trainer.callback_metrics["val/loss"])
    trainer.fit(model, datamodule=data)
    metrics = trainer.callback_metrics
    assert float(metrics["val/loss"]) < first
    assert float(metrics["val/bpc"]) == pytest.approx(float(metrics["val/loss"]) / math.log(2))
    assert ("val/loss_avg" in metrics) == model.hparams.average
    assert model.hparams.vocabulary == data.vocabulary


@pytest.mark.slow
def test_checkpoint_keeps_the_vocabulary_and_samples_from_a_prompt(tmp_path):
    data = CharTextDataModule(
        str(_text_folder(tmp_path)), block_size=8, batch_size=4, batches_per_epoch=2, val_batches=1
    )
    model = CharLanguageModule(optimizer="adamw", lr=1e-3, **TINY_GPT)
    trainer = Trainer(
        max_epochs=1, default_root_dir=tmp_path, **{**QUIET_CPU, "enable_checkpointing": True}
    )
    trainer.fit(model, datamodule=data)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["CharTextDataModule"]["vocabulary"] == data.vocabulary
    loaded = CharLanguageModule.load_from_checkpoint(path)
    text = loaded.sample("ROMEO:", max_new_tokens=20, seed=0)
    assert text.startswith("ROMEO:") and len(text) == 26
    assert set(text) <= set(data.vocabulary)
    assert text == loaded.sample("ROMEO:", max_new_tokens=20, seed=0)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        loaded.sample("@")


def _tiny_shakespeare_config(tmp_path: Path, name: str) -> dict:
    config = yaml.safe_load(
        (REPO / "lightning_o2nc" / "configs" / "train" / f"{name}.yaml").read_text()
    )
    config["trainer"].update({"max_steps": 6, "log_every_n_steps": 2, **QUIET_CPU})
    config["model"].update(TINY_GPT)
    config["data"]["init_args"].update(
        {"path": str(_text_folder(tmp_path)), "batches_per_epoch": 3, "val_batches": 1}
    )
    return config


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["shakespeare_char_adamw", "shakespeare_char_o2nc_adamw", "shakespeare_char_o2nc"]
)
def test_shipped_shakespeare_configs_build_a_language_model_run(tmp_path, name):
    trainer, model, data = build_run(_tiny_shakespeare_config(tmp_path, name), logger=False)
    assert isinstance(model, CharLanguageModule) and isinstance(data, CharTextDataModule)
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 6
    assert "val/loss" in trainer.callback_metrics


@pytest.mark.slow
def test_o2nc_train_fits_a_language_model_from_a_config_file(tmp_path):
    config = _tiny_shakespeare_config(tmp_path, "shakespeare_char_adamw")
    config["trainer"].update({"logger": False})
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [sys.executable, "-m", "lightning_o2nc.lightning.cli", "fit", "--config", str(path),
         "--model.lr=0.002"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "max_steps=6" in done.stderr + done.stdout


def test_sweep_paths_into_a_language_model_config_follow_its_module():
    from lightning_o2nc.sweeps.errors import SweepConfigError
    from lightning_o2nc.sweeps.paths import check_path

    config = {"model": {"lr": 1e-3}, "data": {"class_path": "lightning_o2nc.CharTextDataModule"}}
    check_path(config, "model.n_embd", key="space.model.n_embd")
    check_path(config, "model.beta2", key="space.model.beta2")
    with pytest.raises(SweepConfigError, match="backbone"):
        check_path(config, "model.backbone", key="space.model.backbone")
    classification = {"model": {}, "data": {"class_path": "lightning_o2nc.DigitsDataModule"}}
    check_path(classification, "model.backbone", key="space.model.backbone")


@pytest.mark.slow
def test_a_pytorch_lightning_trainer_fits_the_language_model(tmp_path):
    pl = pytest.importorskip("pytorch_lightning")
    from lightning_o2nc.pytorch_lightning import CharLanguageModule as PLCharLanguageModule

    data = CharTextDataModule(
        str(_text_folder(tmp_path)), block_size=8, batch_size=4, batches_per_epoch=3, val_batches=1
    )
    model = PLCharLanguageModule(optimizer="o2nc_adamw", lr=1e-3, seed=0, average=True, **TINY_GPT)
    assert isinstance(model, pl.LightningModule)
    trainer = pl.Trainer(max_epochs=1, **QUIET_CPU)
    trainer.fit(model, datamodule=data)
    assert {"val/loss", "val/loss_avg"} <= set(trainer.callback_metrics)
