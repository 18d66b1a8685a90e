"""The embedded tiny model family: a character-level tokenizer and Qwen2 models pretrained here."""
