"""Prompts: the study's template around a problem, sent as one user turn through the chat template.

The prompt of real data is DeepScaleR's template, ``{problem} Let's think step by step and output the
final answer within \\boxed{}.``; the built-in tasks' character vocabulary holds only the expression, so
its prompt is the bare problem. Simplification: a tokenizer without a chat template gets the templated
text as is.
"""

from collections.abc import Sequence
from typing import Any

from lrm_fast.config import DataConfig
from lrm_fast.config.choices import DataSource
from lrm_fast.data.examples import PromptExample

DEEPSCALER_TEMPLATE = "{problem} Let's think step by step and output the final answer within \\boxed{}."


def format_prompt(problem: str, tokenizer: Any, template: str = DEEPSCALER_TEMPLATE) -> str:
    """The prompt text: the template around the problem, as one user turn of the chat template."""
    if "{problem}" not in template:
        raise ValueError(f"template must contain '{{problem}}': {template!r}")
    # replace, not str.format: templates are full of LaTeX braces.
    content = template.replace("{problem}", problem)
    if tokenizer.chat_template is None:
        return content
    messages = [{"role": "user", "content": content}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompts(
    examples: Sequence[PromptExample], tokenizer: Any, template: str = DEEPSCALER_TEMPLATE
) -> list[list[int]]:
    """Prompt token ids of each example, ready for a rollout backend."""
    # A chat template writes its own special tokens (BOS included); adding them again would double them.
    add_special_tokens = tokenizer.chat_template is None
    texts = [format_prompt(example.problem, tokenizer, template) for example in examples]
    return tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]


def prompt_template(data: DataConfig) -> str:
    """The template of a run's prompts: the bare problem for the built-in tasks, the study's for files."""
    return "{problem}" + data.prompt_suffix if data.name == DataSource.file else "{problem}"
