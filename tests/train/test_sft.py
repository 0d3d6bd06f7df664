"""ponder.train.sft: the TRL settings every method's SFT and DPO share."""

import pytest

from tests.tiny import tiny_llama

pytest.importorskip("trl")


def test_trl_args_turn_off_trls_cpu_defaults_and_take_overrides(tmp_path):
    from trl import DPOConfig, SFTConfig

    from ponder.train.sft import trl_args

    model = tiny_llama(0)
    args = trl_args(model, tmp_path, learning_rate=1e-3, batch_size=2, seed=7,
                    lr_scheduler_type="cosine")
    # TRL turns bf16 mixed precision on whenever fp16 is off: a CPU model trains in fp32 here
    for cls in (SFTConfig, DPOConfig):
        config = cls(**args)
        assert config.bf16 is False and config.use_cpu is True
        assert config.activation_checkpointing is False
        assert (config.seed, config.data_seed, config.learning_rate) == (7, 7, 1e-3)
        assert config.lr_scheduler_type == "cosine"
        assert config.report_to == [] or config.report_to == "none"


def test_sft_trainer_refuses_no_rows(tmp_path):
    from ponder.toy import make_tokenizer
    from ponder.train.sft import sft_trainer

    with pytest.raises(ValueError, match="rows is empty"):
        sft_trainer(tiny_llama(0), make_tokenizer(), [], tmp_path, learning_rate=1e-3,
                    batch_size=2)
