"""Training half of RAST: grader, data, prompts, model registry, the tiny family and GRPO."""
