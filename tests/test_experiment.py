"""jml_jax/experiment.py: built once, pretrained pieces enter the init."""

from __future__ import annotations

import jax
import numpy as np

from configs import demo
from jml_jax import experiment, tasks
from jml_jax.convert.common import flatten_tree


def _config():
    c = demo.get_config("text_only")
    c.data.max_seq_length = 32
    c.mesh_shape = (1, 1, 1)
    return c


def test_the_model_init_is_traced_once(monkeypatch):
    calls = []
    original = tasks.JointTask.__init__

    def counting_init(self, config):
        original(self, config)
        inner = self.init_fn

        def init_fn(rng):
            calls.append(1)
            return inner(rng)

        self.init_fn = init_fn

    monkeypatch.setattr(tasks.JointTask, "__init__", counting_init)
    exp = experiment.build_experiment(_config(), devices=jax.devices()[:1], num_train_steps=10)
    assert len(calls) == 1  # shapes, shardings and the optimizer from one trace
    assert exp.abstract_state.params["bert"]["embeddings"]["word_embeddings"]["embedding"].sharding is not None


def test_pretrained_pieces_replace_the_random_init_and_nothing_else(monkeypatch):
    exp = experiment.build_experiment(_config(), devices=jax.devices()[:1], num_train_steps=10)
    abstract = flatten_tree(exp.abstract_state.params)
    rng = np.random.default_rng(0)
    chosen = [k for k in sorted(abstract) if k.startswith("bert/encoder/layer_0/")]
    pieces = {f"params/{k}": rng.normal(size=abstract[k].shape).astype(np.float32) for k in chosen}
    monkeypatch.setattr(exp.task, "pretrained_pieces", lambda abstract_variables: pieces)

    state = flatten_tree(jax.device_get(exp.initial_state().params))
    random = flatten_tree(jax.device_get(exp.random_state().params))
    for key in abstract:
        want = pieces[f"params/{key}"] if f"params/{key}" in pieces else random[key]
        np.testing.assert_array_equal(state[key], want, err_msg=key)
    assert chosen and len(chosen) < len(abstract)


def test_schedule_length_follows_the_original_or_the_steps_taken():
    from configs import twitter2015
    from jml_jax.train import Schedule

    c = twitter2015.get_config()
    assert c.optimizer.t_total == "original"
    s = Schedule.from_config(c, 2101)  # Twitter-2015 train (§8)
    assert (s.steps_per_epoch, s.total_steps, s.t_total) == (65, 3250, 3282)
    c.optimizer.t_total = "steps"
    assert Schedule.from_config(c, 2101).t_total == 3250
    c.optimizer.t_total = "nope"
    try:
        Schedule.from_config(c, 2101)
    except ValueError as err:
        assert "optimizer.t_total='nope'" in str(err)
    else:
        raise AssertionError("an unknown t_total must be refused")


def test_faithful_defaults_of_the_joint_config():
    from configs import twitter2015
    from jml_jax import model_factory

    c = twitter2015.get_config()
    jml = model_factory.jml_config_from(c)
    assert jml.main_resnet_bn_updates == 2  # the original's double BatchNorm update (§10.8)
    assert (c.optimizer.grad_accum_steps, c.optimizer.accumulation, c.batch_size) == (8, "one_pass", 32)
