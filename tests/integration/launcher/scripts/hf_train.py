"""A plain HF Trainer fine-tuning script, written the way the Lisa repository's train.py is.

It knows nothing of the launcher that runs it: HfArgumentParser flags (--model_name_or_path,
--data_path, --output_dir, --max_steps, --save_steps, --lora_r, ...), an Alpaca-style JSON file,
LoRA through PEFT, `trainer.train(resume_from_checkpoint=...)`. Run it with torchrun's environment
(RANK, WORLD_SIZE, MASTER_ADDR, ...) and the Trainer trains data-parallel; on a machine without
CUDA, through gloo. Written for the launcher's tests, not copied from anywhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch
import transformers
from peft import LoraConfig, get_peft_model
from torch.utils.data import Dataset

PROMPT = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
          "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
IGNORE = -100


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "a local model directory"})
    lora_r: int = 8
    lora_alpha: int = 4


@dataclass
class DataArguments:
    data_path: str = field(metadata={"help": "JSON list of {instruction, output}"})
    max_length: int = 256


class SupervisedDataset(Dataset):
    """Prompt tokens masked out of the labels, as Alpaca-style SFT scripts do."""

    def __init__(self, path: str, tok: transformers.PreTrainedTokenizerBase, max_length: int):
        with open(path) as f:
            rows = json.load(f)
        self.items = []
        for r in rows:
            prompt = PROMPT.format(instruction=r["instruction"])
            ids = tok(prompt + r["output"] + tok.eos_token, truncation=True, max_length=max_length)["input_ids"]
            n_prompt = min(len(tok(prompt)["input_ids"]), len(ids))
            self.items.append({"input_ids": ids, "labels": [IGNORE] * n_prompt + ids[n_prompt:]})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.items[i]


@dataclass
class Collator:
    pad_id: int

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        n = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), n), self.pad_id)
        labels = torch.full((len(batch), n), IGNORE)
        for i, b in enumerate(batch):
            ids[i, :len(b["input_ids"])] = torch.tensor(b["input_ids"])
            labels[i, :len(b["labels"])] = torch.tensor(b["labels"])
        return {"input_ids": ids, "labels": labels, "attention_mask": ids.ne(self.pad_id)}


def main() -> int:
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, transformers.TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses()
    tok = transformers.AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=model_args.lora_r, lora_alpha=model_args.lora_alpha,
                                             target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                                             task_type="CAUSAL_LM"))
    trainer = transformers.Trainer(model=model, args=training_args,
                                   train_dataset=SupervisedDataset(data_args.data_path, tok, data_args.max_length),
                                   data_collator=Collator(tok.pad_token_id))
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_state()
    trainer.save_model(training_args.output_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
