"""Speed-ups that must not change results: split forward, activation cache, unpadding, batching, load cache.

No test here measures time; bench/ does.
"""

import logging

import pytest
import torch
from conftest import tiny_overrides
from omegaconf import OmegaConf

import tiny_models
from harness import activation_cache, experiment, models
from harness.activation_cache import CacheEntry
from harness.errors import ConfigError
from harness.tiers import FrozenPrefix, build_plan
from harness.train import ForwardPass, _train_batch_sampler, check_speed_config, train
from harness.unpadding import TokenUnpadding

FREEZE_BOTTOM = {"strategy": "tiers", "split": 2, "lrs": [0.0, 1e-3]}
SPLIT_ARCHS = ["bert", "roberta", "xlm-roberta", "electra", "distilbert", "gpt2", "llama"]
PAD_ID = 0


def random_examples(count=5, seed=0, vocab=128):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 11, (count,), generator=generator).tolist()
    return [torch.randint(3, vocab, (length,), generator=generator) for length in lengths]


def right_padded(examples, labels=None):
    """Collate token id tensors into a right-padded batch with labels."""
    longest = max(len(ids) for ids in examples)
    input_ids = torch.full((len(examples), longest), PAD_ID)
    attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
    for row, ids in enumerate(examples):
        input_ids[row, :len(ids)] = ids
        attention_mask[row, :len(ids)] = 1
    if labels is None:
        labels = torch.arange(len(examples)) % 2
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def frozen_bottom_model(arch):
    torch.manual_seed(0)
    model = tiny_models.build(arch)
    plan = build_plan(model, FREEZE_BOTTOM)
    plan.train_mode(model)
    return model, plan


def logits_and_grads(model, run_forward, seed=1):
    """Run a forward and backward pass from a fixed random state; return logits and trained gradients."""
    torch.manual_seed(seed)
    output = run_forward()
    output.loss.backward()
    grads = {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}
    model.zero_grad(set_to_none=True)
    return output.logits.detach(), grads


def assert_same(reference, other, atol=0.0):
    ref_logits, ref_grads = reference
    logits, grads = other
    assert set(grads) == set(ref_grads)
    torch.testing.assert_close(logits, ref_logits, atol=atol, rtol=0 if atol == 0 else 1e-4)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=max(atol, 1e-7), rtol=1e-4, msg=name)


@pytest.mark.parametrize("arch", SPLIT_ARCHS)
def test_split_forward_matches_plain_forward(arch):
    model, plan = frozen_bottom_model(arch)
    prefix, reason = FrozenPrefix.from_plan(model, plan)
    assert prefix is not None, reason
    batch = right_padded(random_examples())

    def split_forward():
        hidden = prefix.hidden_states(batch)
        assert hidden.grad_fn is None
        with prefix.rest(hidden):
            return model(**batch)

    # Dropout is on in the trained tier: both paths draw the same random numbers.
    plain = logits_and_grads(model, lambda: model(**batch))
    split = logits_and_grads(model, split_forward)
    assert_same(plain, split)
    assert all(plan.param_depth[name] > 2 for name in split[1])


@pytest.mark.parametrize("arch", ["bert", "gpt2", "distilbert"])
def test_cached_prefix_matches_plain_forward(arch):
    model, plan = frozen_bottom_model(arch)
    prefix, _ = FrozenPrefix.from_plan(model, plan)
    examples = random_examples(count=6)
    batch = right_padded(examples)

    # Fill the cache one example at a time, so the cached values come from other batch shapes.
    hidden_size = prefix.hidden_states(right_padded(examples[:1])).shape[-1]
    entry = CacheEntry([len(ids) for ids in examples], hidden_size, torch.float32, torch.device("cpu"))
    for index, ids in enumerate(examples):
        single = right_padded([ids])
        entry.store([index], single["attention_mask"], prefix.hidden_states(single))

    def cached_forward():
        hidden = entry.lookup(list(range(len(examples))), batch["attention_mask"])
        assert hidden is not None
        with prefix.rest(hidden):
            return model(**batch)

    plain = logits_and_grads(model, lambda: model(**batch))
    cached = logits_and_grads(model, cached_forward)
    assert_same(plain, cached, atol=1e-5)


def test_cache_lookup_misses_until_every_example_is_stored():
    entry = CacheEntry([2, 3], hidden_size=4, dtype=torch.float32, device=torch.device("cpu"))
    batch = right_padded([torch.tensor([5, 6]), torch.tensor([7, 8, 9])])
    hidden = torch.randn(2, 3, 4)

    assert entry.lookup([0, 1], batch["attention_mask"]) is None
    entry.store([0, 1], batch["attention_mask"], hidden)
    restored = entry.lookup([1, 0], batch["attention_mask"][[1, 0]])
    assert torch.equal(restored[0], hidden[1])
    assert torch.equal(restored[1, :2], hidden[0, :2])
    assert torch.equal(restored[1, 2], torch.zeros(4))


def test_cache_store_keeps_first_values():
    entry = CacheEntry([2, 3], hidden_size=4, dtype=torch.float32, device=torch.device("cpu"))
    first = right_padded([torch.tensor([5, 6])])
    both = right_padded([torch.tensor([5, 6]), torch.tensor([7, 8, 9])])
    first_hidden = torch.randn(1, 2, 4)
    both_hidden = torch.randn(2, 3, 4)

    entry.store([0], first["attention_mask"], first_hidden)
    entry.store([0, 1], both["attention_mask"], both_hidden)
    restored = entry.lookup([0, 1], both["attention_mask"])
    assert torch.equal(restored[0, :2], first_hidden[0])
    assert torch.equal(restored[1], both_hidden[1])


def test_cache_entry_over_limit_is_not_made(caplog):
    activation_cache.clear()
    with caplog.at_level(logging.INFO, logger="harness.activation_cache"):
        entry = activation_cache.get_entry(("key",), [100] * 10, 64, torch.float32, torch.device("cpu"), max_bytes=1000)
    assert entry is None
    assert "train.activation_cache_max_mb" in caplog.text


def test_cache_drops_least_recently_used_entry():
    activation_cache.clear()
    size = 10 * 4 * 4  # 10 tokens of 4 float32 values
    first = activation_cache.get_entry(("a",), [10], 4, torch.float32, torch.device("cpu"), max_bytes=2 * size)
    activation_cache.get_entry(("b",), [10], 4, torch.float32, torch.device("cpu"), max_bytes=2 * size)
    activation_cache.get_entry(("a",), [10], 4, torch.float32, torch.device("cpu"), max_bytes=2 * size)
    activation_cache.get_entry(("c",), [10], 4, torch.float32, torch.device("cpu"), max_bytes=2 * size)
    assert activation_cache.cached_bytes() == 2 * size
    assert activation_cache.get_entry(("a",), [10], 4, torch.float32, torch.device("cpu"), max_bytes=2 * size) is first
    activation_cache.clear()


@pytest.mark.parametrize("arch", ["bert", "llama", "distilbert"])
def test_unpadding_matches_padded_forward(arch):
    torch.manual_seed(0)
    model = tiny_models.build(arch)
    model.train()
    batch = right_padded(random_examples(count=6))
    padded = logits_and_grads(model, lambda: model(**batch))

    stacks = [model.get_submodule(stack.path) for stack in build_plan(model, {"strategy": "full", "lr": 1e-3}).stacks]
    unpadding = TokenUnpadding(stacks)

    def unpadded_forward():
        with unpadding.tokens(batch["attention_mask"]):
            return model(**batch)

    unpadded = logits_and_grads(model, unpadded_forward)
    unpadding.remove()
    assert_same(padded, unpadded, atol=1e-5)
    assert not any("forward" in vars(module) for module in model.modules())


def test_frozen_tier_without_grad_or_state():
    model, plan = frozen_bottom_model("bert")
    forward = ForwardPass(model, plan, OmegaConf.create({"activation_cache": False}), torch.device("cpu"))
    batch = right_padded(random_examples())
    optimizer = torch.optim.AdamW(plan.param_groups, lr=1e-3)

    forward(batch, list(range(len(batch["labels"]))), "train").loss.backward()
    optimizer.step()
    forward.close()

    trained = {id(param) for group in plan.param_groups for param in group["params"]}
    for name, param in model.named_parameters():
        if plan.param_depth[name] <= 2:
            assert param.grad is None, name
            assert param not in optimizer.state, name
        else:
            assert id(param) in trained, name


@pytest.mark.parametrize("value", ["yes", 1])
def test_speed_switch_rejects_non_bool(value):
    with pytest.raises(ConfigError, match="train.activation_cache"):
        check_speed_config(OmegaConf.create({"activation_cache": value}))


def test_cache_limit_rejects_negative():
    with pytest.raises(ConfigError, match="activation_cache_max_mb=-1"):
        check_speed_config(OmegaConf.create({"activation_cache_max_mb": -1}))


@pytest.fixture
def prepared_frozen(tiny_model_dir, tiny_task_dir, tmp_path, compose):
    """Build a frozen-bottom run of the tiny BERT on the tiny task, as `harness.run` would."""
    def build(*extra):
        overrides = [*tiny_overrides(tiny_model_dir, tiny_task_dir, tmp_path), "tier=freeze_bottom", "tier.split=2",
                     "train.epochs=3", *extra]
        cfg = compose(overrides)
        return cfg, experiment.prepare(cfg)

    return build


def run_training(cfg, prepared):
    experiment.set_seed(cfg.seed)
    return train(prepared.model, prepared.plan, prepared.loaders, cfg.train, cfg.task.metric)


def test_training_with_cache_matches_without(prepared_frozen):
    activation_cache.clear()
    cfg, prepared = prepared_frozen("train.activation_cache=false")
    uncached = run_training(cfg, prepared)
    cfg, prepared = prepared_frozen("train.activation_cache=true")
    cached = run_training(cfg, prepared)

    assert uncached.activation_cache_mb == 0
    assert cached.activation_cache_mb > 0
    for before, after in zip(uncached.history, cached.history):
        assert after["loss"] == pytest.approx(before["loss"], abs=1e-5)
    assert cached.test["loss"] == pytest.approx(uncached.test["loss"], abs=1e-5)


def test_cache_reused_by_next_run_in_process(prepared_frozen, caplog):
    activation_cache.clear()
    cfg, prepared = prepared_frozen()
    first = run_training(cfg, prepared)
    cfg, prepared = prepared_frozen()
    with caplog.at_level(logging.INFO, logger="harness.activation_cache"):
        second = run_training(cfg, prepared)

    assert "new entry" not in caplog.text
    assert [m["loss"] for m in second.history] == [m["loss"] for m in first.history]


def test_group_by_length_follows_seed(prepared_frozen):
    cfg, prepared = prepared_frozen("train.group_by_length=true")
    loader = prepared.loaders["train"]
    lengths = [len(ids) for ids in loader.dataset["input_ids"]]
    first = [list(batch) for batch in _train_batch_sampler(loader, group_by_length=True)]

    _, again = prepared_frozen("train.group_by_length=true")
    second = [list(batch) for batch in _train_batch_sampler(again.loaders["train"], group_by_length=True)]
    _, other_seed = prepared_frozen("seed=1")
    third = [list(batch) for batch in _train_batch_sampler(other_seed.loaders["train"], group_by_length=True)]

    assert first == second
    assert first != third
    assert sorted(i for batch in first for i in batch) == list(range(len(lengths)))
    for batch in first:
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)


def test_second_prepare_reuses_tokens_and_weights(prepared_frozen, caplog):
    models.clear_cache()
    _, first = prepared_frozen()
    with caplog.at_level(logging.INFO):
        _, second = prepared_frozen()

    assert "cache miss" not in caplog.text
    assert "cache hit" in caplog.text
    first_state, second_state = first.model.state_dict(), second.model.state_dict()
    for name, tensor in first_state.items():
        assert torch.equal(second_state[name], tensor), name


def test_rebuilt_model_equals_fresh_load(tiny_model_dir):
    config = OmegaConf.create({"pretrained": str(tiny_model_dir), "trust_remote_code": False})
    tokenizer = models.load_tokenizer(config)

    def load_and_draw():
        torch.manual_seed(3)
        model = models.load_model(config, 2, ["negative", "positive"], tokenizer)
        return model, torch.rand(1)

    models.clear_cache()
    fresh, fresh_draw = load_and_draw()
    with torch.no_grad():
        for param in fresh.parameters():
            param.add_(1.0)  # training the first model must not change the cached weights
    rebuilt, rebuilt_draw = load_and_draw()
    models.clear_cache()
    reference, _ = load_and_draw()

    assert torch.equal(rebuilt_draw, fresh_draw)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], tensor), name
