import pytest

from train.errors import UserError
from train.models import MODELS, load_model, load_tokenizer, resolve_model, stop_token_ids


def test_registry_resolves_qwen_sizes_and_rl_references():
    assert resolve_model("32B") == "Qwen/Qwen2.5-32B"
    assert MODELS["1.5B"].rl_id == "hkust-nlp/Qwen-2.5-1.5B-SimpleRL-Zoo"
    assert MODELS["7B"].embedding_rows - MODELS["1.5B"].embedding_rows == 128


def test_local_directory_and_hub_id_pass_through(tiny_models):
    assert resolve_model(tiny_models["large"]) == tiny_models["large"]
    assert resolve_model("hkust-nlp/Qwen-2.5-7B-SimpleRL-Zoo") == "hkust-nlp/Qwen-2.5-7B-SimpleRL-Zoo"


def test_unknown_name_is_a_one_line_user_error():
    with pytest.raises(UserError, match="unknown model 'Qwen9'"):
        resolve_model("Qwen9")


def test_missing_hub_model_offline_is_a_user_error_not_a_traceback():
    with pytest.raises(UserError, match="not in the Hugging Face cache"):
        load_model("nobody-has/this-model")


def test_character_tokenizer_round_trips_through_a_qwen2_directory(tiny_models):
    # The directory's config says qwen2; AutoTokenizer alone would return Qwen2's byte-level one.
    tokenizer = load_tokenizer(tiny_models["small_base"])
    text = "Q: 47*8=\nA: Let's  \\boxed{376}"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert len(tokenizer) == 98
    assert load_model(tiny_models["large"]).config.vocab_size == 160


def test_stop_ids_add_endoftext_and_im_end_when_the_vocabulary_has_them(tiny_models):
    tokenizer = load_tokenizer(tiny_models["small_base"])
    assert stop_token_ids(tokenizer) == [0]
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|endoftext|>", "<|im_end|>"]})
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert stop_token_ids(tokenizer) == [0, im_end]  # our eos already is <|endoftext|>
    config = load_model(tiny_models["large"]).generation_config
    config.eos_token_id = [0, 7]
    assert stop_token_ids(tokenizer, config) == [0, 7, im_end]


def test_missing_training_output_is_not_mistaken_for_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    with pytest.raises(UserError, match="outputs/tiny-s-grpo does not exist: train it first"):
        resolve_model("outputs/tiny-s-grpo")
    with pytest.raises(UserError, match="does not exist"):
        resolve_model(str(tmp_path / "outputs" / "tiny-s-grpo"))
    assert resolve_model("hkust-nlp/Qwen-2.5-1.5B-SimpleRL-Zoo").startswith("hkust-nlp/")
