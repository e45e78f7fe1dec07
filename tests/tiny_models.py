"""Tiny randomly initialised models, one per architecture family, built from config objects."""

import transformers as tf

COMMON = dict(vocab_size=128, hidden_size=32, num_attention_heads=2, intermediate_size=37)


def _build(config_cls, model_cls, num_labels=3, **overrides):
    kwargs = {**COMMON, "num_hidden_layers": 4, **overrides}
    config = config_cls(num_labels=num_labels, **kwargs)
    return model_cls(config)


BUILDERS = {
    "bert": lambda: _build(tf.BertConfig, tf.BertForSequenceClassification),
    "roberta": lambda: _build(tf.RobertaConfig, tf.RobertaForSequenceClassification),
    "xlm-roberta": lambda: _build(tf.XLMRobertaConfig, tf.XLMRobertaForSequenceClassification),
    "distilbert": lambda: _build(
        tf.DistilBertConfig, tf.DistilBertForSequenceClassification,
        vocab_size=128, dim=32, n_layers=4, n_heads=2, hidden_dim=37,
    ),
    "albert": lambda: _build(
        tf.AlbertConfig, tf.AlbertForSequenceClassification, embedding_size=16,
    ),
    "electra": lambda: _build(
        tf.ElectraConfig, tf.ElectraForSequenceClassification, embedding_size=16,
    ),
    "deberta-v2": lambda: _build(
        tf.DebertaV2Config, tf.DebertaV2ForSequenceClassification,
        relative_attention=True, position_buckets=8, pos_att_type=["p2c", "c2p"],
        norm_rel_ebd="layer_norm",
    ),
    "gpt2": lambda: _build(
        tf.GPT2Config, tf.GPT2ForSequenceClassification,
        n_embd=32, n_layer=4, n_head=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    ),
    "llama": lambda: _build(
        tf.LlamaConfig, tf.LlamaForSequenceClassification,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    ),
    "qwen2": lambda: _build(
        tf.Qwen2Config, tf.Qwen2ForSequenceClassification,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    ),
    "mistral": lambda: _build(
        tf.MistralConfig, tf.MistralForSequenceClassification,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    ),
    "t5": lambda: _build(
        tf.T5Config, tf.T5ForSequenceClassification,
        d_model=32, d_kv=16, d_ff=37, num_layers=2, num_decoder_layers=2, num_heads=2,
        pad_token_id=0, decoder_start_token_id=0,
    ),
    "bart": lambda: _build(
        tf.BartConfig, tf.BartForSequenceClassification,
        d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=37, decoder_ffn_dim=37,
        pad_token_id=1, bos_token_id=0, eos_token_id=2,
    ),
}


def build(arch):
    """Build a tiny randomly initialised sequence classifier of the given family."""
    return BUILDERS[arch]()


def build_gpt2_lm():
    """Build a tiny GPT2LMHeadModel, whose `lm_head.weight` is the same tensor as `transformer.wte.weight`."""
    config = tf.GPT2Config(vocab_size=128, n_embd=32, n_layer=4, n_head=2, bos_token_id=1, eos_token_id=2)
    return tf.GPT2LMHeadModel(config)
