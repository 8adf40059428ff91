"""Stage kinds, one module each (`midtrain`, `sft`, `dpo`, `grpo`): a thin layer over a TRL trainer.

Each module has `METRIC` (the logged value its stage reports: loss or reward) and
`build_trainer(config, model, tokenizer, dataset, output_dir)`; `common` holds what they share.
"""
