"""Evaluation: metrics of a model's outputs (language_model: loss and
perplexity; chat: scores of generated replies; classification: accuracy,
macro-F1, confusion matrix; preferences: a preference-tuned model's replies
against the chosen and rejected ones). Each objective (`tfchat.objectives`) evaluates
its runs with them."""
