"""Checkpoints: a nested training state round-trips exactly through safetensors + JSON, nothing is pickled, a
damaged checkpoint is refused with a clear error, another configuration's checkpoint is never resumed."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from thinkrec.utils.checkpoint import (
    Checkpointer,
    generator_state,
    load_state,
    rng_state,
    save_state,
    set_generator_state,
    set_rng_state,
)


def _optimizer_state() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    for _ in range(3):
        model(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
        sched.step()
    return model, opt, sched


def test_training_state_round_trips_exactly(tmp_path):
    model, opt, sched = _optimizer_state()
    gen = np.random.default_rng(7)
    gen.random(3)
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "rng": rng_state(),
             "np_gen": generator_state(gen), "torch_gen": generator_state(torch.Generator().manual_seed(3)),
             "history": [{"epoch": 1, "loss": 0.5, "best": True}], "arr": np.arange(6, dtype=np.int16).reshape(2, 3),
             "pair": (1, "a"), "none": None, "by_int": {0: "x", 3: [1.5]}}
    save_state(tmp_path / "ck", state)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["state.json", "state.safetensors"]
    json.loads((tmp_path / "ck" / "state.json").read_text())  # plain JSON: nothing executable
    back = load_state(tmp_path / "ck")
    for k, v in model.state_dict().items():
        assert torch.equal(back["model"][k], v)
    m2, o2, s2 = _optimizer_state()
    o2.load_state_dict(back["opt"])
    s2.load_state_dict(back["sched"])
    assert s2.get_last_lr() == sched.get_last_lr()
    for a, b in zip(opt.state_dict()["state"].values(), o2.state_dict()["state"].values(), strict=True):
        for key in a:
            assert torch.equal(a[key], b[key])
    assert back["history"] == state["history"] and back["pair"] == (1, "a") and back["none"] is None
    assert back["by_int"] == {0: "x", 3: [1.5]}
    assert back["arr"].dtype == np.int16 and np.array_equal(back["arr"], state["arr"])
    g2 = np.random.default_rng(0)
    set_generator_state(g2, back["np_gen"])
    assert g2.random() == gen.random()
    t2 = torch.Generator()
    set_generator_state(t2, back["torch_gen"])
    assert torch.equal(torch.rand(3, generator=t2), torch.rand(3, generator=torch.Generator().manual_seed(3)))


def test_global_rng_states_are_restored():
    saved = rng_state()
    a = (torch.rand(2), np.random.rand(2), random.random())
    torch.rand(5), np.random.rand(5), random.random()
    set_rng_state(saved)
    b = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_unstorable_objects_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(TypeError, match="cannot store set at 'bad'"):
        save_state(tmp_path / "ck", {"bad": {1, 2}})
    assert not (tmp_path / "ck").exists()


def test_damaged_checkpoint_is_a_clear_error(tmp_path):
    save_state(tmp_path / "ck", {"w": torch.ones(100)})
    f = tmp_path / "ck" / "state.safetensors"
    f.write_bytes(f.read_bytes()[:50])
    with pytest.raises(ValueError, match="unreadable checkpoint.*remove it"):
        load_state(tmp_path / "ck")


def test_another_configurations_checkpoint_is_not_resumed(tmp_path):
    logs: list[str] = []
    Checkpointer(tmp_path / "ck", "key-a").save({"epoch": 3})
    assert Checkpointer(tmp_path / "ck", "key-a").load()["epoch"] == 3
    assert Checkpointer(tmp_path / "ck", "key-b", log=logs.append).load() is None
    assert "another configuration" in logs[0]
    with pytest.raises(ValueError, match="different configuration"):
        Checkpointer(tmp_path / "ck", "key-b", strict=True).load()
    off = Checkpointer(None, "k")
    off.save({"epoch": 1})
    assert off.load() is None and not off.enabled


def test_a_write_that_fails_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    import thinkrec.utils.checkpoint as ck

    save_state(tmp_path / "ck", {"epoch": 1})

    def full_disk(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_state(tmp_path / "ck", {"epoch": 2, "w": torch.ones(3)})
    assert load_state(tmp_path / "ck") == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temporary folder left behind
