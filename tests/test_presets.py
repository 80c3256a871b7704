"""Model presets and Hugging Face config.json <-> LlavaConfig."""
import copy
import json
import math

import jax
import pytest

from mmalign_jax.models.llava import hf
from mmalign_jax.models import llava
from mmalign_jax.models import registry
from mmalign_jax.models.presets import PRESETS as ALL_PRESETS
from mmalign_jax.models.presets import from_hf_config, get_preset, to_hf_config

PRESETS = [p for p in ALL_PRESETS if registry.for_preset(p).name == "llava"]   # Qwen's: test_qwen_model

# llava-hf/llava-1.5-7b-hf and -13b-hf config.json as published (they omit most LlamaConfig
# fields, which then take the transformers defaults).
LLAVA_15_7B_HF = {
    "architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100,
    "image_token_index": 32000, "model_type": "llava", "pad_token_id": 32001,
    "projector_hidden_act": "gelu",
    "text_config": {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"],
                    "max_position_embeddings": 4096, "model_type": "llama", "rms_norm_eps": 1e-05,
                    "torch_dtype": "float16", "vocab_size": 32064},
    "tie_word_embeddings": False, "torch_dtype": "float16", "transformers_version": "4.36.0.dev0",
    "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
                      "model_type": "clip_vision_model", "num_attention_heads": 16,
                      "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768,
                      "vocab_size": 32000},
    "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
    "vocab_size": 32064,
}
LLAVA_15_13B_HF = copy.deepcopy(LLAVA_15_7B_HF)
LLAVA_15_13B_HF["text_config"].update(
    {"_name_or_path": "meta-llama/Llama-2-13b-hf", "hidden_size": 5120,
     "intermediate_size": 13824, "num_attention_heads": 40, "num_hidden_layers": 40,
     "num_key_value_heads": 40})


def _analytic_param_count(cfg) -> int:
    """Parameters of HF LlavaForConditionalGeneration, from the HF module shapes."""
    v, t = cfg.vision, cfg.text
    dv, iv, p = v.hidden_size, v.intermediate_size, v.patch_size
    vision = (dv + v.num_channels * p * p * dv + (v.num_patches + 1) * dv  # cls, conv, pos
              + 2 * dv  # pre_layrnorm
              + v.num_hidden_layers * (2 * 2 * dv + 4 * (dv * dv + dv) + dv * iv + iv + iv * dv + dv)
              + 2 * dv)  # post_layernorm
    d, f, dh = t.hidden_size, t.intermediate_size, t.head_dim
    projector = dv * d + d + d * d + d
    layer = (2 * d + d * t.num_attention_heads * dh * 2 + 2 * d * t.num_key_value_heads * dh
             + 3 * d * f)
    lm = t.vocab_size * d * (1 if t.tie_word_embeddings else 2) + t.num_hidden_layers * layer + d
    return vision + projector + lm


def _count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def test_llava_15_shapes():
    c7, c13 = get_preset("llava-1.5-7b"), get_preset("llava-1.5-13b")
    for c in (c7, c13):
        v = c.vision
        assert (v.hidden_size, v.intermediate_size, v.num_hidden_layers, v.num_attention_heads,
                v.image_size, v.patch_size, v.hidden_act) == (1024, 4096, 24, 16, 336, 14, "quick_gelu")
        assert c.num_image_tokens == 576
        assert (c.image_token_id, c.text.pad_token_id, c.text.vocab_size) == (32000, 32001, 32064)
        assert (c.vision_feature_layer, c.vision_feature_select_strategy, c.projector_type,
                c.projector_hidden_act) == (-2, "default", "mlp2x_gelu", "gelu")
        assert c.text.rms_norm_eps == 1e-5 and c.text.max_position_embeddings == 4096
        assert not c.text.tie_word_embeddings
    t7, t13 = c7.text, c13.text
    assert (t7.hidden_size, t7.intermediate_size, t7.num_hidden_layers, t7.num_attention_heads,
            t7.num_key_value_heads) == (4096, 11008, 32, 32, 32)
    assert (t13.hidden_size, t13.intermediate_size, t13.num_hidden_layers,
            t13.num_attention_heads, t13.num_key_value_heads) == (5120, 13824, 40, 40, 40)


def test_published_hf_configs_give_the_presets(tmp_path):
    assert from_hf_config(LLAVA_15_7B_HF) == get_preset("llava-1.5-7b")
    assert from_hf_config(LLAVA_15_13B_HF) == get_preset("llava-1.5-13b")
    (tmp_path / "config.json").write_text(json.dumps(LLAVA_15_7B_HF))
    assert from_hf_config(tmp_path) == get_preset("llava-1.5-7b")  # folder
    assert from_hf_config(tmp_path / "config.json") == get_preset("llava-1.5-7b")  # file


def test_small_presets():
    tiny = get_preset("tiny")
    assert tiny.num_image_tokens == 9 and tiny.vision.hidden_size == 64   # one token per demo grid cell
    assert (tiny.text.hidden_size, tiny.text.intermediate_size, tiny.text.num_hidden_layers,
            tiny.text.num_attention_heads, tiny.text.num_key_value_heads,
            tiny.text.vocab_size) == (128, 352, 4, 4, 2, 1024)
    assert (tiny.image_token_id, tiny.text.pad_token_id, tiny.text.bos_token_id,
            tiny.text.eos_token_id) == (4, 3, 1, 2)
    bench = get_preset("bench-small")
    assert bench.num_image_tokens == 256 and bench.vision.hidden_size == 384
    assert bench.text.vocab_size == 32000 and bench.image_token_id < bench.text.vocab_size
    assert set(PRESETS) >= {"tiny", "bench-small", "llava-1.5-7b", "llava-1.5-13b"}
    with pytest.raises(ValueError, match="llava-1.5-7b"):
        get_preset("llava-7b")


@pytest.mark.parametrize("name", ["llava-1.5-7b", "llava-1.5-13b", "tiny", "bench-small"])
def test_param_count_matches_hf_shapes(name):
    cfg = get_preset(name)
    n = _count(llava.abstract_params(cfg))
    analytic = _analytic_param_count(cfg)
    assert n == analytic
    assert n == sum(math.prod(s) for s in hf.param_shapes(cfg).values())
    if name == "llava-1.5-7b":
        assert abs(n - 7.06e9) / 7.06e9 < 0.01, n  # LLaVA-1.5-7B: 7,063,427,072
    if name == "llava-1.5-13b":
        assert abs(n - 13.35e9) / 13.35e9 < 0.01, n


def test_param_tree_matches_converter_table():
    cfg = get_preset("tiny")
    from flax import traverse_util

    shapes = {k: tuple(v.shape) for k, v in
              traverse_util.flatten_dict(llava.abstract_params(cfg)).items()}
    assert shapes == hf.param_shapes(cfg)


@pytest.mark.parametrize("name", PRESETS)
def test_hf_config_round_trip(name):
    cfg = get_preset(name)
    d = to_hf_config(cfg)
    assert d["model_type"] == "llava" and d["architectures"] == ["LlavaForConditionalGeneration"]
    assert from_hf_config(json.loads(json.dumps(d))) == cfg
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.LlavaConfig(**copy.deepcopy(d))  # transformers accepts it ...
    assert hf_cfg.image_token_id == cfg.image_token_id
    assert hf_cfg.text_config.num_key_value_heads == cfg.text.num_key_value_heads
    assert from_hf_config(hf_cfg.to_dict()) == cfg  # ... and what it writes reads back


def test_hf_config_variants():
    tiny = get_preset("tiny")
    d = to_hf_config(tiny)
    # image_token_id spelling, transformers-5 rope_parameters only, list eos
    d2 = copy.deepcopy(d)
    d2["image_token_id"] = d2.pop("image_token_index")
    tc = d2["text_config"]
    del tc["rope_theta"], tc["rope_scaling"]
    tc["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 256}
    tc["eos_token_id"] = [2, 7]
    c2 = from_hf_config(d2)
    assert c2.image_token_id == tiny.image_token_id and c2.text.eos_token_id == 2
    assert c2.text.rope_theta == 5e5
    assert dict(c2.text.rope_scaling) == {"rope_type": "llama3", "factor": 8.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 256}
    assert from_hf_config(to_hf_config(c2)) == c2
    # 4.x spelling of the same, with the old "type" key
    d3 = copy.deepcopy(d)
    d3["text_config"].pop("rope_parameters")
    d3["text_config"].update(rope_theta=5e5, rope_scaling={"type": "linear", "factor": 2.0})
    c3 = from_hf_config(d3)
    assert dict(c3.text.rope_scaling) == {"rope_type": "linear", "factor": 2.0}
    # a head_dim that is not hidden/heads survives; missing sub-configs take HF defaults
    d4 = copy.deepcopy(d)
    d4["text_config"]["head_dim"] = 64
    assert from_hf_config(d4).text.head_dim == 64
    bare = from_hf_config({"model_type": "llava"})
    assert bare.vision.image_size == 336 and bare.text.hidden_size == 4096
    assert bare.text.rms_norm_eps == 1e-6 and bare.text.max_position_embeddings == 2048
    # projector act is carried
    d5 = copy.deepcopy(d)
    d5["projector_hidden_act"] = "gelu_pytorch_tanh"
    assert from_hf_config(d5).projector_hidden_act == "gelu_pytorch_tanh"


def test_hf_config_errors(tmp_path):
    bad = dict(LLAVA_15_7B_HF, architectures=["LlavaNextForConditionalGeneration"],
               model_type="llava_next")
    (tmp_path / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError) as e:
        from_hf_config(tmp_path)
    assert str(tmp_path / "config.json") in str(e.value) and "model_type" in str(e.value)
    with pytest.raises(ValueError, match="architectures"):
        from_hf_config(dict(LLAVA_15_7B_HF, architectures=["Qwen2VLForConditionalGeneration"]))
    with pytest.raises(ValueError, match="text_config.model_type"):
        from_hf_config(dict(LLAVA_15_7B_HF, text_config={"model_type": "mistral"}))
    with pytest.raises(ValueError, match="vision_config.model_type"):
        from_hf_config(dict(LLAVA_15_7B_HF, vision_config={"model_type": "siglip_vision_model"}))
    with pytest.raises(ValueError, match="vision_feature_layer"):
        from_hf_config(dict(LLAVA_15_7B_HF, vision_feature_layer=[-2, -5]))
    with pytest.raises(FileNotFoundError, match="config.json"):
        from_hf_config(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="projector_type"):
        to_hf_config(get_preset("tiny").replace(projector_type="linear"))
