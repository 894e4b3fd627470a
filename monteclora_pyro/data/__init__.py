"""Task registry, dataset loading, tokenising and batching.

Supported tasks are the GLUE tasks (cola, sst2, mrpc, rte, qnli, qqp, mnli, stsb, wnli), the
SuperGLUE tasks boolq and wic, and four sentiment domains built from the human-rated sentences
shipped in the ``vaderSentiment==3.2.1`` source distribution (Hutto & Gilbert, ICWSM 2014):
``movie-reviews`` (the default task, split 80/10/10) and the shifted domains ``tweets``,
``amazon`` and ``nyt`` (a single ``test`` split each). Two small sets shipped with the
package are for causal language models: ``mc-commonsense`` (multiple choice) and
``tiny-instruct`` (prompt/response pairs).

Each task names its data format (``TaskSpec.format``, a key of :data:`FORMATS`), which fixes
the columns of its splits (:class:`datasets.Dataset` objects) and how they become batches:

- ``"text"``: ``text_a``, optionally ``text_b``, and ``label`` (``int64`` class ids,
  ``float32`` for regression); see :mod:`~monteclora_pyro.data.text`.
- ``"choices"``: ``question``, ``choices`` and ``label``; ``"instruction"``: ``prompt`` and
  ``response``; see :mod:`~monteclora_pyro.data.prompts`.

Modules: :mod:`~monteclora_pyro.data.spec` (the shared types), :mod:`~.registry` (the tasks),
:mod:`~.text` and :mod:`~.prompts` (the formats), :mod:`~.formats` (formats by name,
tokenising and batching), :mod:`~.local`, :mod:`~.vader`, :mod:`~.saved` (directories
written by ``save_to_disk``) and :mod:`~.sources` (loading).
"""

from monteclora_pyro.data.formats import (
    FORMATS,
    data_format,
    encode_pair,
    make_collator,
    make_loader,
    prompt_format,
    tokenize_causal_task,
    tokenize_task,
)
from monteclora_pyro.data.local import (
    DATA_ENV,
    expected_layout,
    load_prompt_splits,
    packaged_path,
)
from monteclora_pyro.data.prompts import (
    DEFAULT_TEMPLATE,
    TEMPLATES,
    ChoicesFormat,
    InstructionFormat,
    PromptFormat,
    choice_collator,
    fit_length,
    pad_token_id,
    token_collator,
)
from monteclora_pyro.data.registry import DEFAULT_TASK, TASKS, get_task_spec, register_task
from monteclora_pyro.data.saved import is_saved_dataset, load_saved_task
from monteclora_pyro.data.sources import (
    find_saved_dataset,
    load_task,
    resolve_task_spec,
    take_first,
)
from monteclora_pyro.data.spec import (
    Collator,
    DataError,
    DataFormat,
    LocalLayout,
    Task,
    TaskSpec,
)
from monteclora_pyro.data.text import TextFormat
from monteclora_pyro.data.vader import (
    CACHE_ENV,
    VADER_ARCHIVE,
    VADER_INNER_ARCHIVE,
    default_cache_dir,
    fetch_vader_archive,
    load_vader_splits,
    read_vader_member,
    split_by_fractions,
    vader_download_command,
)
from monteclora_pyro.domains import SHIFT_DOMAINS

__all__ = [
    "CACHE_ENV",
    "DATA_ENV",
    "DEFAULT_TASK",
    "DEFAULT_TEMPLATE",
    "FORMATS",
    "SHIFT_DOMAINS",
    "TASKS",
    "TEMPLATES",
    "VADER_ARCHIVE",
    "VADER_INNER_ARCHIVE",
    "ChoicesFormat",
    "Collator",
    "DataError",
    "DataFormat",
    "InstructionFormat",
    "LocalLayout",
    "PromptFormat",
    "Task",
    "TaskSpec",
    "TextFormat",
    "choice_collator",
    "data_format",
    "default_cache_dir",
    "encode_pair",
    "expected_layout",
    "fetch_vader_archive",
    "find_saved_dataset",
    "fit_length",
    "get_task_spec",
    "is_saved_dataset",
    "load_prompt_splits",
    "load_saved_task",
    "load_task",
    "load_vader_splits",
    "make_collator",
    "make_loader",
    "packaged_path",
    "pad_token_id",
    "prompt_format",
    "read_vader_member",
    "register_task",
    "resolve_task_spec",
    "split_by_fractions",
    "take_first",
    "token_collator",
    "tokenize_causal_task",
    "tokenize_task",
    "vader_download_command",
]
