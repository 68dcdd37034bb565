"""SFT: prompt-masked supervised fine-tuning with LoRA, optionally on the harmful fine-tuning mix.

`run(job)` is what `python -m methods JOB.json` calls on every rank.
"""

from __future__ import annotations

from launcher.contract import JobFile
from methods.core.finetune import setup
from methods.core.training import MethodTrainer, finish_training
from methods.data import SFTCollator
from methods.params import SFTParams


def run(job: JobFile) -> int:
    params = SFTParams.model_validate(job.params)
    s = setup(job, params)
    trainer = MethodTrainer(model=s.model, args=s.args, train_dataset=s.train_ds, eval_dataset=s.eval_ds,
                            data_collator=SFTCollator(s.tokenizer.pad_token_id), processing_class=s.tokenizer,
                            callbacks=s.rank.training_callbacks(), recorder=s.rank.recorder(s.train_ds.sample_ids))
    # With DeepSpeed the Trainer reloads the engine state (LoRA weights, ZeRO optimizer shards, RNG,
    # scheduler) with load_module_strict=False for PEFT models; checked on CPU for ZeRO-2 and ZeRO-3:
    # the resumed steps replay the first attempt's batches and losses exactly.
    out = trainer.train(resume_from_checkpoint=job.resume_from)
    return finish_training(s.rank, trainer, out, save_to=s.rank.jd.adapter if params.save_adapter else None,
                           adapter=True, model=s.model)
