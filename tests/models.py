"""Small random models for the tests (CPU-sized)."""
import torch

from nuwa_fast.config import NuwaConfig, TextConfig, VQConfig


def small_config(extent=(1, 1, 1), patch=3, codebook=48, **kw):
    return NuwaConfig(vq=VQConfig(f=4, codebook_size=codebook, code_dim=8, channels=8, channel_mult=(1, 2, 2)),
                      text=TextConfig(max_len=16, width=32, layers=1, heads=2),
                      patch=patch, width=32, layers=2, heads=2, extent=extent, name="test", **kw)


def small_model(seed=0, **kw):
    import nuwa_fast
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nuwa_fast.load(small_config(**kw))
        with torch.no_grad():       # a non-trivial ADC table and null value, so both are exercised
            model.decoder.adc_bias.normal_(0, 1.0)
            if model.cfg.layout:    # and non-zero layout embeddings (they start at zero)
                model.decoder.layout_y.normal_(0, 1.0)
                model.decoder.layout_dir.normal_(0, 1.0)
            for layer in model.decoder.layers:
                layer.attn.null_v.normal_(0, 0.5)
            model.decoder.head.weight.normal_(0, 0.5)
    return model
