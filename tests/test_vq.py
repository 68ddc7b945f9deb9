import pytest
import torch
import torch.nn as nn

from nuwa_fast.config import VQConfig, preset
from nuwa_fast.vq import VQModel

torch.set_num_threads(1)

# Narrow stand-ins for the presets: same layouts (f=8, and f=16 with 2 res blocks like "paper").
SMALL = VQConfig(f=8, codebook_size=64, code_dim=16, channels=8, channel_mult=(1, 2, 2, 4))
DEEP = VQConfig(f=16, codebook_size=32, code_dim=8, channels=4, channel_mult=(1, 1, 2, 2, 4), res_blocks=2)


def make(cfg=SMALL, seed=0):
    torch.manual_seed(seed)
    return VQModel(cfg).eval()


def smooth_images(b, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b, 3, h // 8, w // 8, generator=g) * 2 - 1          # [B, 3, h/8, w/8]
    return nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)


def test_halo_of_presets():
    assert VQModel(preset("tiny").vq).halo == 3
    assert make(DEEP).halo == 5


def test_round_trip_shapes_odd_size():
    m = make()
    img = smooth_images(2, 24, 40)
    tok = m.encode(img)
    assert tok.shape == (2, 3, 5) and tok.dtype == torch.long
    assert 0 <= tok.min() and tok.max() < SMALL.codebook_size
    out = m.decode(tok)
    assert out.shape == (2, 3, 24, 40)
    assert out.min() >= -1 and out.max() <= 1


def test_encode_rejects_bad_size():
    with pytest.raises(ValueError, match="multiples of f=8"):
        make().encode(torch.zeros(1, 3, 25, 40))


def test_forward_loss_dict():
    m = make()
    recon, loss = m(smooth_images(2, 16, 24))
    assert recon.shape == (2, 3, 16, 24)
    assert {"rec", "commit", "total", "usage", "z"} <= set(loss)
    assert loss["usage"].shape == (SMALL.codebook_size,) and int(loss["usage"].sum()) == 2 * 2 * 3
    assert loss["z"].shape == (12, SMALL.code_dim) and not loss["z"].requires_grad
    torch.testing.assert_close(loss["total"], loss["rec"] + loss["commit"])


@pytest.mark.parametrize("cfg,grid,tile", [(SMALL, (5, 7), 4), (SMALL, (13, 37), 4), (SMALL, (3, 2), 32),
                                           (DEEP, (7, 12), 3)])
def test_tiled_decode_matches_full(cfg, grid, tile):
    m = make(cfg)
    tok = torch.randint(cfg.codebook_size, (2, *grid), generator=torch.Generator().manual_seed(1))
    full = m.decode(tok)
    tiled = m.decode_tiled(tok, tile=tile, halo=m.halo)
    err = (full - tiled).abs().max().item()
    print(f"grid {grid} tile {tile} halo {m.halo}: max err {err:.2e}")
    assert err < 1e-4


def test_tiled_decode_needs_the_full_halo():
    m = make()
    tok = torch.randint(SMALL.codebook_size, (1, 13, 17), generator=torch.Generator().manual_seed(2))
    err = (m.decode(tok) - m.decode_tiled(tok, tile=4, halo=m.halo - 1)).abs().max().item()
    print(f"halo {m.halo - 1} (one short): max err {err:.2e}")
    assert err > 1e-4


@pytest.mark.parametrize("cfg", [SMALL, DEEP])
def test_halo_is_the_exact_receptive_field(cfg):
    # The pixels of the centre token depend on exactly the tokens within `halo` of it: the halo is
    # conservative (nothing outside) and tight (the ring at distance halo is reached).
    m, f = make(cfg), cfg.f
    n, c = 2 * m.halo + 3, m.halo + 1
    codes = torch.randn(1, cfg.code_dim, n, n, requires_grad=True)          # [1, D, n, n]
    out = m.decoder(m.quant_out(codes))                                     # [1, 3, n*f, n*f]
    out[..., c * f:(c + 1) * f, c * f:(c + 1) * f].sum().backward()
    reached = codes.grad.abs().sum((0, 1)) > 0                              # [n, n]
    expect = torch.zeros(n, n, dtype=torch.bool)
    expect[c - m.halo:c + m.halo + 1, c - m.halo:c + m.halo + 1] = True
    assert torch.equal(reached, expect)


def peak_decoder_numel(m, fn):
    peak = [0]

    def hook(mod, inputs, out):
        peak[0] = max(peak[0], out.numel(), *(x.numel() for x in inputs if torch.is_tensor(x)))
    handles = [mod.register_forward_hook(hook) for mod in m.decoder.modules()]
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return peak[0]


def test_tiled_decode_memory_bounded_by_tile():
    m = make()
    tile, halo, f = 4, m.halo, m.f
    bound = 1 * max(m.cfg.channels * c for c in m.cfg.channel_mult) * ((tile + 2 * halo) * f) ** 2
    peaks = []
    for grid in [(13, 37), (26, 50)]:
        tok = torch.zeros(1, *grid, dtype=torch.long)
        peaks.append(peak_decoder_numel(m, lambda: m.decode_tiled(tok, tile=tile)))
    full = peak_decoder_numel(m, lambda: m.decode(torch.zeros(1, 26, 50, dtype=torch.long)))
    print(f"peak activation numel: tiled {peaks}, bound {bound}, full decode {full}")
    assert peaks[0] == peaks[1] <= bound < full


def test_decode_video_loops_frames():
    m = make()
    tok = torch.randint(SMALL.codebook_size, (2, 3, 5, 6))
    vid = m.decode_video(tok, tile=4)
    assert vid.shape == (2, 3, 3, 40, 48)
    for t in range(3):
        assert (vid[:, t] - m.decode(tok[:, t])).abs().max() < 1e-4


def test_training_steps_lower_the_loss():
    m = make().train()
    img = smooth_images(4, 32, 32)
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    losses = []
    for _ in range(6):
        _, loss = m(img)
        opt.zero_grad()
        loss["total"].backward()
        opt.step()
        losses.append(loss["total"].item())
    print("losses", [round(x, 4) for x in losses])
    assert losses[-1] < losses[0]
    assert m.codebook.grad is not None and m.encoder[0].weight.grad is not None


def test_restart_dead_codes():
    m = make()
    _, loss = m(smooth_images(2, 16, 16))
    usage = loss["usage"]
    dead = usage == 0
    assert dead.any() and (~dead).any()
    before = m.codebook.detach().clone()
    n = m.restart_dead_codes(loss["z"], usage, generator=torch.Generator().manual_seed(0))
    after = m.codebook.detach()
    assert n == int(dead.sum())
    assert torch.equal(after[~dead], before[~dead])
    assert (after[dead] - before[dead]).abs().amax(1).min() > 0
    assert torch.allclose(after[dead].norm(dim=1), torch.ones(n), atol=1e-5)
    assert m.restart_dead_codes(loss["z"], torch.ones_like(usage)) == 0


def test_tiled_encode_equals_full_encode():
    """The API encodes images in tiles with the encoder's receptive field as halo."""
    import numpy as np
    import sys, os
    sys.path.insert(0, os.path.dirname(__file__))
    from models import small_model
    from nuwa_fast.images import encode_pixels as _encode_pixels
    m = small_model()
    img = np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    full = _encode_pixels(m, img, tile=10_000)
    tiled = _encode_pixels(m, img, tile=3)
    print("halo", m.vq.encode_halo, "mismatches", int((full != tiled).sum()))
    assert (full == tiled).all()
